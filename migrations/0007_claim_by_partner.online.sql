-- Migration 0007 as `dispatcher migrate` applies it to a database that does not have it
-- yet: the same indexes as 0007_claim_by_partner.sql (the file a database already at
-- version 7 ran; only the version is recorded, and tests/it/upgrade.rs checks that both
-- leave the same schema), built and dropped CONCURRENTLY, so neither the enrollment
-- flow's inserts nor the daemon's routing, claims and results wait for the builds (a
-- plain CREATE INDEX holds a SHARE lock on `deliveries`, which stops every write to it
-- for the whole build, and a plain DROP INDEX an ACCESS EXCLUSIVE one).
--
-- Each statement runs on its own and does nothing when run again, so a `migrate` that
-- stopped half-way is finished by the next (see src/store/migration.rs); an INVALID index
-- left by an interrupted build is dropped and built again.
--
-- Why: claims read each partner's due deliveries on their own (src/store/queue/claim.rs,
-- `claim_due`), so the claims for healthy partners never walk the backlog of a partner
-- whose circuit breaker or full slots hold it; leases are read on their own (the
-- rescuer). Retention reads only deliveries that ended, so an unfinished delivery's NULL
-- `ended_at` no longer costs every routing and claim an entry in its two indexes.
-- dispatcher:no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_pending ON dispatcher.deliveries (partner, due_at)
    WHERE state = 'pending';
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_in_flight ON dispatcher.deliveries (due_at)
    WHERE state = 'in_flight';
DROP INDEX CONCURRENTLY IF EXISTS dispatcher.deliveries_due;

-- A run stopped between a rename and the recorded version builds the `_since` index once
-- more and drops the renamed one, which ends in the same place.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_answers_kept_since ON dispatcher.deliveries (ended_at)
    WHERE answers_erased_at IS NULL AND ended_at IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS dispatcher.deliveries_answers_kept;
ALTER INDEX IF EXISTS dispatcher.deliveries_answers_kept_since RENAME TO deliveries_answers_kept;
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_ended_since ON dispatcher.deliveries (ended_at)
    WHERE ended_at IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS dispatcher.deliveries_ended;
ALTER INDEX IF EXISTS dispatcher.deliveries_ended_since RENAME TO deliveries_ended;

-- Claims read each partner's due deliveries on their own (src/store/queue.rs,
-- `claim_due`), so the claims for healthy partners never walk the backlog of a partner
-- whose circuit breaker or full slots hold it: with one index on `due_at` alone, a claim
-- walked past every held delivery due earlier (200,000 of them: 3,600 buffers per
-- claim). Leases are read on their own too (the rescuer), so they are not found among
-- the pending deliveries either.
CREATE INDEX deliveries_pending ON dispatcher.deliveries (partner, due_at)
    WHERE state = 'pending';
CREATE INDEX deliveries_in_flight ON dispatcher.deliveries (due_at)
    WHERE state = 'in_flight';
DROP INDEX dispatcher.deliveries_due;

-- Retention reads only deliveries that ended. An unfinished delivery's NULL `ended_at`
-- in these two indexes only cost every routing and claim an index entry each.
CREATE INDEX deliveries_answers_kept_since ON dispatcher.deliveries (ended_at)
    WHERE answers_erased_at IS NULL AND ended_at IS NOT NULL;
DROP INDEX dispatcher.deliveries_answers_kept;
ALTER INDEX dispatcher.deliveries_answers_kept_since RENAME TO deliveries_answers_kept;
CREATE INDEX deliveries_ended_since ON dispatcher.deliveries (ended_at)
    WHERE ended_at IS NOT NULL;
DROP INDEX dispatcher.deliveries_ended;
ALTER INDEX dispatcher.deliveries_ended_since RENAME TO deliveries_ended;

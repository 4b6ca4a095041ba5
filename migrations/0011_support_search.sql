-- Support's search (src/store/support/search.rs) finds every kind of query it accepts by
-- an index, never by reading a table whole: a full scan of the deliveries took 50 ms at
-- 1,000,000 rows and grew with them, on connections the daemon needed.
--
-- Built CONCURRENTLY, each on its own outside a transaction (the runner's
-- `dispatcher:no-transaction` steps): the enrollment flow's inserts and the daemon's
-- writes go on during the builds.

-- dispatcher:no-transaction

-- A patient's deliveries, by the whole id or by its first characters. In the "C"
-- collation (byte order, so code point order) one index serves both: the ids starting
-- with a prefix are one range of it, whatever the database's own collation. The
-- statements say COLLATE "C" to use it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_by_patient ON dispatcher.deliveries (patient_id COLLATE "C");

-- The partner's own id for a patient (its 200 answer's `data.externalId`, R10), which
-- the partner quotes to support.
CREATE INDEX CONCURRENTLY IF NOT EXISTS partner_patients_by_external_id ON dispatcher.partner_patients (external_id);

-- A support program's events, newest first. Only while the body is kept: the program is
-- read from it, and retention erases it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_by_support_program ON dispatcher.outbox ((event ->> 'supportProgramId'), id)
    WHERE event IS NOT NULL;

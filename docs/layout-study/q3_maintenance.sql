-- Question 3, part 4: a new day beside a DEFAULT partition, and a day dropped. On the
-- database q3_fill.sql filled (a queue of 200,000, a day of 1,000,000 ended yesterday).
-- psql -e; \timing on; DEBUG1 messages to the client.
-- Day names and dates are those of the run (2026-12-05): edit them for another date.
\set VERBOSITY terse
\timing on
SET search_path = dispatcher;
SET client_min_messages = debug1;
-- Which locks a statement holds, seen from inside its transaction.
CREATE OR REPLACE VIEW public.my_locks AS
SELECT c.relname AS relation, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND c.relkind IN ('r', 'p')
  AND c.relname LIKE 'deliveries%'
ORDER BY 1, 2;
-- 4a. CREATE TABLE ... PARTITION OF a new day, with the queue's CHECK (ended_at IS NULL):
SELECT pg_current_wal_insert_lsn() AS lsn0 \gset
BEGIN;
CREATE TABLE deliveries_20261220 PARTITION OF deliveries
    FOR VALUES FROM ('2026-12-20 00:00+00') TO ('2026-12-21 00:00+00');
SELECT * FROM public.my_locks;
COMMIT;
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'lsn0') AS wal_bytes;
-- 4b. the same without the CHECK: the default partition is scanned (200,000 rows).
ALTER TABLE deliveries_queue DROP CONSTRAINT deliveries_queue_unfinished;
CREATE TABLE deliveries_20261221 PARTITION OF deliveries
    FOR VALUES FROM ('2026-12-21 00:00+00') TO ('2026-12-22 00:00+00');
ALTER TABLE deliveries_queue ADD CONSTRAINT deliveries_queue_unfinished CHECK (ended_at IS NULL);
-- 4c. ATTACH PARTITION of a table made beforehand (its CHECK matching the bounds, so its
--     own scan is skipped too):
CREATE TABLE deliveries_20261222 (LIKE deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    CONSTRAINT day CHECK (ended_at IS NOT NULL AND ended_at >= '2026-12-22 00:00+00' AND ended_at < '2026-12-23 00:00+00'));
BEGIN;
ALTER TABLE deliveries ATTACH PARTITION deliveries_20261222
    FOR VALUES FROM ('2026-12-22 00:00+00') TO ('2026-12-23 00:00+00');
SELECT * FROM public.my_locks;
COMMIT;
-- 4d. DETACH ... CONCURRENTLY is refused with a DEFAULT partition:
ALTER TABLE deliveries DETACH PARTITION deliveries_20261204 CONCURRENTLY;
-- 4e. a plain DETACH, then DROP, of the day of 1,000,000 (529 MB with its indexes).
CHECKPOINT;
SELECT pg_current_wal_insert_lsn() AS lsn0 \gset
BEGIN;
ALTER TABLE deliveries DETACH PARTITION deliveries_20261204;
SELECT * FROM public.my_locks;
COMMIT;
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'lsn0') AS detach_wal_bytes;
SELECT pg_current_wal_insert_lsn() AS lsn0 \gset
DROP TABLE deliveries_20261204;
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'lsn0') AS drop_wal_bytes;
-- 4f. DROP TABLE of an attached day (no detach): its locks.
BEGIN;
DROP TABLE deliveries_20261221;
SELECT * FROM public.my_locks;
ROLLBACK;

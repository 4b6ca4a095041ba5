-- Drops one day (:'sfx', e.g. 20251101) of attempts, deliveries and event bodies, after
-- moving its stragglers aside; prints each step's time and WAL.
-- psql -v sfx=20251101 -v concurrently=true|false -v day=2025-11-01
\set ON_ERROR_STOP on
\timing on
SELECT pg_current_wal_lsn() AS l0 \gset
-- 1. Stragglers. History rows resent after their day and ended since (support's
--    resends of deliveries of this day that are newer than metadata_days; here: the
--    resends in support_actions, standing in as the queue's own column), and bodies of
--    events that still have an unfinished delivery in the queue. Moved, not dropped:
--    WAL and time in proportion to the stragglers, not the day.
WITH moved AS (
    DELETE FROM dispatcher.deliveries d
    WHERE d.id >= dispatcher.uuid_v7_floor(:'day'::date)
      AND d.id < dispatcher.uuid_v7_floor(:'day'::date + 1)
      AND d.id IN (SELECT id FROM straggler_deliveries)
    RETURNING d.*)
INSERT INTO dispatcher.deliveries_kept SELECT * FROM moved;
WITH moved AS (
    DELETE FROM dispatcher.attempts a
    WHERE a.delivery_id >= dispatcher.uuid_v7_floor(:'day'::date)
      AND a.delivery_id < dispatcher.uuid_v7_floor(:'day'::date + 1)
      AND a.delivery_id IN (SELECT id FROM straggler_deliveries)
    RETURNING a.*)
INSERT INTO dispatcher.attempts_kept SELECT * FROM moved;
INSERT INTO dispatcher.outbox_kept
SELECT o.* FROM dispatcher.outbox o
WHERE o.created_at >= :'day'::timestamptz AND o.created_at < :'day'::timestamptz + interval '1 day'
  AND (o.id, o.created_at) IN (SELECT q.event_id, q.event_at FROM dispatcher.queue q
                               WHERE q.event_at >= :'day'::timestamptz
                                 AND q.event_at < :'day'::timestamptz + interval '1 day');
SELECT pg_current_wal_lsn() AS l1 \gset
-- 2. Detach (CONCURRENTLY: SHARE UPDATE EXCLUSIVE on the parent, never blocks readers
--    or writers; two transactions, waits for older snapshots) or not (ACCESS EXCLUSIVE on
--    the parent for the moment of the catalog change).
\if :concurrently
ALTER TABLE dispatcher.attempts DETACH PARTITION dispatcher.attempts_:sfx CONCURRENTLY;
ALTER TABLE dispatcher.deliveries DETACH PARTITION dispatcher.deliveries_:sfx CONCURRENTLY;
ALTER TABLE dispatcher.outbox DETACH PARTITION dispatcher.outbox_:sfx CONCURRENTLY;
\endif
SELECT pg_current_wal_lsn() AS l2 \gset
-- 3. Drop.
DROP TABLE dispatcher.attempts_:sfx;
DROP TABLE dispatcher.deliveries_:sfx;
DROP TABLE dispatcher.outbox_:sfx;
SELECT pg_current_wal_lsn() AS l3 \gset
\timing off
SELECT pg_wal_lsn_diff(:'l1', :'l0') AS stragglers_wal_bytes,
       pg_wal_lsn_diff(:'l2', :'l1') AS detach_wal_bytes,
       pg_wal_lsn_diff(:'l3', :'l2') AS drop_wal_bytes,
       pg_wal_lsn_diff(:'l3', :'l0') AS total_wal_bytes,
       :'l0' AS start_lsn, :'l3' AS end_lsn;

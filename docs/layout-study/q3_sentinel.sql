-- Question 3, an alternative the findings point to: no DEFAULT partition. The partition
-- key is COALESCE(ended_at, 'infinity'): ended_at stays NULL while a delivery is unfinished,
-- and the queue is an ordinary range partition FROM ('infinity') TO (MAXVALUE). Checked:
-- the move at the end, pruning, and the locks of a new day and of a day's removal.
-- psql -e on an empty database.
\set VERBOSITY terse
SET client_min_messages = debug1;
CREATE TABLE d (id uuid NOT NULL, state text NOT NULL, ended_at timestamptz, partner text, due_at timestamptz)
    PARTITION BY RANGE ((COALESCE(ended_at, 'infinity'::timestamptz)));
CREATE TABLE d_queue PARTITION OF d FOR VALUES FROM ('infinity') TO (MAXVALUE);
CREATE TABLE d_20261204 PARTITION OF d FOR VALUES FROM ('2026-12-04 00:00+00') TO ('2026-12-05 00:00+00');
CREATE TABLE d_20261205 PARTITION OF d FOR VALUES FROM ('2026-12-05 00:00+00') TO ('2026-12-06 00:00+00');
CREATE UNIQUE INDEX ON d_queue (id);
CREATE INDEX d_queue_pending ON d_queue (partner, due_at) WHERE state = 'pending';
-- a unique key on the parent is refused with an expression key (not needed: see q3_arbiters.sql)
CREATE UNIQUE INDEX ON d (id, ended_at);
INSERT INTO d VALUES ('00000000-0000-7000-8000-000000000001', 'pending', NULL, 'p', now()),
                     ('00000000-0000-7000-8000-000000000002', 'delivered', '2026-12-04 10:00+00', 'p', NULL);
UPDATE d SET state = 'delivered', ended_at = '2026-12-05 10:00+00'
WHERE COALESCE(ended_at, 'infinity') = 'infinity' AND id = '00000000-0000-7000-8000-000000000001';
SELECT tableoid::regclass, id, state, ended_at FROM d ORDER BY id;
-- pruning: the queue by the key's expression; `ended_at IS NULL` alone reads every partition
EXPLAIN (COSTS OFF) SELECT * FROM d WHERE COALESCE(ended_at, 'infinity') = 'infinity' AND id = '00000000-0000-7000-8000-000000000001';
EXPLAIN (COSTS OFF) SELECT * FROM d WHERE ended_at IS NULL AND id = '00000000-0000-7000-8000-000000000001';
-- the chart's window must name the expression too
EXPLAIN (COSTS OFF) SELECT * FROM d WHERE COALESCE(ended_at, 'infinity') >= now() - interval '24 hours'
                                     AND COALESCE(ended_at, 'infinity') < 'infinity';
-- a new day by ATTACH: SHARE UPDATE EXCLUSIVE on the parent only, which the daemon's
-- reads and writes do not conflict with; no default partition to lock or scan.
CREATE TABLE d_20261206 (LIKE d, CONSTRAINT day CHECK (COALESCE(ended_at, 'infinity'::timestamptz) IS NOT NULL
                                                       AND COALESCE(ended_at, 'infinity'::timestamptz) >= '2026-12-06 00:00+00'
                                                       AND COALESCE(ended_at, 'infinity'::timestamptz) < '2026-12-07 00:00+00'));
BEGIN;
ALTER TABLE d ATTACH PARTITION d_20261206 FOR VALUES FROM ('2026-12-06 00:00+00') TO ('2026-12-07 00:00+00');
SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE l.pid = pg_backend_pid() AND c.relname LIKE 'd%' AND c.relkind IN ('r', 'p') ORDER BY 1, 2;
COMMIT;
-- a day's removal: DETACH ... CONCURRENTLY is allowed (no default partition)
ALTER TABLE d DETACH PARTITION d_20261204 CONCURRENTLY;
DROP TABLE d_20261204;
SELECT tableoid::regclass, count(*) FROM d GROUP BY 1 ORDER BY 1;

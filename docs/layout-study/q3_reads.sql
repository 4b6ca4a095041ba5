-- Question 3, part 6: support's and the daemon's reads with deliveries partitioned BY RANGE
-- (ended_at): 60 day partitions of ~16,667 ended deliveries (1,000,000), and a queue of
-- 10,000 (q3_reads.sh fills it). psql -e.
-- Day names and dates are those of the run (2026-12-05): edit them for another date.
\set VERBOSITY terse
SELECT id AS old_id FROM dispatcher.deliveries_20261110 LIMIT 1 OFFSET 5000 \gset
SELECT id AS queued_id FROM dispatcher.deliveries_queue LIMIT 1 OFFSET 5000 \gset
SELECT patient_id AS patient FROM dispatcher.deliveries_20261120 LIMIT 1 OFFSET 5000 \gset
-- 6a. support's show / search by id (search.rs Reading::Delivery), a literal: no pruning
--     (the id says nothing of ended_at): each of the 61 partitions' id index probed.
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM dispatcher.deliveries WHERE id = :'old_id' LIMIT 50;
--     The same prepared, as the driver runs it (custom plans first, then a generic one).
PREPARE show(uuid) AS SELECT * FROM dispatcher.deliveries WHERE id = $1 LIMIT 50;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE show(:'old_id');
SET plan_cache_mode = force_generic_plan;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE show(:'old_id');
RESET plan_cache_mode;
\timing on
EXECUTE show(:'old_id');
EXECUTE show(:'old_id');
\timing off
-- 6b. the record's update by id, against the parent with ended_at IS NULL: pruned at plan
--     time to the queue (a rolled-back update that ends the delivery: the move included).
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
UPDATE dispatcher.deliveries SET state = 'delivered', ended_at = now() WHERE ended_at IS NULL AND id = ANY(ARRAY[:'queued_id']::uuid[]);
ROLLBACK;
-- 6c. support's search by patient (Reading::Patient): every partition's patient index.
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT * FROM dispatcher.deliveries WHERE patient_id COLLATE "C" = :'patient' ORDER BY id DESC LIMIT 50;
-- 6d. the chart's ended deliveries of the last 24 hours (chart.rs, first part): pruned at
--     run time (now() is stable): only the last two days' partitions are read.
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT partner, date_trunc('hour', ended_at, 'UTC') AS hour, count(*) FROM dispatcher.deliveries
WHERE partner IS NOT NULL AND ended_at >= (date_trunc('hour', now(), 'UTC') - interval '23 hours')
  AND state IN ('delivered', 'rejected', 'dead')
GROUP BY 1, 2;
--     its second part as written today (ended in the window OR pending OR waiting): the OR
--     prunes nothing, every day is read.
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT d.partner, count(*) FROM dispatcher.deliveries d
WHERE d.partner IS NOT NULL
  AND (d.ended_at >= (date_trunc('hour', now(), 'UTC') - interval '23 hours') OR d.state = 'pending' OR d.state = 'waiting')
GROUP BY 1;
-- 6e. the claim, on the queue partition (q3_20_stmts.sql), beside 1,000,000 ended.
\o /dev/null
\i q3_20_stmts.sql
\o
BEGIN;
SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
EXECUTE claim(100, 300, gen_random_uuid(), '{partner-0,partner-1,partner-2,partner-3}', '{100,100,100,100}');
ROLLBACK;

-- What many day partitions cost a lookup that cannot be pruned (support's search by
-- patient or by event over the history) against one that can (by delivery id).
-- Run on a database with q2_schema.sql: 400 days of empty partitions, then one row.
-- One day a transaction (all 400 in one exhaust max_locks_per_transaction).
SELECT format('SELECT dispatcher.create_day(%L)', current_date - d) FROM generate_series(0, 399) AS d \gexec
INSERT INTO dispatcher.deliveries (id, event_id, partner, event_name, patient_id, state, ended_at)
VALUES (dispatcher.uuid_v7_floor(current_date) , 1, 'partner-0', 'x', 'pt1', 'delivered', now());
ANALYZE;
\timing on
EXPLAIN (ANALYZE, SUMMARY, COSTS OFF, TIMING OFF) SELECT * FROM dispatcher.deliveries WHERE id = dispatcher.uuid_v7_floor(current_date);
SELECT * FROM dispatcher.deliveries WHERE id = dispatcher.uuid_v7_floor(current_date);
EXPLAIN (ANALYZE, SUMMARY, COSTS OFF, TIMING OFF) SELECT * FROM dispatcher.deliveries WHERE patient_id = 'pt1';
SELECT * FROM dispatcher.deliveries WHERE patient_id = 'pt1';
SELECT * FROM dispatcher.deliveries WHERE patient_id = 'pt1';
EXPLAIN (ANALYZE, SUMMARY, COSTS OFF, TIMING OFF) SELECT * FROM dispatcher.deliveries WHERE event_id = 1;
PREPARE by_id(uuid) AS SELECT * FROM dispatcher.deliveries WHERE id = $1;
EXPLAIN (ANALYZE, SUMMARY, COSTS OFF, TIMING OFF) EXECUTE by_id(dispatcher.uuid_v7_floor(current_date));

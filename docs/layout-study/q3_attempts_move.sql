-- Question 3, part 2: attempts partitioned like their deliveries (BY RANGE of the delivery's
-- ended_at, a DEFAULT partition for the attempts of unfinished deliveries), so that a day's
-- drop takes its deliveries' attempts. The record that ends a delivery then moves its
-- attempt rows too (attempts after the first: the first is in the delivery's row, 0023).
-- 10,000 deliveries with two attempts rows each (attempts 2 and 3: retried twice), ended in
-- batches of 100: WAL of the attempts' move alone. On a database with q3_20_schema.sql.
\set VERBOSITY terse
SET search_path = dispatcher;
DROP VIEW every_attempt;
DROP TABLE attempts;
CREATE TABLE attempts (
    delivery_id uuid NOT NULL, number integer NOT NULL, started_at timestamptz NOT NULL,
    duration_ms integer NOT NULL, http_status integer, error_kind text, error text,
    response_body text, answer_erased_at timestamptz, resent_after boolean NOT NULL DEFAULT false,
    delivery_ended_at timestamptz
) PARTITION BY RANGE (delivery_ended_at);
CREATE TABLE attempts_queue PARTITION OF attempts (CHECK (delivery_ended_at IS NULL)) DEFAULT;
ALTER TABLE attempts_queue ADD PRIMARY KEY (delivery_id, number);
CREATE TABLE attempts_today PARTITION OF attempts
    FOR VALUES FROM (date_trunc('day', now(), 'UTC')) TO (date_trunc('day', now(), 'UTC') + interval '1 day');
CREATE INDEX ON attempts_today (delivery_id, number);
DELETE FROM deliveries;
INSERT INTO deliveries_queue (id, event_id, partner, event_name, patient_id, state, due_at, attempt_count,
                              first_attempt_started_at, first_attempt_duration_ms, first_attempt_http_status,
                              first_attempt_response_body)
SELECT gen_random_uuid(), g, 'partner-' || (g % 4), 'e', 'pa' || g, 'pending', now(), 3,
       now(), 5, 503, '<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>'
FROM generate_series(1, 10000) g;
INSERT INTO attempts (delivery_id, number, started_at, duration_ms, http_status, response_body)
SELECT id, n, now(), 5, 503, '<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>'
FROM deliveries_queue, generate_series(2, 3) n;
VACUUM ANALYZE deliveries_queue, attempts_queue;
CHECKPOINT;
SELECT pg_current_wal_insert_lsn() AS lsn0 \gset
DO $$
DECLARE ids uuid[];
BEGIN
    FOR i IN 0..99 LOOP
        SELECT array_agg(id) INTO ids FROM (SELECT id FROM dispatcher.deliveries_queue ORDER BY event_id OFFSET 0 LIMIT 100) s;
        UPDATE dispatcher.deliveries SET state = 'delivered', ended_at = now() WHERE ended_at IS NULL AND id = ANY(ids);
        COMMIT;
    END LOOP;
END $$;
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'lsn0') / 10000 AS deliveries_move_bytes_per_delivery;
SELECT pg_current_wal_insert_lsn() AS lsn1 \gset
DO $$
DECLARE ids uuid[];
BEGIN
    FOR i IN 0..99 LOOP
        SELECT array_agg(delivery_id) INTO ids FROM (SELECT DISTINCT delivery_id FROM dispatcher.attempts_queue ORDER BY 1 LIMIT 100) s;
        UPDATE dispatcher.attempts SET delivery_ended_at = now() WHERE delivery_ended_at IS NULL AND delivery_id = ANY(ids);
        COMMIT;
    END LOOP;
END $$;
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'lsn1') / 10000 AS attempts_move_bytes_per_delivery;
SELECT tableoid::regclass, count(*) FROM attempts GROUP BY 1;

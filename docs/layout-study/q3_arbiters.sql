-- Question 3, part 2: uniqueness, ON CONFLICT arbiters and the attempts' foreign key with
-- deliveries partitioned BY RANGE (ended_at). Run on a database with q3_20_schema.sql
-- (psql -e: every statement echoed before its result; errors expected, no ON_ERROR_STOP).
\set VERBOSITY terse
SET search_path = dispatcher;
DELETE FROM deliveries;
-- 1. Routing straight into the queue partition: its own unique (event_id, partner) key
--    is the arbiter.
INSERT INTO deliveries_queue (id, event_id, partner, event_name, patient_id, state, due_at)
VALUES (gen_random_uuid(), 1, 'partner-0', 'e', 'p1', 'pending', now())
ON CONFLICT (event_id, partner) DO NOTHING;
INSERT INTO deliveries_queue (id, event_id, partner, event_name, patient_id, state, due_at)
VALUES (gen_random_uuid(), 1, 'partner-0', 'e', 'p1', 'pending', now())
ON CONFLICT (event_id, partner) DO NOTHING;
-- ... but a placeholder (unrouted or invalid: ended at once) cannot go there:
INSERT INTO deliveries_queue (id, event_id, partner, event_name, state, ended_at)
VALUES (gen_random_uuid(), 2, NULL, 'e', 'unrouted', now())
ON CONFLICT (event_id, partner) DO NOTHING;
-- 2. Through the parent: no arbiter, and none can be made on (event_id, partner) alone.
INSERT INTO deliveries (id, event_id, partner, event_name, patient_id, state, due_at)
VALUES (gen_random_uuid(), 3, 'partner-0', 'e', 'p1', 'pending', now())
ON CONFLICT (event_id, partner) DO NOTHING;
CREATE UNIQUE INDEX deliveries_event_key ON deliveries (event_id, partner);
--    With the partition key in it, NULLS NOT DISTINCT: unique (event, partner) in the
--    queue (ended_at NULL), nothing across days. It can replace the days' (event, partner)
--    index, and routing through the parent can name it (placeholders included).
CREATE UNIQUE INDEX deliveries_event_ended_key ON deliveries (event_id, partner, ended_at) NULLS NOT DISTINCT;
INSERT INTO deliveries (id, event_id, partner, event_name, patient_id, state, due_at)
VALUES (gen_random_uuid(), 1, 'partner-0', 'e', 'p1', 'pending', now())
ON CONFLICT (event_id, partner, ended_at) DO NOTHING;
INSERT INTO deliveries (id, event_id, partner, event_name, state, ended_at)
VALUES (gen_random_uuid(), 2, NULL, 'e', 'unrouted', now())
ON CONFLICT (event_id, partner, ended_at) DO NOTHING;
SELECT tableoid::regclass, event_id, partner, state FROM deliveries ORDER BY event_id;
--    A delivery that ended does not hold its (event, partner): the same pair routed again
--    (outbox_route_again, or a second router) is inserted beside it.
UPDATE deliveries SET state = 'delivered', ended_at = now() WHERE ended_at IS NULL AND event_id = 1;
INSERT INTO deliveries (id, event_id, partner, event_name, patient_id, state, due_at)
VALUES (gen_random_uuid(), 1, 'partner-0', 'e', 'p1', 'pending', now())
ON CONFLICT (event_id, partner, ended_at) DO NOTHING;
SELECT tableoid::regclass, event_id, partner, state FROM deliveries WHERE event_id = 1;
DROP INDEX deliveries_event_ended_key;
-- 3. The id: a unique index on the parent needs the partition key; each partition can have
--    its own, but nothing stops one id in two partitions.
ALTER TABLE deliveries ADD PRIMARY KEY (id);
CREATE UNIQUE INDEX deliveries_20990101_id_key ON deliveries_queue (id);
DROP INDEX deliveries_20990101_id_key;
DELETE FROM deliveries;
INSERT INTO deliveries (id, event_id, partner, event_name, patient_id, state, due_at)
VALUES ('00000000-0000-7000-8000-000000000001', 5, 'partner-0', 'e', 'p1', 'pending', now());
INSERT INTO deliveries (id, event_id, partner, event_name, patient_id, state, ended_at)
VALUES ('00000000-0000-7000-8000-000000000001', 6, 'partner-0', 'e', 'p1', 'delivered', now());
SELECT tableoid::regclass, id, event_id, state FROM deliveries;
DELETE FROM deliveries;
-- 4. The attempts' foreign key: REFERENCES deliveries (id) is refused. With the partition
--    key in the referenced key (unique (id, ended_at) on the parent) it is accepted, but a
--    NULL ended_at (every unfinished delivery) is never checked (MATCH SIMPLE) nor
--    cascaded: ON UPDATE CASCADE of NULL -> the day finds no attempt (= NULL is not true).
ALTER TABLE attempts ADD FOREIGN KEY (delivery_id) REFERENCES deliveries (id) ON DELETE CASCADE;
CREATE UNIQUE INDEX deliveries_id_ended_key ON deliveries (id, ended_at);
ALTER TABLE attempts ADD COLUMN delivery_ended_at timestamptz;
ALTER TABLE attempts ADD CONSTRAINT attempts_delivery_fkey FOREIGN KEY (delivery_id, delivery_ended_at)
    REFERENCES deliveries (id, ended_at) ON UPDATE CASCADE ON DELETE CASCADE;
INSERT INTO deliveries (id, event_id, partner, event_name, patient_id, state, due_at)
VALUES ('00000000-0000-7000-8000-000000000002', 7, 'partner-0', 'e', 'p1', 'pending', now());
INSERT INTO attempts (delivery_id, number, started_at, duration_ms, http_status)
VALUES ('00000000-0000-7000-8000-000000000002', 2, now(), 5, 503);
INSERT INTO attempts (delivery_id, number, started_at, duration_ms, http_status)
VALUES ('00000000-0000-7000-8000-0000000000ff', 2, now(), 5, 503);
UPDATE deliveries SET state = 'delivered', ended_at = now() WHERE ended_at IS NULL AND id = '00000000-0000-7000-8000-000000000002';
SELECT delivery_id, number, delivery_ended_at FROM attempts;
ALTER TABLE attempts DROP CONSTRAINT attempts_delivery_fkey;
DELETE FROM attempts; DELETE FROM deliveries;
DROP INDEX deliveries_id_ended_key;

-- Layout d: layout c's queue (HOT claim) and a lean history partitioned by day.
-- Apply after 30_hot_schema.sql. The history and the attempts are partitioned by RANGE
-- on the delivery id: ids are UUIDv7, whose first 48 bits are the routing time in
-- milliseconds, so a day is one range of ids, the primary key stays (id) and a lookup
-- by id reads one partition. A delivery's attempts are in the same day as the delivery.
-- Indexes: the primary key, (event, partner) (support's search by event; not unique:
-- a unique index must contain the partition key), the patient (support's search),
-- and the deliveries that did not end delivered (support's lists of failures); the
-- ended/answers_kept/by_state indexes were retention's and the time window's, which
-- the day partitions now serve.
DROP TABLE dispatcher.deliveries CASCADE;
DROP TABLE dispatcher.attempts;

-- The smallest UUIDv7 of a day (UTC).
CREATE FUNCTION dispatcher.uuid_v7_floor(day date) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM day::timestamp) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;

CREATE TABLE dispatcher.deliveries (
    id                     uuid        NOT NULL,
    event_id               bigint      NOT NULL,
    partner                text,
    event_name             text        NOT NULL,
    patient_id             text,
    state                  text        NOT NULL,
    due_at                 timestamptz,
    claim_token            uuid,
    attempt_count          integer     NOT NULL DEFAULT 0,
    attempts_before_resend integer     NOT NULL DEFAULT 0,
    last_status            integer,
    last_error             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    ended_at               timestamptz,
    answers_erased_at      timestamptz,
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);
CREATE INDEX deliveries_by_event ON dispatcher.deliveries (event_id, partner);
CREATE INDEX deliveries_by_patient ON dispatcher.deliveries (patient_id COLLATE "C");
CREATE INDEX deliveries_not_delivered ON dispatcher.deliveries (state, ended_at)
    WHERE state <> 'delivered';

CREATE TABLE dispatcher.attempts (
    delivery_id   uuid        NOT NULL,
    number        integer     NOT NULL,
    started_at    timestamptz NOT NULL,
    duration_ms   integer     NOT NULL,
    http_status   integer,
    error_kind    text,
    error         text,
    response_body text,
    answer_erased_at timestamptz,
    resent_after  boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (delivery_id, number)
) PARTITION BY RANGE (delivery_id);

-- Partitions from 3 days back to 3 days ahead (the daemon, or `dispatcher prune`, would
-- keep a few days ahead).
CREATE FUNCTION dispatcher.create_day(day date) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE IF NOT EXISTS dispatcher.%I PARTITION OF dispatcher.deliveries
                    FOR VALUES FROM (%L) TO (%L)', 'deliveries_' || to_char(day, 'YYYYMMDD'),
                   dispatcher.uuid_v7_floor(day), dispatcher.uuid_v7_floor(day + 1));
    EXECUTE format('CREATE TABLE IF NOT EXISTS dispatcher.%I PARTITION OF dispatcher.attempts
                    FOR VALUES FROM (%L) TO (%L)', 'attempts_' || to_char(day, 'YYYYMMDD'),
                   dispatcher.uuid_v7_floor(day), dispatcher.uuid_v7_floor(day + 1));
END
$$;
SELECT dispatcher.create_day(current_date + d) FROM generate_series(-3, 3) AS d;

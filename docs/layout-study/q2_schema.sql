-- Question 2: the history, the attempts and the event bodies in day partitions.
-- A scratch schema with the shapes of layout d/f (40_partitioned_history.sql): only what
-- the retention needs. Run on an empty database.
CREATE SCHEMA dispatcher;

-- The smallest UUIDv7 of a day (UTC): delivery ids are UUIDv7 (Uuid::now_v7 in
-- src/delivery/routing.rs), so a day of deliveries is one range of ids.
CREATE FUNCTION dispatcher.uuid_v7_floor(day date) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM day::timestamp) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;

-- The outbox, partitioned by the producer's created_at (its default, now()): the
-- producers' INSERT (event_name, event) is unchanged, and PostgreSQL 15 keeps the
-- identity on a partitioned table (inserts through the parent). The primary key must
-- contain the partition key: (id, created_at). A lookup by id alone reads every
-- partition's key, so the queue carries the event's created_at (event_at) and the
-- claim reads `o.id = q.event_id AND o.created_at = q.event_at`: one partition.
CREATE TABLE dispatcher.outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    event_name      text        NOT NULL,
    event           jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    routed_at       timestamptz,
    event_erased_at timestamptz,
    traceparent     text,
    xid             xid8        DEFAULT pg_current_xact_id(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX outbox_by_xid ON dispatcher.outbox (xid, id) WHERE xid IS NOT NULL;
CREATE INDEX outbox_by_support_program ON dispatcher.outbox ((event ->> 'supportProgramId'), id)
    WHERE event IS NOT NULL;
-- Bodies kept past their day's drop: events with a delivery still unfinished, or
-- resent and ended less than payload_days ago (moved here before the drop).
CREATE TABLE dispatcher.outbox_kept (LIKE dispatcher.outbox INCLUDING DEFAULTS);
ALTER TABLE dispatcher.outbox_kept ADD PRIMARY KEY (id);

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
-- A delivery resent after its day's drop was due ends up here (see the report).
CREATE TABLE dispatcher.deliveries_kept (LIKE dispatcher.deliveries INCLUDING DEFAULTS);
ALTER TABLE dispatcher.deliveries_kept ADD PRIMARY KEY (id);

CREATE TABLE dispatcher.attempts (
    delivery_id      uuid        NOT NULL,
    number           integer     NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer     NOT NULL,
    http_status      integer,
    error_kind       text,
    error            text,
    response_body    text,
    answer_erased_at timestamptz,
    resent_after     boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (delivery_id, number)
) PARTITION BY RANGE (delivery_id);
CREATE TABLE dispatcher.attempts_kept (LIKE dispatcher.attempts INCLUDING DEFAULTS);
ALTER TABLE dispatcher.attempts_kept ADD PRIMARY KEY (delivery_id, number);

-- The narrow queue, as far as retention reads it: which events still have an
-- unfinished delivery.
CREATE TABLE dispatcher.queue (
    id       uuid        PRIMARY KEY,
    event_id bigint      NOT NULL,
    event_at timestamptz NOT NULL,
    partner  text        NOT NULL,
    UNIQUE (event_id, partner)
);

-- One day's partitions of the three tables (the daemon or `dispatcher prune` keeps a
-- few days ahead).
CREATE FUNCTION dispatcher.create_day(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    suffix text := to_char(day, 'YYYYMMDD');
BEGIN
    EXECUTE format('CREATE TABLE IF NOT EXISTS dispatcher.%I PARTITION OF dispatcher.outbox
                    FOR VALUES FROM (%L) TO (%L)', 'outbox_' || suffix,
                   day::timestamptz, (day + 1)::timestamptz);
    EXECUTE format('CREATE TABLE IF NOT EXISTS dispatcher.%I PARTITION OF dispatcher.deliveries
                    FOR VALUES FROM (%L) TO (%L)', 'deliveries_' || suffix,
                   dispatcher.uuid_v7_floor(day), dispatcher.uuid_v7_floor(day + 1));
    EXECUTE format('CREATE TABLE IF NOT EXISTS dispatcher.%I PARTITION OF dispatcher.attempts
                    FOR VALUES FROM (%L) TO (%L)', 'attempts_' || suffix,
                   dispatcher.uuid_v7_floor(day), dispatcher.uuid_v7_floor(day + 1));
END
$$;

-- Question 3, layout b: `deliveries` partitioned BY RANGE (ended_at), its DEFAULT
-- partition `deliveries_queue` the queue (every unfinished delivery has ended_at NULL,
-- held to it by a CHECK), one partition per day of ended_at for the history.
-- Applied on top of migrations 0001-0022 + 0023 (first attempt in the row, as the
-- first-attempt branch's work in progress has it), in place of today's `deliveries`.
-- psql -v days_before=2 -v days_after=2 (day partitions around today, UTC).
BEGIN;
ALTER TABLE dispatcher.attempts DROP CONSTRAINT attempts_delivery_id_fkey;
DROP VIEW dispatcher.every_attempt;
ALTER TABLE dispatcher.deliveries RENAME TO deliveries_before_q3;
DROP TABLE dispatcher.deliveries_before_q3 CASCADE;

CREATE TABLE dispatcher.deliveries (
    id uuid NOT NULL,
    event_id bigint NOT NULL,
    partner text,
    event_name text NOT NULL,
    patient_id text,
    state text NOT NULL CHECK (state IN ('pending', 'waiting', 'in_flight', 'delivered', 'rejected',
                                         'dead', 'invalid', 'cancelled', 'unrouted')),
    due_at timestamptz,
    claim_token uuid,
    attempt_count integer NOT NULL DEFAULT 0,
    attempts_before_resend integer NOT NULL DEFAULT 0,
    last_status integer,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    answers_erased_at timestamptz,
    leased_until timestamptz,
    first_attempt_started_at timestamptz,
    first_attempt_duration_ms integer,
    first_attempt_http_status integer,
    first_attempt_error_kind text,
    first_attempt_error text,
    first_attempt_response_body text,
    first_attempt_answer_erased_at timestamptz,
    first_attempt_resent_after boolean,
    CONSTRAINT deliveries_claimed_pending CHECK (claim_token IS NULL OR state = 'pending')
) PARTITION BY RANGE (ended_at);

-- The queue: every unfinished delivery (and only those: the CHECK), fillfactor 40 as 0022.
CREATE TABLE dispatcher.deliveries_queue PARTITION OF dispatcher.deliveries
    (CONSTRAINT deliveries_queue_unfinished CHECK (ended_at IS NULL))
    DEFAULT WITH (fillfactor = 40);
-- Queue-only indexes (today's names with _queue where they clash).
ALTER TABLE dispatcher.deliveries_queue ADD CONSTRAINT deliveries_queue_pkey PRIMARY KEY (id);
ALTER TABLE dispatcher.deliveries_queue
    ADD CONSTRAINT deliveries_queue_event_key UNIQUE NULLS NOT DISTINCT (event_id, partner);
CREATE INDEX deliveries_pending ON dispatcher.deliveries_queue (partner, due_at) WHERE state = 'pending';
CREATE INDEX deliveries_waiting ON dispatcher.deliveries_queue (partner, patient_id, event_id)
    WHERE state = 'waiting';
CREATE INDEX deliveries_unfinished_by_patient ON dispatcher.deliveries_queue (partner, patient_id, event_id)
    WHERE state IN ('pending', 'in_flight') AND patient_id IS NOT NULL;
-- Support's search by patient reads the queue too.
CREATE INDEX deliveries_queue_by_patient ON dispatcher.deliveries_queue (patient_id COLLATE "C");

-- A day of the history, with the history's indexes only (a function: retention or the
-- daemon creates days ahead).
CREATE FUNCTION dispatcher.q3_create_day(day date) RETURNS void LANGUAGE plpgsql AS $$
DECLARE name text := 'deliveries_' || to_char(day, 'YYYYMMDD');
BEGIN
    EXECUTE format('CREATE TABLE IF NOT EXISTS dispatcher.%I PARTITION OF dispatcher.deliveries
                    FOR VALUES FROM (%L) TO (%L)',
                   name, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON dispatcher.%I (id)', name || '_id', name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON dispatcher.%I (event_id, partner)', name || '_event', name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON dispatcher.%I (patient_id COLLATE "C")', name || '_by_patient', name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON dispatcher.%I (ended_at)', name || '_ended', name);
    EXECUTE format($f$CREATE INDEX IF NOT EXISTS %I ON dispatcher.%I (state, created_at)
                    WHERE state <> ALL (ARRAY['pending', 'waiting', 'in_flight'])$f$, name || '_by_state', name);
END $$;
SELECT dispatcher.q3_create_day(d::date)
FROM generate_series(current_date - :days_before, current_date + :days_after, interval '1 day') AS d;

CREATE VIEW dispatcher.every_attempt AS
SELECT delivery_id, number, started_at, duration_ms, http_status, error_kind, error,
       response_body, answer_erased_at, resent_after
FROM dispatcher.attempts
UNION ALL
SELECT id, 1, first_attempt_started_at, first_attempt_duration_ms, first_attempt_http_status,
       first_attempt_error_kind, first_attempt_error, first_attempt_response_body,
       first_attempt_answer_erased_at, COALESCE(first_attempt_resent_after, false)
FROM dispatcher.deliveries
WHERE first_attempt_started_at IS NOT NULL;
COMMIT;

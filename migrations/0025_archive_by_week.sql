-- The archive: the record of a delivery past `payload_days`, without anything a patient
-- or a partner said, in week partitions that retention drops whole at `metadata_days`
-- (issue 22). Before it, every delivery, its attempts and its event's outbox row were
-- deleted one row at a time at `metadata_days`: 89 s and 720 MB of WAL for a day of
-- 1,000,000 (`scripts/bench-retention`); now 0.25 s and 277 KB.
--
-- Once an event's body is due to go (`payload_days` after the last of its deliveries
-- ended), the pruner moves the event's deliveries (`store/retention/archive.rs`), with
-- their answers erased, into `archived_deliveries`, their attempts kept as rows into
-- `archived_attempts`, keeps the body's erase mark on each, and deletes the outbox row,
-- body and all. A resend needs the body, and a cancel of an archived delivery is
-- refused: so the archive holds no body, no answer, and no row that still moves.
--
-- Both are partitioned by the delivery's id, a UUIDv7 of the millisecond it was made
-- (migration 0023; before it, of the daemon's clock): one partition of each a week
-- (from Monday 00:00 UTC), made by `dispatcher.archive_week` the first time the pruner
-- archives a delivery of that week. A delivery is found by its id in one partition, and
-- its attempts beside it. Weeks, not days: support's reads that no id narrows plan every
-- partition, and 57 of them (400 days) plan in a few milliseconds where 400 took 15 to 60
-- (docs/benchmarks.md, "Issue 22, seventh session").
-- `archive_weeks` keeps, for each week, the latest time one of its deliveries ended:
-- `dispatcher.drop_archived_week` drops a week once that is older than `metadata_days`,
-- both partitions at once, under a lock on the archive only (the daemon's queue never
-- reads it; support's reads of the archive wait for the drop).
--
-- The live tables keep what is younger than `payload_days`, or whose event's body is
-- kept: the queue and support's month, no longer `metadata_days` of history.
-- Support reads both through the views `every_delivery` and `every_attempt`.
--
-- A daemon from before 0025 beside this version archives nothing and does not read the
-- archive (its support sees the live tables only); its retention deletes what is left
-- in the live tables, as before.

CREATE TABLE IF NOT EXISTS dispatcher.archived_deliveries (
    id                              uuid        NOT NULL,
    event_id                        bigint      NOT NULL,
    partner                         text,
    event_name                      text        NOT NULL,
    patient_id                      text,
    state                           text        NOT NULL
        CHECK (state IN ('delivered', 'rejected', 'dead', 'invalid', 'cancelled', 'unrouted')),
    attempt_count                   integer     NOT NULL,
    attempts_before_resend          integer     NOT NULL,
    last_status                     integer,
    -- Our own words only (a timeout, a refused connection): an error that quoted the
    -- partner's answer is erased before it comes here.
    last_error                      text,
    created_at                      timestamptz NOT NULL,
    ended_at                        timestamptz NOT NULL,
    answers_erased_at               timestamptz NOT NULL,
    -- The outbox's mark, kept when its row goes: support's "erased on <date>".
    event_erased_at                 timestamptz NOT NULL,
    -- The first attempt, if the delivery kept it in its row (migration 0024), without
    -- the answer.
    first_attempt_started_at        timestamptz,
    first_attempt_duration_ms       integer,
    first_attempt_http_status       integer,
    first_attempt_error_kind        text,
    first_attempt_error             text,
    first_attempt_answer_erased_at  timestamptz,
    first_attempt_resent_after      boolean,
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);

-- Support's searches (by event, by patient) and its lists by state and time: every
-- state, as the archive's windows of delivered deliveries are read by time (`deliveries`
-- reads them as a range of ids, widened by its ids off the clock).
CREATE INDEX IF NOT EXISTS archived_deliveries_by_event
    ON dispatcher.archived_deliveries (event_id);
CREATE INDEX IF NOT EXISTS archived_deliveries_by_patient
    ON dispatcher.archived_deliveries (patient_id COLLATE "C");
CREATE INDEX IF NOT EXISTS archived_deliveries_by_state
    ON dispatcher.archived_deliveries (state, created_at);

CREATE TABLE IF NOT EXISTS dispatcher.archived_attempts (
    delivery_id       uuid        NOT NULL,
    number            integer     NOT NULL,
    started_at        timestamptz NOT NULL,
    duration_ms       integer     NOT NULL,
    http_status       integer,
    error_kind        text,
    error             text,
    answer_erased_at  timestamptz,
    resent_after      boolean     NOT NULL,
    PRIMARY KEY (delivery_id, number)
) PARTITION BY RANGE (delivery_id);

CREATE TABLE IF NOT EXISTS dispatcher.archive_weeks (
    -- Its Monday.
    week           date        PRIMARY KEY,
    -- The latest `ended_at` of the week's archived deliveries: the week is dropped once
    -- this is `metadata_days` old.
    last_ended_at  timestamptz NOT NULL
);

-- The week (from Monday, UTC) of a delivery id's millisecond: the archive's partition it
-- goes to.
CREATE OR REPLACE FUNCTION dispatcher.archive_week_of(id uuid) RETURNS date
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_trunc('week',
                      to_timestamp(('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::int8
                                   / 1000.0) AT TIME ZONE 'UTC')::date;

-- Makes the week's two partitions if they are missing, and records that deliveries
-- ended at `ended_by` are archived in it. Runs with its owner's rights (the daemon's
-- role creates no table). It and the drop take one lock of the archive's (held to the
-- transaction's end), so a week is never dropped under an archive moving into it. The lock
-- is on `archive_weeks`, SHARE ROW EXCLUSIVE: no role but the owner has a right to write
-- it, which LOCK TABLE wants for that mode, so nothing outside the dispatcher can hold
-- the archive up (an advisory key, any role may take: migration 0008); support's reads
-- of it (ACCESS SHARE) pass.
CREATE OR REPLACE FUNCTION dispatcher.archive_week(week date, ended_by timestamptz)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    suffix text := to_char(week, 'YYYYMMDD');
    first_millis int8 := dispatcher.unix_millis(week::timestamp AT TIME ZONE 'UTC');
    next_millis int8 := dispatcher.unix_millis((week + 7)::timestamp AT TIME ZONE 'UTC');
    -- The last week a UUIDv7 holds (2^48 ms) runs to the greatest uuid; the first (1970
    -- began on a Thursday) from the least.
    bounds text := format('FROM (%L) TO (%s)',
        dispatcher.first_uuid_of_millis(greatest(first_millis, 0)),
        CASE WHEN next_millis > 281474976710655 THEN 'MAXVALUE'
             ELSE quote_literal(dispatcher.first_uuid_of_millis(next_millis)) END);
    archived text;
BEGIN
    LOCK TABLE dispatcher.archive_weeks IN SHARE ROW EXCLUSIVE MODE;
    INSERT INTO dispatcher.archive_weeks AS kept (week, last_ended_at)
    VALUES (week, ended_by)
    ON CONFLICT ON CONSTRAINT archive_weeks_pkey
    DO UPDATE SET last_ended_at = greatest(kept.last_ended_at, excluded.last_ended_at);
    -- Made apart and attached (SHARE UPDATE EXCLUSIVE on the archive), rather than
    -- `PARTITION OF` (ACCESS EXCLUSIVE): support's reads of the archive go on meanwhile.
    FOREACH archived IN ARRAY ARRAY['archived_deliveries', 'archived_attempts'] LOOP
        IF to_regclass(format('dispatcher.%I', archived || '_' || suffix)) IS NULL THEN
            EXECUTE format('CREATE TABLE dispatcher.%I (LIKE dispatcher.%I
                                INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           archived || '_' || suffix, archived);
            EXECUTE format('ALTER TABLE dispatcher.%I ATTACH PARTITION dispatcher.%I
                                FOR VALUES %s',
                           archived, archived || '_' || suffix, bounds);
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.archive_week(date, timestamptz) FROM PUBLIC;

-- Drops the oldest archived week whose deliveries all ended more than `keep_days` ago
-- (never fewer than 1), both its partitions; returns its Monday, or NULL when none is
-- due. The drop takes ACCESS EXCLUSIVE on the archive's two tables for the time it takes
-- the files to go (about 0.4 s a GB); it waits at most `lock_timeout` (1 s) for a long
-- read of support's, and then leaves the week to the next pass (NULL). So it does when
-- it holds the attempts' table and a read that holds the deliveries' waits for it: on a
-- server whose `deadlock_timeout` is shorter, the drop is the one that gives way.
CREATE OR REPLACE FUNCTION dispatcher.drop_archived_week(keep_days integer) RETURNS date
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    due date;
    suffix text;
BEGIN
    LOCK TABLE dispatcher.archive_weeks IN SHARE ROW EXCLUSIVE MODE;
    SELECT kept.week INTO due FROM dispatcher.archive_weeks kept
    WHERE kept.last_ended_at < now() - make_interval(days => greatest(keep_days, 1))
    ORDER BY kept.week
    LIMIT 1;
    IF due IS NULL THEN
        RETURN NULL;
    END IF;
    suffix := to_char(due, 'YYYYMMDD');
    EXECUTE format('DROP TABLE IF EXISTS dispatcher.%I', 'archived_attempts_' || suffix);
    EXECUTE format('DROP TABLE IF EXISTS dispatcher.%I', 'archived_deliveries_' || suffix);
    DELETE FROM dispatcher.archive_weeks WHERE week = due;
    RETURN due;
EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
    -- A long read of support's, or another pass archiving: the next pass drops it.
    RAISE WARNING 'dispatcher: an archived week was not dropped: the archive is in use';
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.drop_archived_week(integer) FROM PUBLIC;

-- Every delivery, live or archived, as support reads it. An archived one has no due
-- time, claim or lease; `event_erased_at` is the outbox's mark it kept (NULL for a live
-- one: read the outbox).
CREATE OR REPLACE VIEW dispatcher.every_delivery AS
SELECT id, event_id, partner, event_name, patient_id, state, due_at, claim_token,
       attempt_count, attempts_before_resend, last_status, last_error, created_at, ended_at,
       answers_erased_at, leased_until, NULL::timestamptz AS event_erased_at,
       false AS archived
FROM dispatcher.deliveries
UNION ALL
SELECT id, event_id, partner, event_name, patient_id, state, NULL, NULL,
       attempt_count, attempts_before_resend, last_status, last_error, created_at, ended_at,
       answers_erased_at, NULL, event_erased_at, true
FROM dispatcher.archived_deliveries;

-- Every attempt: as migration 0024's view, and the archived ones (no answer). Read it by
-- a delivery's id, as before.
CREATE OR REPLACE VIEW dispatcher.every_attempt AS
SELECT delivery_id, number, started_at, duration_ms, http_status, error_kind, error,
       response_body, answer_erased_at, resent_after
FROM dispatcher.attempts
UNION ALL
SELECT id, 1, first_attempt_started_at, first_attempt_duration_ms, first_attempt_http_status,
       first_attempt_error_kind, first_attempt_error, first_attempt_response_body,
       first_attempt_answer_erased_at, COALESCE(first_attempt_resent_after, false)
FROM dispatcher.deliveries
WHERE first_attempt_started_at IS NOT NULL
UNION ALL
SELECT delivery_id, number, started_at, duration_ms, http_status, error_kind, error,
       NULL, answer_erased_at, resent_after
FROM dispatcher.archived_attempts
UNION ALL
SELECT id, 1, first_attempt_started_at, first_attempt_duration_ms, first_attempt_http_status,
       first_attempt_error_kind, first_attempt_error, NULL,
       first_attempt_answer_erased_at, COALESCE(first_attempt_resent_after, false)
FROM dispatcher.archived_deliveries
WHERE first_attempt_started_at IS NOT NULL;

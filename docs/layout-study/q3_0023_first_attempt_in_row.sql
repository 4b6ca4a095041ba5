-- A copy, for this study only, of migrations/0023_first_attempt_in_row.sql as the
-- first-attempt branch's work in progress held it (uncommitted) at 15:00 UTC on 2026-12-05:
-- the first attempt kept in the delivery's row. q3_run.sh applies it after 0001-0022.

-- A delivery's first attempt is kept in the delivery's own row (issue 22). Most
-- deliveries end at their first attempt, and each of those wrote a row of `attempts`
-- beside the record's update of the delivery: a heap tuple with its header and WAL
-- record, and an entry in `attempts_pkey` (about 200 B of WAL a delivery,
-- docs/layout-study layout e). The record's update writes the delivery's new version
-- anyway, so the first attempt's columns ride along with it. Attempts after the first
-- (retries, the rescue's lost leases, the rounds after a resend) are rows of `attempts`
-- as before; `every_attempt` reads both, for support's timeline and stored request.
--
-- A daemon from before 0023 still running beside this version writes its first attempts
-- to `attempts`, which `every_attempt` reads too. Its retention's erase of the answers
-- does not know these columns: the trigger below erases a first attempt's answer with
-- the delivery's (`answers_erased_at` set), as this version's erase does itself, so no
-- partner's answer is kept past `payload_days`. A later migration drops it with 0020's.
--
-- ACCESS EXCLUSIVE on `deliveries` for a moment (new nullable columns are catalog only),
-- under the migration's lock_timeout.
ALTER TABLE dispatcher.deliveries
    ADD COLUMN IF NOT EXISTS first_attempt_started_at timestamptz,
    ADD COLUMN IF NOT EXISTS first_attempt_duration_ms integer,
    -- NULL when no answer came (timeout, connection or TLS error, a lost lease).
    ADD COLUMN IF NOT EXISTS first_attempt_http_status integer,
    ADD COLUMN IF NOT EXISTS first_attempt_error_kind text,
    ADD COLUMN IF NOT EXISTS first_attempt_error text,
    -- The partner's answer, capped.
    ADD COLUMN IF NOT EXISTS first_attempt_response_body text,
    ADD COLUMN IF NOT EXISTS first_attempt_answer_erased_at timestamptz,
    -- Support resent the delivery after this attempt (as `attempts.resent_after`);
    -- NULL is false, so a delivery that was never resent stores nothing here.
    ADD COLUMN IF NOT EXISTS first_attempt_resent_after boolean;

-- Every attempt of every delivery: the rows of `attempts`, and the first attempts kept in
-- their deliveries' rows. Read with a delivery id, each part is a primary key lookup.
CREATE OR REPLACE VIEW dispatcher.every_attempt AS
SELECT delivery_id, number, started_at, duration_ms, http_status, error_kind, error,
       response_body, answer_erased_at, resent_after
FROM dispatcher.attempts
UNION ALL
SELECT id, 1, first_attempt_started_at, first_attempt_duration_ms, first_attempt_http_status,
       first_attempt_error_kind, first_attempt_error, first_attempt_response_body,
       first_attempt_answer_erased_at, COALESCE(first_attempt_resent_after, false)
FROM dispatcher.deliveries
WHERE first_attempt_started_at IS NOT NULL;

-- A daemon from before 0023 erasing a delivery's answers erases its first attempt's too.
-- Fires only on an update that names `answers_erased_at` (the erase and the resend),
-- never on the claim or the record.
CREATE OR REPLACE FUNCTION dispatcher.first_attempt_answer_erased() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, dispatcher AS $$
BEGIN
    NEW.first_attempt_response_body := NULL;
    NEW.first_attempt_error := CASE WHEN NEW.first_attempt_http_status IS NULL
                                    THEN NEW.first_attempt_error END;
    NEW.first_attempt_answer_erased_at := NEW.answers_erased_at;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS deliveries_answers_erased_before_0023 ON dispatcher.deliveries;
CREATE TRIGGER deliveries_answers_erased_before_0023
    BEFORE UPDATE OF answers_erased_at ON dispatcher.deliveries
    FOR EACH ROW WHEN (NEW.answers_erased_at IS NOT NULL
                       AND NEW.first_attempt_started_at IS NOT NULL
                       AND NEW.first_attempt_answer_erased_at IS NULL)
    EXECUTE FUNCTION dispatcher.first_attempt_answer_erased();

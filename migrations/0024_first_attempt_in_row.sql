-- A delivery that ends at its first attempt keeps that attempt in its own row (issue
-- 22). Most deliveries do, and each of those wrote a row of `attempts` beside the
-- record's update of the delivery: a heap tuple with its header and WAL record, and an
-- entry in `attempts_pkey` (about 130 B of WAL a delivery, docs/benchmarks.md). The
-- record's update writes the delivery's new version anyway, so the attempt's columns ride
-- along with it. Every other attempt (those of a delivery that is retried, and all after
-- a resend) is a row of `attempts` as before, so a retried delivery's row does not carry
-- an answer through its retries' claims; and so is attempt 1 of a delivery recorded
-- before this migration. `every_attempt` reads both places: read it by a delivery's id
-- (`WHERE delivery_id = ...`, or LATERAL), as its second part is found by the primary
-- key only that way.
--
-- A daemon from before 0024 still running beside this version writes its first attempts
-- to `attempts`, which `every_attempt` reads too. Its retention's erase of the answers
-- and its resend do not know these columns: the trigger below does for them what this
-- version's erase and resend do themselves, so no partner's answer is kept past
-- `payload_days`. A later migration drops it with 0020's.
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
-- their deliveries' rows. Read with a delivery id, each part is a primary key lookup; a
-- plain join on it reads every delivery's first attempt.
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

-- What a daemon from before 0024 does to a first attempt it does not know is in the row:
-- - its erase of a delivery's answers erases the first attempt's too;
-- - its resend of a delivery that ended at its first attempt marks that attempt
--   `resent_after`, as this version's resend does (else the chart would count it as
--   retried, and the timeline show no round's end).
-- Fires only on an update that names `answers_erased_at` (the erase and the resend),
-- never on the claim or the record, and only when this version's own statement has not
-- done it already.
CREATE OR REPLACE FUNCTION dispatcher.first_attempt_from_before_0024() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, dispatcher AS $$
BEGIN
    IF NEW.answers_erased_at IS NULL THEN
        NEW.first_attempt_resent_after := true;
        RETURN NEW;
    END IF;
    NEW.first_attempt_response_body := NULL;
    NEW.first_attempt_error := CASE WHEN NEW.first_attempt_http_status IS NULL
                                    THEN NEW.first_attempt_error END;
    NEW.first_attempt_answer_erased_at := NEW.answers_erased_at;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS deliveries_first_attempt_before_0024 ON dispatcher.deliveries;
CREATE TRIGGER deliveries_first_attempt_before_0024
    BEFORE UPDATE OF answers_erased_at ON dispatcher.deliveries
    FOR EACH ROW WHEN (NEW.first_attempt_started_at IS NOT NULL
                       AND ((NEW.answers_erased_at IS NOT NULL
                             AND NEW.first_attempt_answer_erased_at IS NULL)
                            OR (NEW.answers_erased_at IS NULL
                                AND NEW.attempt_count = 1
                                AND NEW.attempts_before_resend = 1
                                AND NEW.first_attempt_resent_after IS NULL)))
    EXECUTE FUNCTION dispatcher.first_attempt_from_before_0024();

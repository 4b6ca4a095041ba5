-- Layout e: layout d, and a delivery that ends on its first attempt keeps that attempt
-- in its history row instead of a row of dispatcher.attempts (its heap tuple, its WAL
-- record and its primary key entry). Retries, rescues and resends write attempts rows
-- as before; support's timeline reads both. Apply after 40_partitioned_history.sql.
ALTER TABLE dispatcher.deliveries
    ADD COLUMN only_attempt_started_at    timestamptz,
    ADD COLUMN only_attempt_duration_ms   integer,
    ADD COLUMN only_attempt_error_kind    text,
    ADD COLUMN only_attempt_error         text,
    ADD COLUMN only_attempt_response_body text;

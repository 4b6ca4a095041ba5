-- Layout g: layout f, with the partners' answers apart from the metadata, so that
-- retention erases answers at payload_days by dropping a day (dispatcher.answers) and
-- the metadata at metadata_days (dispatcher.deliveries, dispatcher.attempts), neither by
-- rewriting rows. The history row keeps its only attempt's metadata (started_at,
-- duration, status, error kind); the answer (response body, the error text that quotes
-- it) goes to dispatcher.answers, partitioned like the history, with a BRIN on the
-- delivery id (the ids of a day's partition grow with time): no btree entry per answer.
-- Apply after 60_lean.sql.
ALTER TABLE dispatcher.deliveries DROP COLUMN only_attempt_response_body,
                                  DROP COLUMN only_attempt_error;
CREATE TABLE dispatcher.answers (
    delivery_id   uuid    NOT NULL,
    number        integer NOT NULL,
    response_body text,
    error         text
) PARTITION BY RANGE (delivery_id);
CREATE INDEX answers_by_delivery ON dispatcher.answers USING brin (delivery_id) WITH (pages_per_range = 16);
DO $$
BEGIN
    FOR d IN -3..3 LOOP
        EXECUTE format('CREATE TABLE dispatcher.%I PARTITION OF dispatcher.answers FOR VALUES FROM (%L) TO (%L)',
                       'answers_' || to_char(current_date + d, 'YYYYMMDD'),
                       dispatcher.uuid_v7_floor(current_date + d), dispatcher.uuid_v7_floor(current_date + d + 1));
    END LOOP;
END
$$;

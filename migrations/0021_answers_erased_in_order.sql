-- Retention erases the partners' answers in the order deliveries ended, from where its
-- passes have got to (issue 22), instead of by an index of the deliveries whose answers
-- are kept. That index (`deliveries_answers_kept`, on `ended_at`) took an entry from
-- every delivery that ended, beside `deliveries_ended`'s on the same column, and its
-- predicate names `answers_erased_at`, so the erase's own update of each delivery could
-- never be HOT: it wrote a new entry in every index of the table (migration 0020 made
-- the claim's update HOT the same way).
--
-- `answers_erased_through`: every delivery that ended before it has had its answers
-- erased, or is being erased. A pass erases from there up to `payload_days` ago on
-- `deliveries_ended`, then moves it to the earliest delivery in that range still kept
-- (one a resend or another pass held), or to where the range ended. A delivery that ends
-- later has a later `ended_at` (a resend clears it, and it ends again later), so nothing
-- is passed over. It starts a day before the earliest delivery whose answers are kept
-- now (found on the index this drops), or before now if none is: a day for the
-- transactions that ended a delivery before this one looked and commit after it.
CREATE TABLE IF NOT EXISTS dispatcher.retention_position (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    answers_erased_through timestamptz NOT NULL
);
INSERT INTO dispatcher.retention_position (answers_erased_through)
SELECT least(min(ended_at), now()) - interval '1 day'
FROM dispatcher.deliveries
WHERE answers_erased_at IS NULL AND ended_at IS NOT NULL
ON CONFLICT (only_row) DO NOTHING;

-- dispatcher:no-transaction

DROP INDEX CONCURRENTLY IF EXISTS dispatcher.deliveries_answers_kept;

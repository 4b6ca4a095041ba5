-- Question 3, part 5: what a daemon from before the change meets after the swap (run on
-- q3_convert.sh B's database: dispatcher.deliveries is the new parent, the old table its
-- DEFAULT partition `deliveries_queue`). psql -e.
\set VERBOSITY terse
-- Its statements: prepared (parse analysis only), every one is accepted; its routing's
-- ON CONFLICT (event_id, partner) against the parent is refused when planned, at each run.
CREATE OR REPLACE FUNCTION public.bench_uuid_v7() RETURNS uuid LANGUAGE sql AS 'SELECT gen_random_uuid()';
\set ECHO none
\o /dev/null
\i q3_10_today_stmts.sql
\o
\set ECHO queries
INSERT INTO dispatcher.outbox (event_name, event)
VALUES ('HelpAround.Patient.CompleteEnrollment', '{"patient": {"id": "pz"}}') RETURNING id \gset
EXECUTE route(:id, :id);
-- Its claim, order lock and record (prepared above: they are accepted), read the parent
-- without `ended_at IS NULL`: every day partition is read too, on whatever index it has.
EXPLAIN (COSTS OFF) SELECT d.id FROM dispatcher.deliveries d
WHERE d.partner = 'partner-0' AND d.state = 'pending' AND d.due_at <= now() AND d.claim_token IS NULL
ORDER BY d.due_at LIMIT 100;
-- A view binds to the table, not its name: every_attempt still reads the old table only.
SELECT pg_get_viewdef('dispatcher.every_attempt'::regclass);
-- The triggers of 0020 and 0023 stay on the old table (now the default partition), none on
-- the parent or the days.
SELECT tgrelid::regclass, tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'dispatcher.deliveries%';
-- Its retention deletes deliveries, and no longer their attempts (the foreign key and its
-- ON DELETE CASCADE are gone).
SELECT conname FROM pg_constraint WHERE conrelid = 'dispatcher.attempts'::regclass AND contype = 'f';
-- Had the old table kept the name dispatcher.deliveries (the parent named otherwise), an
-- old daemon's record would update the partition itself: past the cutover, the end it
-- writes belongs to a day, and the update is refused instead of moving the row.
UPDATE dispatcher.deliveries_queue SET state = 'delivered', ended_at = now()
WHERE id = (SELECT id FROM dispatcher.deliveries_queue WHERE state = 'pending' LIMIT 1);

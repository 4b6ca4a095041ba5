#!/usr/bin/env bash
# Question 3, part 5: today's deliveries (1,000,000 rows, q3_convert_fill.sql) turned into a
# partition of a new parent partitioned BY RANGE (ended_at), online, with pgbench's writer
# (q3_convert_writer.pgbench, -c 2, lock_timeout 1s) running throughout; each step timed,
# its WAL measured, its locks listed from inside its transaction, and the writer's failures
# counted by step.
# Usage: q3_convert.sh A|B DB   (PGHOST/PGPORT/PGUSER; database `base` migrated)
#   A: the unfinished rows moved to a new queue partition, the old table renamed away with
#      CHECK (ended_at IS NOT NULL AND ended_at < cutover) NOT VALID, VALIDATE, then ATTACH
#      FOR VALUES FROM (MINVALUE) TO (cutover): the old history is outside the parent
#      between the swap and the attach.
#   B: CHECK (ended_at IS NULL OR ended_at < cutover) validated online beforehand (cutover
#      in the future), then in one transaction the old table renamed away, the new parent
#      renamed in, and the old table attached as the DEFAULT partition (queue + old history).
set -uo pipefail
method=$1 db=$2 here=$(cd "$(dirname "$0")" && pwd)
psql -Xq -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db TEMPLATE base"
psql -Xq -v ON_ERROR_STOP=1 -d "$db" -f "$here/q3_convert_fill.sql" >/dev/null
run() { # run STEP SQL: the step timed, its WAL, the writer told which step it is in
  local step=$1 sql=$2
  psql -Xq -d "$db" -c "UPDATE public.q3_step SET step = '$step'"
  echo "### step $step"
  (psql -X -d "$db" -v ON_ERROR_STOP=1 <<SQL
\\timing on
\\set VERBOSITY terse
SET client_min_messages = debug1;
SET lock_timeout = '5s';
SELECT pg_current_wal_insert_lsn() AS lsn0 \\gset
$sql
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'lsn0') AS wal_bytes;
SQL
  ) 2>&1 | grep -v 'building index\|deduplication\|JIT\|time to inline\|^$' | sed 's/^/    /'
  sleep 3
}
locks="SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
       WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND c.relkind IN ('r', 'p') AND c.relname LIKE 'deliveries%' ORDER BY 1, 2;"
# The new parent, its queue (a DEFAULT partition, A only) and its days: nobody uses it yet.
new_parent="CREATE TABLE dispatcher.deliveries_new (LIKE dispatcher.deliveries INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (ended_at);"
day_fn="CREATE FUNCTION public.q3_day(parent text, lo timestamptz, hi timestamptz) RETURNS void LANGUAGE plpgsql AS \$f\$
DECLARE name text := parent || '_' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MI');
BEGIN
    EXECUTE format('CREATE TABLE dispatcher.%I PARTITION OF dispatcher.%I FOR VALUES FROM (%L) TO (%L)', name, parent, lo, hi);
    EXECUTE format('CREATE INDEX ON dispatcher.%I (id)', name);
    EXECUTE format('CREATE INDEX ON dispatcher.%I (event_id, partner)', name);
    EXECUTE format('CREATE INDEX ON dispatcher.%I (patient_id COLLATE \"C\")', name);
    EXECUTE format('CREATE INDEX ON dispatcher.%I (ended_at)', name);
END \$f\$;"

pgbench -n -c 2 -T 60 -f "$here/q3_convert_writer.pgbench" "$db" >/tmp/q3/pgbench-$db.out 2>&1 &
bench=$!
sleep 3
run 0-drop-fk "ALTER TABLE dispatcher.attempts DROP CONSTRAINT attempts_delivery_id_fkey;"
if [[ $method == A ]]; then
  run 1-new-parent "$new_parent
CREATE TABLE dispatcher.deliveries_queue PARTITION OF dispatcher.deliveries_new
    (CONSTRAINT deliveries_queue_unfinished CHECK (ended_at IS NULL)) DEFAULT WITH (fillfactor = 40);
ALTER TABLE dispatcher.deliveries_queue ADD PRIMARY KEY (id);
ALTER TABLE dispatcher.deliveries_queue ADD CONSTRAINT deliveries_queue_event_key UNIQUE NULLS NOT DISTINCT (event_id, partner);
CREATE INDEX ON dispatcher.deliveries_queue (partner, due_at) WHERE state = 'pending';
CREATE INDEX ON dispatcher.deliveries_queue (partner, patient_id, event_id) WHERE state = 'waiting';
CREATE INDEX ON dispatcher.deliveries_queue (partner, patient_id, event_id) WHERE state IN ('pending', 'in_flight') AND patient_id IS NOT NULL;
CREATE INDEX ON dispatcher.deliveries_queue (patient_id COLLATE \"C\");
$day_fn"
  run 2-swap "BEGIN;
LOCK TABLE dispatcher.deliveries IN ACCESS EXCLUSIVE MODE;
SET LOCAL enable_seqscan = off; SET LOCAL jit = off; -- the unfinished rows by the queue's partial indexes
SELECT clock_timestamp() AS cutover \\gset
SELECT public.q3_day('deliveries_new', :'cutover', date_trunc('day', :'cutover'::timestamptz, 'UTC') + interval '1 day');
SELECT public.q3_day('deliveries_new', date_trunc('day', :'cutover'::timestamptz, 'UTC') + interval '1 day', date_trunc('day', :'cutover'::timestamptz, 'UTC') + interval '2 day');
WITH moved AS (DELETE FROM dispatcher.deliveries WHERE state IN ('pending', 'waiting', 'in_flight') RETURNING *)
INSERT INTO dispatcher.deliveries_queue SELECT * FROM moved;
ALTER TABLE dispatcher.deliveries RENAME TO deliveries_old;
ALTER TABLE dispatcher.deliveries_new RENAME TO deliveries;
ALTER TABLE dispatcher.deliveries_old ADD CONSTRAINT deliveries_old_history
    CHECK (ended_at IS NOT NULL AND ended_at < :'cutover') NOT VALID;
$locks
COMMIT;
SELECT :'cutover' \\g (format=unaligned tuples_only=on) /tmp/q3/cutover"
  cutover=$(cat /tmp/q3/cutover)
  run 3-validate "BEGIN;
ALTER TABLE dispatcher.deliveries_old VALIDATE CONSTRAINT deliveries_old_history;
$locks
COMMIT;"
  run 4-attach "BEGIN;
ALTER TABLE dispatcher.deliveries ATTACH PARTITION dispatcher.deliveries_old FOR VALUES FROM (MINVALUE) TO ('$cutover');
$locks
COMMIT;"
else
  # The cutover a little ahead (in production: the next midnight, or a week ahead), so
  # that the swap comes before it; the new parent made first, without the CHECK below.
  cutover=$(psql -X -Atq -d "$db" -c "SELECT now() + interval '25 seconds'")
  run 1-new-parent "$new_parent
$day_fn
SELECT public.q3_day('deliveries_new', '$cutover', date_trunc('day', '$cutover'::timestamptz, 'UTC') + interval '1 day');
SELECT public.q3_day('deliveries_new', date_trunc('day', '$cutover'::timestamptz, 'UTC') + interval '1 day', date_trunc('day', '$cutover'::timestamptz, 'UTC') + interval '2 day');"
  run 2-check-not-valid "BEGIN;
ALTER TABLE dispatcher.deliveries ADD CONSTRAINT deliveries_before_cutover CHECK (ended_at IS NULL OR ended_at < '$cutover') NOT VALID;
$locks
COMMIT;"
  run 3-validate "BEGIN;
ALTER TABLE dispatcher.deliveries VALIDATE CONSTRAINT deliveries_before_cutover;
$locks
COMMIT;"
  run 4-swap "BEGIN;
ALTER TABLE dispatcher.deliveries RENAME TO deliveries_queue;
ALTER TABLE dispatcher.deliveries_new RENAME TO deliveries;
ALTER TABLE dispatcher.deliveries ATTACH PARTITION dispatcher.deliveries_queue DEFAULT;
$locks
COMMIT;"
fi
echo "cutover: $cutover"
wait $bench
echo "### pgbench"; grep -E "transactions|failed|latency|tps" /tmp/q3/pgbench-$db.out | sed 's/^/    /'
echo "### the writer's failures by step"
psql -X -d "$db" -c "SELECT step, sqlstate, left(message, 110) AS message, count(*), min(at)::time(3), max(at)::time(3) FROM public.q3_failures GROUP BY 1, 2, 3 ORDER BY 5"
echo "### where the rows are"
psql -X -d "$db" -c "SELECT tableoid::regclass, count(*), count(*) FILTER (WHERE ended_at IS NULL) AS unfinished, min(ended_at)::timestamp(0), max(ended_at)::timestamp(0) FROM dispatcher.deliveries GROUP BY 1 ORDER BY 1"

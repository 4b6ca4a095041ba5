#!/usr/bin/env bash
# Question 3, part 4: q3_maintenance.sql on a fresh database (a queue of 200,000 and a day
# of 1,000,000), then what a claim and a record meet while a DETACH waits for its lock.
# Usage: q3_maintenance.sh DB (PGHOST/PGPORT/PGUSER set; database `base` migrated)
set -uo pipefail
db=$1 here=$(cd "$(dirname "$0")" && pwd)
psql -Xq -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db TEMPLATE base"
psql -Xq -d "$db" -v days_before=0 -v days_after=3 -f "$here/q3_20_schema.sql" >/dev/null
psql -Xq -v ON_ERROR_STOP=1 -d "$db" -v queue=200000 -v history_days=2  -v per_day=1000000 -f "$here/q3_fill.sql" >/dev/null
echo "### q3_maintenance.sql"
psql -X -e -d "$db" -f "$here/q3_maintenance.sql" 2>&1 | grep -v '^$'
echo "### a DETACH behind a long reader of the parent (support's search, 3 s), with claims and records behind it"
stmts=$here/q3_20_stmts.sql
# yesterday's day was dropped above: without it, a delivery ended yesterday (E1) would fail
# the queue's CHECK instead of landing anywhere
psql -Xq -d "$db" -c "SELECT dispatcher.q3_create_day(current_date - 1)" >/dev/null
psql -Xq -d "$db" -f "$here/q3_concurrency_setup.sql" >/dev/null 2>&1
psql -Xq -d "$db" -c "VACUUM ANALYZE dispatcher.deliveries" >/dev/null
# A claim and a record of X1 (as in q3_concurrency.sh), prepared before the DETACH queues,
# run while it waits for the parent (lock_timeout 1s).
{ printf '\\o /dev/null\n'; cat "$stmts"; printf '\\o\nSET lock_timeout = %s;\nSELECT pg_sleep(1.5);\n\\timing on\n' "'1s'"
  printf "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;\n"
  printf "EXECUTE claim(100, 300, gen_random_uuid(), '{partner-0,partner-1,partner-2,partner-3}', '{1,1,1,1}'); COMMIT;\n"
  printf "BEGIN; EXECUTE lock('{00000000-0000-7000-8000-0000000000a1}', '{00000000-0000-7000-8000-0000000000a1}');\n"
  printf "EXECUTE write('{00000000-0000-7000-8000-0000000000a1}', '{00000000-0000-4000-8000-0000000000f1}', '{NULL}'); COMMIT;\n"
} >/tmp/q3/cr.sql
psql -X -d "$db" -f /tmp/q3/cr.sql >/tmp/q3/cr.out 2>&1 &
sleep 0.2
psql -X -d "$db" -c "SELECT count(*), pg_sleep(3) FROM dispatcher.deliveries WHERE patient_id = 'nobody'" >/tmp/q3/reader.out 2>&1 &
sleep 0.5
psql -X -d "$db" -c "SET lock_timeout = '5s'" -c "\\timing on" -c "ALTER TABLE dispatcher.deliveries DETACH PARTITION dispatcher.deliveries_$(date -u -d "2 days ago" +%Y%m%d)" >/tmp/q3/detach.out 2>&1 &
sleep 0.5
psql -X -d "$db" -c "SELECT l.pid, a.query, c.relname, l.mode, l.granted FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_stat_activity a ON a.pid = l.pid WHERE c.relname IN ('deliveries', 'deliveries_queue') ORDER BY l.granted, l.pid" | sed 's/^/    /'
wait
echo "--- a claim and a record meanwhile (prepared before, run 1.5 s in; lock_timeout 1s):"
grep -v "^$" /tmp/q3/cr.out | sed "s/^/    /"
echo "--- the reader:"; sed 's/^/    /' /tmp/q3/reader.out
echo "--- the DETACH (lock_timeout 5s):"; sed 's/^/    /' /tmp/q3/detach.out
echo "### the same, with the claim's lock and update and the record's order lock naming the parent (ended_at IS NULL: the parent locked first, as the DDL locks it)"
psql -Xq -d "$db" -c "SELECT dispatcher.q3_create_day(current_date - 2)" >/dev/null 2>&1 # again, if the DETACH above went through
psql -Xq -d "$db" -f "$here/q3_concurrency_setup.sql" >/dev/null 2>&1
psql -Xq -d "$db" -c "VACUUM ANALYZE dispatcher.deliveries" >/dev/null
{ printf '\\o /dev/null\n'; cat "$stmts"
  cat <<'SQL'
PREPARE claimp(uuid) AS
WITH locked AS (
    SELECT d.id FROM dispatcher.deliveries d
    WHERE d.ended_at IS NULL AND d.partner = 'partner-1' AND d.state = 'pending'
      AND d.claim_token IS NULL AND d.due_at <= now()
    ORDER BY d.due_at LIMIT 100 FOR UPDATE OF d SKIP LOCKED)
UPDATE dispatcher.deliveries d SET claim_token = $1, leased_until = now() + interval '5 min'
WHERE d.ended_at IS NULL AND d.id = ANY(ARRAY(SELECT id FROM locked)) RETURNING d.id;
PREPARE lockp(uuid[]) AS
SELECT d.id FROM dispatcher.deliveries d WHERE d.ended_at IS NULL AND d.id = ANY($1) ORDER BY d.id FOR NO KEY UPDATE OF d;
SQL
  printf '\\o\nSET lock_timeout = %s;\nSELECT pg_sleep(1.5);\n\\timing on\n' "'1s'"
  printf "BEGIN; EXECUTE claimp(gen_random_uuid()); COMMIT;\n"
  printf "BEGIN; EXECUTE lockp('{00000000-0000-7000-8000-0000000000a1,00000000-0000-7000-8000-0000000000a2}');\n"
  printf "EXECUTE write('{00000000-0000-7000-8000-0000000000a1}', '{00000000-0000-4000-8000-0000000000f1}', '{NULL}'); COMMIT;\n"
  printf "SELECT pg_sleep(2);\n"
  printf "BEGIN; EXECUTE claimp(gen_random_uuid()); COMMIT;\n"
} >/tmp/q3/cr2.sql
psql -X -d "$db" -f /tmp/q3/cr2.sql >/tmp/q3/cr2.out 2>&1 &
sleep 0.2
psql -X -d "$db" -c "SELECT count(*), pg_sleep(3) FROM dispatcher.deliveries WHERE patient_id = 'nobody'" >/tmp/q3/reader2.out 2>&1 &
sleep 0.5
psql -X -d "$db" -c "SET lock_timeout = '5s'" -c "\\timing on" -c "ALTER TABLE dispatcher.deliveries DETACH PARTITION dispatcher.deliveries_$(date -u -d "2 days ago" +%Y%m%d)" >/tmp/q3/detach2.out 2>&1 &
wait
echo "--- a claim and a record meanwhile (prepared before, run 1.5 s in; lock_timeout 1s), then a claim 2 s later:"
grep -v "^$" /tmp/q3/cr2.out | sed "s/^/    /"
echo "--- the DETACH (lock_timeout 5s):"; sed 's/^/    /' /tmp/q3/detach2.out

#!/usr/bin/env bash
# Question 3, every part, in order. Needs two PostgreSQL 15 clusters on 127.0.0.1, set up as
# README.md's first lines say (fsync=off, autovacuum=off, wal_level=replica, max_wal_size=30GB,
# checkpoint_timeout=1h; the second with log_lock_waits=on, deadlock_timeout=200ms):
#   Q1_PORT   a cluster nothing else writes to (WAL is measured cluster-wide), PGDATA_DIR its
#             data directory (pg_waldump reads its pg_wal)
#   PORT      the other one, for parts 2-6
# Usage: Q1_PORT=55433 PGDATA_DIR=/tmp/q3pg/data PORT=55434 ./q3_run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
export PGHOST=127.0.0.1 PGUSER=${PGUSER:-postgres}
mkdir -p /tmp/q3 "$here/q3_out"
base() { # the database `base`: migrations 0001-0022 (0007's plain file) and 0023 (q3_0023_*)
  psql -Xq -c "DROP DATABASE IF EXISTS base" -c "CREATE DATABASE base"
  for f in $(ls "$repo"/migrations/*.sql | grep -v online) "$here/q3_0023_first_attempt_in_row.sql"; do
    grep -v -- '-- dispatcher:no-transaction' "$f" | psql -Xq -v ON_ERROR_STOP=1 -d base >/dev/null 2>&1
  done
}
# Part 1, on its own cluster.
export PGPORT=$Q1_PORT
base
psql -Xq -c "DROP DATABASE IF EXISTS seed" -c "CREATE DATABASE seed TEMPLATE base"
psql -Xq -v ON_ERROR_STOP=1 -d seed -v n=100000 -v body="$(cat "$here/event.json")" -f "$here/01_seed.sql" >/dev/null
"$here/q3_make_b_stmts.sh"
for mode in claim cycle; do
  psql -Xq -c "DROP DATABASE IF EXISTS a" -c "DROP DATABASE IF EXISTS b" \
       -c "CREATE DATABASE a TEMPLATE seed" -c "CREATE DATABASE b TEMPLATE seed"
  psql -Xq -v ON_ERROR_STOP=1 -d b -v days_before=2 -v days_after=2 -f "$here/q3_20_schema.sql" >/dev/null
  "$here/q3_lifecycle.sh" a q3_10_today_stmts.sql 100000 /tmp/q3/q1 "$mode"
  "$here/q3_lifecycle.sh" b q3_20_stmts.sql 100000 /tmp/q3/q1 "$mode"
done
# Parts 2-6.
export PGPORT=$PORT
base
for db in t p q2 at; do psql -Xq -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db TEMPLATE base"; done
for db in p q2 at; do psql -Xq -d $db -v days_before=1 -v days_after=2 -f "$here/q3_20_schema.sql" >/dev/null; done
for db in t p; do psql -Xq -d $db -f "$here/q3_concurrency_setup.sql" >/dev/null 2>&1; done
(cd "$here" && psql -X -e -d q2 -f q3_arbiters.sql >q3_out/q2_arbiters.txt 2>&1)
(cd "$here" && psql -X -e -d at -f q3_attempts_move.sql >q3_out/q2_attempts_move.txt 2>&1)
(cd "$here" && ./q3_concurrency.sh >q3_out/q3_concurrency.txt 2>&1)
psql -Xq -c "DROP DATABASE IF EXISTS snt" -c "CREATE DATABASE snt"
(cd "$here" && psql -X -e -d snt -f q3_sentinel.sql 2>&1 | grep -v "building index\|deduplication" >q3_out/q3_sentinel.txt)
"$here/q3_maintenance.sh" m >"$here/q3_out/q4_maintenance.txt" 2>&1
"$here/q3_convert.sh" A cva >"$here/q3_out/q5_convert_A.txt" 2>&1
"$here/q3_convert.sh" B cvb >"$here/q3_out/q5_convert_B.txt" 2>&1
(cd "$here" && psql -X -e -d cvb -f q3_old_daemon.sql >q3_out/q5_old_daemon.txt 2>&1)
"$here/q3_reads.sh" rd >"$here/q3_out/q6_reads.txt" 2>&1

#!/usr/bin/env bash
# Question 2: fill days of history (deliveries, attempts, event bodies), then drop them.
#   q2_run.sh          day A 1,000,000 (plain DROP), day B 1,000,000 (DETACH CONCURRENTLY,
#                      then DROP), day C 200,000 (plain DROP)
# Needs PGHOST/PGPORT/PGUSER and PGDATA_DIR.
set -euo pipefail
cd "$(dirname "$0")"
db=q2
waldump=/usr/lib/postgresql/15/bin/pg_waldump
psql -X -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -X -q -v ON_ERROR_STOP=1 -d $db -f q2_schema.sql
psql -X -q -d $db -c "SELECT dispatcher.create_day(current_date + d) FROM generate_series(-3, 3) AS d" >/dev/null
fill() { # day n
  local t0 t1; t0=$(date +%s.%N)
  psql -X -q -v ON_ERROR_STOP=1 -d $db -v day="$1" -v n="$2" -v body="$(cat event.json)" -f q2_fill.sql
  t1=$(date +%s.%N)
  echo "filled $1 with $2 deliveries in $(echo "$t1 - $t0" | bc) s"
}
fill 2025-11-01 "${N_A:-1000000}"
fill 2025-11-02 "${N_B:-1000000}"
fill 2025-11-03 "${N_C:-200000}"
psql -X -q -d $db -c "VACUUM ANALYZE" -c "CHECKPOINT"
psql -X -d $db -c "SELECT c.relname, pg_size_pretty(pg_total_relation_size(c.oid)) AS with_indexes,
                          (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) AS partitions
                   FROM pg_class c WHERE c.relname ~ '_2025110[123]$' ORDER BY 1"
drop() { # day concurrently
  local sfx=${1//-/}
  # stragglers: 10 deliveries of the day resent and ended lately, 100 events of the day with
  # a delivery still unfinished in the queue
  psql -X -q -d $db -c "DROP TABLE IF EXISTS straggler_deliveries" \
    -c "CREATE TABLE straggler_deliveries AS SELECT id FROM dispatcher.deliveries_$sfx LIMIT 10" \
    -c "INSERT INTO dispatcher.queue (id, event_id, event_at, partner)
        SELECT gen_random_uuid(), id, created_at, 'partner-x' FROM dispatcher.outbox_$sfx
        ORDER BY id DESC LIMIT 100"
  echo "== drop $1 (concurrently: $2)"
  local out; out=$(psql -X -v day="$1" -v sfx="$sfx" -v concurrently="$2" -d $db -f q2_drop.sql 2>&1)
  echo "$out" | grep -E "^Time|bytes|^ *[0-9]"
  local s e; s=$(echo "$out" | awk -F'|' '/\|/ && $5 ~ /\// {gsub(/ /,"",$5); print $5}' | tail -1)
  e=$(echo "$out" | awk -F'|' '/\|/ && $6 ~ /\// {gsub(/ /,"",$6); print $6}' | tail -1)
  "$waldump" -p "$PGDATA_DIR/pg_wal" -s "$s" -e "$e" --stats=record >"results/q2-drop-$sfx.txt" 2>&1 || true
}
drop 2025-11-01 false
drop 2025-11-02 true
drop 2025-11-03 false
psql -X -d $db -c "SELECT (SELECT count(*) FROM dispatcher.deliveries_kept) AS deliveries_kept,
                          (SELECT count(*) FROM dispatcher.attempts_kept) AS attempts_kept,
                          (SELECT count(*) FROM dispatcher.outbox_kept) AS bodies_kept"

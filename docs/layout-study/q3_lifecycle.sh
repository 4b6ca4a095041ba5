#!/usr/bin/env bash
# Usage: q3_lifecycle.sh DB STATEMENTS N OUT [MODE]
#   DB          a database with the layout's schema and 01_seed.sql's N events
#   STATEMENTS  q3_10_today_stmts.sql (layout a) or q3_20_stmts.sql (layout b)
#   N           deliveries (one per event); every batch 100: routing inserts of 100 events,
#               claims of 100 (room 100 for each of the 4 partners), records of 100
#   OUT         directory for pg_waldump --stats=record of each phase
#   MODE        claim (default): phases route (all), claim (all), record (all: order lock,
#               write, end of the lease, one transaction per claim), vacuum;
#               cycle: route, then each claim recorded before the next (as the daemon), vacuum.
# Each phase in one psql session. CHECKPOINT first; WAL bytes
# from pg_current_wal_insert_lsn() differences. Needs PGHOST/PGPORT/PGUSER, PGDATA_DIR.
set -euo pipefail
db=$1 stmts=$2 n=$3 out=$4 mode=${5:-claim}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"; work=$(mktemp -d /tmp/q3/phase.XXXXXX)
waldump=/usr/lib/postgresql/15/bin/pg_waldump
lsn() { psql -X -Atq -d "$db" -c "SELECT pg_current_wal_insert_lsn()"; }
bytes() { psql -X -Atq -d "$db" -c "SELECT pg_wal_lsn_diff('$2', '$1')"; }
{ echo '\o /dev/null'
  for ((lo = 1; lo <= n; lo += 100)); do echo "BEGIN; EXECUTE route($lo, $((lo + 99))); COMMIT;"; done
} >"$work/route.sql"
{ echo '\o /dev/null'
  for ((i = 0; i < n / 100; i++)); do
    echo "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;"
    echo "EXECUTE claim(100, 300, md5('claim$i')::uuid, '{partner-0,partner-1,partner-2,partner-3}', '{100,100,100,100}'); COMMIT;"
  done
} >"$work/claim.sql"
{ for ((i = 0; i < n / 100; i++)); do
    echo "EXECUTE held(md5('claim$i')::uuid) \\gset"
    echo '\o /dev/null'
    echo "BEGIN; EXECUTE lock(:'ids', :'ids'); EXECUTE write(:'ids', :'toks', :'learned'); EXECUTE leases(:'claims'); COMMIT;"
    echo '\o'
  done
} >"$work/record.sql"
{ for ((i = 0; i < n / 100; i++)); do
    echo '\o /dev/null'
    echo "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;"
    echo "EXECUTE claim(100, 300, md5('claim$i')::uuid, '{partner-0,partner-1,partner-2,partner-3}', '{100,100,100,100}'); COMMIT;"
    echo '\o'
    echo "EXECUTE held(md5('claim$i')::uuid) \\gset"
    echo '\o /dev/null'
    echo "BEGIN; EXECUTE lock(:'ids', :'ids'); EXECUTE write(:'ids', :'toks', :'learned'); EXECUTE leases(:'claims'); COMMIT;"
    echo '\o'
  done
} >"$work/cycle.sql"
echo "VACUUM dispatcher.deliveries, dispatcher.leases, dispatcher.partner_patients, dispatcher.attempts;" >"$work/vacuum.sql"
psql -X -q -d "$db" -c "CHECKPOINT" >/dev/null
printf '%-8s %12s %10s %8s\n' phase wal_bytes per_deliv seconds
total=0
phases=(route claim record vacuum); [[ $mode == cycle ]] && phases=(route cycle vacuum)
for phase in "${phases[@]}"; do
  start=$(lsn); t0=$(date +%s.%N)
  psql -X -q -v ON_ERROR_STOP=1 -d "$db" -f "$here/$stmts" -f "$work/$phase.sql" >/dev/null
  t1=$(date +%s.%N); end=$(lsn)
  b=$(bytes "$start" "$end"); total=$((total + b))
  printf '%-8s %12d %10.1f %8.2f\n' "$phase" "$b" "$(echo "$b / $n" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
  "$waldump" -p "$PGDATA_DIR/pg_wal" -s "$start" -e "$end" --stats=record >"$out/$db-$mode-$phase.txt" 2>&1 || true
done
printf '%-8s %12d %10.1f\n' total "$total" "$(echo "$total / $n" | bc -l)"
psql -X -Atq -d "$db" -c "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*) FROM dispatcher.deliveries"
rm -rf "$work"

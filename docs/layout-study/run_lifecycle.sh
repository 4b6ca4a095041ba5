#!/usr/bin/env bash
# Usage: run_lifecycle.sh DB STATEMENTS MODE N
#   DB          a database already holding the layout's schema and 01_seed.sql's rows
#   STATEMENTS  the layout's PREPAREs (10_current_stmts.sql, 20_narrow_stmts.sql, ...)
#   MODE        claim    = routing inserts pending, claims of 100 take them
#               atinsert = routing inserts them in_flight (routing claims at insert)
#               cycle    = as claim, but each claim of 100 is recorded before the next claim
#   N           deliveries (one per event); routing batches of 1,000, claims and records of 100
# Prints, per phase, the WAL bytes (pg_current_wal_lsn() differences) and writes
# pg_waldump --stats=record of each phase to results/DB-MODE-PHASE.txt.
# Needs PGHOST/PGPORT/PGUSER and PGDATA_DIR (the cluster's data directory); CLAIM_EXTRA,
# more SET LOCALs for the claim's transaction.
set -euo pipefail
db=$1 stmts=$2 mode=$3 n=$4
here=$(cd "$(dirname "$0")" && pwd)
out=$here/results; mkdir -p "$out"
work=$(mktemp -d /tmp/lay/phase.XXXXXX)
waldump=/usr/lib/postgresql/15/bin/pg_waldump
lsn() { psql -X -Atq -d "$db" -c "SELECT pg_current_wal_lsn()"; }
bytes() { psql -X -Atq -d "$db" -c "SELECT pg_wal_lsn_diff('$2', '$1')"; }

offer=false; [[ $mode == atinsert ]] && offer=true
{
  echo '\o /dev/null'
  for ((lo = 1; lo <= n; lo += 1000)); do
    echo "EXECUTE route($lo, $((lo + 999)), $offer, gen_random_uuid());"
  done
} >"$work/route.sql"
{
  echo '\o /dev/null'
  for ((i = 0; i < n / 100; i++)); do
    echo "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; ${CLAIM_EXTRA:-}"
    echo "EXECUTE claim(100, 300, gen_random_uuid(), '{partner-0,partner-1,partner-2,partner-3}', '{100,100,100,100}'); COMMIT;"
  done
} >"$work/claim.sql"
{
  for ((i = 0; i < n / 100; i++)); do
    echo "EXECUTE held($((i * 100 + 1))) \\gset"
    echo '\o /dev/null'
    echo "BEGIN; SET LOCAL enable_seqscan = off; EXECUTE lock(:'ids', :'ids'); EXECUTE write(:'ids', :'toks', :'learned'); COMMIT;"
    echo '\o'
  done
} >"$work/record.sql"
{
  for ((i = 0; i < n / 100; i++)); do
    echo "SELECT gen_random_uuid() AS tok \\gset"
    echo '\o /dev/null'
    echo "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; ${CLAIM_EXTRA:-}"
    echo "EXECUTE claim(100, 300, :'tok', '{partner-0,partner-1,partner-2,partner-3}', '{100,100,100,100}'); COMMIT;"
    echo '\o'
    echo "EXECUTE held_claimed(:'tok') \\gset"
    echo '\o /dev/null'
    echo "BEGIN; SET LOCAL enable_seqscan = off; EXECUTE lock(:'ids', :'ids'); EXECUTE write(:'ids', :'toks', :'learned'); COMMIT;"
    echo '\o'
  done
} >"$work/cycle.sql"
echo "SELECT 'VACUUM ' || string_agg(format('%I.%I', n.nspname, c.relname), ', ') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'dispatcher' AND c.relkind IN ('r', 'p') AND c.relname IN ('deliveries', 'attempts', 'partner_patients', 'queue', 'queue_leases') \\gexec" >"$work/vacuum.sql"

phases=(route)
case $mode in
  claim) phases+=(claim record vacuum) ;;
  atinsert) phases+=(record vacuum) ;;
  cycle) phases+=(cycle vacuum) ;;
esac

psql -X -q -d "$db" -c "CHECKPOINT" >/dev/null
printf '%-8s %12s %10s %8s\n' phase wal_bytes per_deliv seconds
total=0
for phase in "${phases[@]}"; do
  start=$(lsn); t0=$(date +%s.%N)
  psql -X -q -v ON_ERROR_STOP=1 -d "$db" -f "$here/$stmts" -f "$work/$phase.sql" >/dev/null
  t1=$(date +%s.%N); end=$(lsn)
  b=$(bytes "$start" "$end"); total=$((total + b))
  printf '%-8s %12d %10.1f %8.2f\n' "$phase" "$b" "$(echo "$b / $n" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
  "$waldump" -p "$PGDATA_DIR/pg_wal" -s "$start" -e "$end" --stats=record >"$out/$db-$mode-$phase.txt" 2>&1 || true
  if [[ -n ${FPI_BY_REL:-} ]]; then
    # Full-page images by relation (bytes of the records that carry one, less their
    # record part): which relations pay them.
    "$waldump" -p "$PGDATA_DIR/pg_wal" -s "$start" -e "$end" 2>/dev/null \
      | awk '/ FPW/ { match($0, /len \(rec\/tot\): *[0-9]+\/ *[0-9]+/); split(substr($0, RSTART, RLENGTH), l, /[:\/]/);
                      match($0, /rel [0-9]+\/[0-9]+\/[0-9]+ blk [0-9]+ FPW/); split(substr($0, RSTART, RLENGTH), r, /[ \/]/);
                      bytes[r[4]] += l[4] - l[3]; count[r[4]]++ }
             END { for (n in bytes) print bytes[n], count[n], n }' \
      | sort -rn | while read -r bytes count node; do
          echo "$bytes $count $(psql -X -Atq -d "$db" -c "SELECT coalesce(pg_filenode_relation(0, $node)::text, '$node')")"
        done >"$out/$db-$mode-$phase.fpi-by-relation.txt" || true
  fi
done
printf '%-8s %12d %10.1f\n' total "$total" "$(echo "$total / $n" | bc -l)"
rm -rf "$work"

#!/usr/bin/env bash
# Question 1 at scale: the lifecycle of N deliveries (claim mode) with random patient
# ids, beside a history of H ended deliveries (and H/2 known patients), the checkpoint
# just before: what full-page images add once the indexes are larger than what one
# checkpoint cycle touches. WAL_COMPRESSION=lz4 to see what it saves.
#   q1_scale.sh LAYOUT...   (a, f)
set -euo pipefail
cd "$(dirname "$0")"
n=${N:-50000} h=${H:-2000000}
declare -A stmts=([a]=10_current_stmts.sql [f]=60_lean_stmts.sql)
declare -A schema=([a]="" [f]="30_hot_schema.sql 40_partitioned_history.sql 50_inline_attempt.sql 60_lean.sql")
psql -X -q -c "ALTER SYSTEM SET wal_compression = '${WAL_COMPRESSION:-off}'" -c "SELECT pg_reload_conf()" >/dev/null
for layout in "$@"; do
  name=q1s_${layout}_${WAL_COMPRESSION:-off}
  psql -X -q -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name" 2>/dev/null
  for f in $(ls $(git rev-parse --show-toplevel)/migrations/*.sql | grep -v online) ${schema[$layout]}; do
    psql -X -q -v ON_ERROR_STOP=1 -d "$name" -f "$f" >/dev/null
  done
  psql -X -q -v ON_ERROR_STOP=1 -d "$name" -v n="$n" -v body="$(cat event.json)" -f 01_seed_random.sql >/dev/null
  psql -X -q -v ON_ERROR_STOP=1 -d "$name" -v h="$h" -f q1_history.sql >/dev/null
  echo "== $name (history $h, wal_compression ${WAL_COMPRESSION:-off})"
  if [[ $layout == [cdef] ]]; then export CLAIM_EXTRA="SET LOCAL enable_bitmapscan = off;"; else unset CLAIM_EXTRA; fi
  ./run_lifecycle.sh "$name" "${stmts[$layout]}" claim "$n"
  psql -X -q -c "DROP DATABASE $name"
done
psql -X -q -c "ALTER SYSTEM RESET wal_compression" -c "SELECT pg_reload_conf()" >/dev/null

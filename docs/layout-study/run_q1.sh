#!/usr/bin/env bash
# Question 1: every layout, both routing paths, N deliveries (default 50,000).
set -euo pipefail
cd "$(dirname "$0")"
n=${N:-50000}
run() { # name, mode, stmts, schema files...
  local name=$1 mode=$2 stmts=$3; shift 3
  ./make_db.sh "$name" "$n" "$@" 2>/dev/null
  echo "== $name $mode ($stmts; $*)"
  ./run_lifecycle.sh "$name" "$stmts" "$mode" "$n"
  psql -X -Atq -d "$name" -c "SELECT 'hot updates: ' || string_agg(relname || ' ' || n_tup_hot_upd || '/' || n_tup_upd, ', ') FROM pg_stat_user_tables WHERE schemaname = 'dispatcher' AND n_tup_upd > 0"
  psql -X -Atq -d "$name" -c "SELECT 'sizes (with indexes): ' || string_agg(c.relname || ' ' || pg_size_pretty(coalesce((SELECT sum(pg_total_relation_size(t.relid)) FROM pg_partition_tree(c.oid) t), pg_total_relation_size(c.oid))), ', ') FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = 'dispatcher' AND c.relname IN ('deliveries', 'attempts', 'queue', 'partner_patients', 'answers') AND c.relkind IN ('r', 'p')"
  psql -X -Atq -d "$name" -c "SELECT 'rows: deliveries ' || (SELECT count(*) FROM dispatcher.deliveries) || ', attempts ' || (SELECT count(*) FROM dispatcher.attempts) || coalesce(CASE WHEN to_regclass('dispatcher.answers') IS NOT NULL THEN ', answers ' || (xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM dispatcher.answers', false, true, '')))[1]::text END, '')"
  psql -X -q -c "DROP DATABASE $name"
}
# Usage: run_q1.sh [LAYOUTS] [MODES], e.g. run_q1.sh "a c" "claim cycle"
declare -A stmts=([a]=10_current_stmts.sql [b]=20_narrow_stmts.sql [c]=30_hot_stmts.sql
                  [d]=40_partitioned_stmts.sql [e]=50_inline_attempt_stmts.sql [f]=60_lean_stmts.sql [g]=70_answers_stmts.sql)
declare -A schema=([a]="" [b]="20_narrow_schema.sql" [c]="30_hot_schema.sql"
                   [d]="30_hot_schema.sql 40_partitioned_history.sql"
                   [e]="30_hot_schema.sql 40_partitioned_history.sql 50_inline_attempt.sql"
                   [f]="30_hot_schema.sql 40_partitioned_history.sql 50_inline_attempt.sql 60_lean.sql"
                   [g]="30_hot_schema.sql 40_partitioned_history.sql 50_inline_attempt.sql 60_lean.sql 70_answers.sql")
for layout in ${1:-a b c d e f g}; do
  for mode in ${2:-claim atinsert}; do
    # shellcheck disable=SC2086
    # The HOT claim's generic plan must read each partner's due deliveries in order
    # (a bitmap scan read the partner's whole backlog); the daemon would pin it so.
    if [[ $layout == [cdefg] ]]; then export CLAIM_EXTRA="SET LOCAL enable_bitmapscan = off;"; else unset CLAIM_EXTRA; fi
    run "q1_${layout}_$mode" "$mode" "${stmts[$layout]}" ${schema[$layout]}
  done
done

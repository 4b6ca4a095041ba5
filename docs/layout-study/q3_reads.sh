#!/usr/bin/env bash
# Question 3, part 6: q3_reads.sql on a fresh database: q3_20_schema.sql, 60 days of 16,667
# ended deliveries each and a queue of 10,000 pending (q3_fill.sql).
# Usage: q3_reads.sh DB (PGHOST/PGPORT/PGUSER; database `base` migrated)
set -euo pipefail
db=$1 here=$(cd "$(dirname "$0")" && pwd)
psql -Xq -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db TEMPLATE base"
psql -Xq -d "$db" -v days_before=0 -v days_after=2 -f "$here/q3_20_schema.sql" >/dev/null
psql -Xq -v ON_ERROR_STOP=1 -d "$db" -v queue=10000 -v history_days=60 -v per_day=16667 -f "$here/q3_fill.sql" >/dev/null
psql -Xq -d "$db" -c "CREATE OR REPLACE FUNCTION public.bench_uuid_v7() RETURNS uuid LANGUAGE sql AS 'SELECT gen_random_uuid()'"
psql -Xq -d "$db" -c "INSERT INTO dispatcher.outbox (id, event_name, event) OVERRIDING SYSTEM VALUE
  SELECT event_id, event_name, '{\"patient\": {\"id\": \"p\"}}' FROM dispatcher.deliveries_queue"
psql -Xq -d "$db" -c "VACUUM ANALYZE dispatcher.outbox"
psql -X -e -d "$db" -f "$here/q3_reads.sql" 2>&1

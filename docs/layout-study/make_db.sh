#!/usr/bin/env bash
# Usage: make_db.sh DB N [LAYOUT_SQL...]: a fresh database with migrations 0001-0016
# (0007's plain file), the seed (01_seed.sql, N events), then each LAYOUT_SQL in turn.
set -euo pipefail
db=$1 n=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
psql -X -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
for f in $(ls $(git rev-parse --show-toplevel)/migrations/*.sql | grep -v online); do
  psql -X -q -v ON_ERROR_STOP=1 -d "$db" -f "$f" >/dev/null
done
for f in "$@"; do psql -X -q -v ON_ERROR_STOP=1 -d "$db" -f "$here/$f" >/dev/null; done
psql -X -q -v ON_ERROR_STOP=1 -d "$db" -v n="$n" -v body="$(cat "$here/event.json")" -f "$here/01_seed.sql" >/dev/null

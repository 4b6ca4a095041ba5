#!/usr/bin/env bash
# Layout b's statements (q3_20_stmts.sql) from layout a's (q3_10_today_stmts.sql):
# every read, the routing insert and the claim's update name the queue partition
# (dispatcher.deliveries_queue) directly; the record's update names the parent with
# `ended_at IS NULL` (pruned to the queue at plan time), so that a delivery it ends moves
# to its day (a cross-partition UPDATE: an update of the partition itself would fail the
# queue's CHECK instead of moving the row).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
perl -0pe '
  s/^-- Question 3, layout a.*?\n(?=PREPARE)/-- Question 3, layout b: made by q3_make_b_stmts.sh from q3_10_today_stmts.sql (see there).\n/s;
  s/dispatcher\.deliveries\b(?!_)/dispatcher.deliveries_queue/g;
  s/UPDATE dispatcher\.deliveries_queue d\n(\s+)SET state = r\.state/UPDATE dispatcher.deliveries d\n$1SET state = r.state/;
  s/WHERE d\.id = ANY\(\$1\) AND d\.id = r\.id AND d\.claim_token = r\.claim_token/WHERE d.ended_at IS NULL AND d.id = ANY(\$1) AND d.id = r.id AND d.claim_token = r.claim_token/;
' "$here/q3_10_today_stmts.sql" >"$here/q3_20_stmts.sql"

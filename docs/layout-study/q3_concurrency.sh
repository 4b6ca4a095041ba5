#!/usr/bin/env bash
# Question 3: which of the daemon's paths meet a row another transaction moved to another
# partition. Each scenario runs twice, in today's layout (db t, q3_10_today_stmts.sql) and
# in the default-partition layout (db p, q3_20_stmts.sql), from q3_concurrency_setup.sql's
# rows: session A starts first, session B 0.3 s later; both outputs printed.
# Usage: q3_concurrency.sh (PGHOST/PGPORT/PGUSER set; dbs t and p with their schemas)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
X1=00000000-0000-7000-8000-0000000000a1 X2=00000000-0000-7000-8000-0000000000a2
E1=00000000-0000-7000-8000-0000000000b1 U1=00000000-0000-7000-8000-0000000000c1
R1=00000000-0000-7000-8000-0000000000d1 T1=00000000-0000-4000-8000-0000000000f1
T2=00000000-0000-4000-8000-0000000000f2
stmts() { [[ $1 == t ]] && echo q3_10_today_stmts.sql || echo q3_20_stmts.sql; }
queue() { [[ $1 == t ]] && echo dispatcher.deliveries || echo dispatcher.deliveries_queue; }
pair() { # pair TITLE A_SQL B_SQL (in each, QUEUE is the queue's table, PRUNE the record's filter)
  local title=$1 a=$2 b=$3
  echo "=== $title"
  for db in t p; do
    psql -X -q -d "$db" -f "$here/q3_concurrency_setup.sql" >/dev/null 2>&1
    local q; q=$(queue $db); local prune=""; [[ $db == p ]] && prune="ended_at IS NULL AND"
    local sa=${a//QUEUE/$q} sb=${b//QUEUE/$q}; sa=${sa//PRUNE/$prune}; sb=${sb//PRUNE/$prune}
    { printf '\\set VERBOSITY verbose\n\\o /dev/null\n'; cat "$here/$(stmts $db)"; printf '\\o\n%s\n' "$sa"; } >/tmp/q3/a.sql
    { printf '\\set VERBOSITY verbose\n\\o /dev/null\n'; cat "$here/$(stmts $db)"; printf '\\o\n%s\n' "$sb"; } >/tmp/q3/b.sql
    psql -X -d "$db" -v application_name=A -f /tmp/q3/a.sql >/tmp/q3/a.out 2>&1 &
    sleep 0.3
    psql -X -d "$db" -f /tmp/q3/b.sql >/tmp/q3/b.out 2>&1
    wait
    echo "--- layout $([[ $db == t ]] && echo 'a (today)' || echo 'b (default partition)'): session A"
    grep -v '^$' /tmp/q3/a.out | grep -v 'pg_sleep\|^-*$\|^ *$\|(1 row)' | sed 's/^/    /'
    echo "--- session B"
    grep -v '^$' /tmp/q3/b.out | grep -v 'pg_sleep\|^-*$\|^ *$' | sed 's/^/    /'
  done
}
record_a="BEGIN; EXECUTE lock('{$X1}', '{$X1}'); EXECUTE write('{$X1}', '{$T1}', '{NULL}'); SELECT pg_sleep(1); COMMIT;"
pair "1. order lock (routing's lock_patients of X2, or a record/resend/cancel of X2: FOR NO KEY UPDATE of pA's unfinished deliveries) while a record ends X1" \
  "$record_a" \
  "BEGIN; EXECUTE lock('{$X2}', '{$X2}'); SELECT id, state FROM dispatcher.deliveries WHERE id = '$X1'; COMMIT;"

resend="BEGIN; SELECT id FROM dispatcher.deliveries WHERE id = ANY('{$E1}') ORDER BY id FOR NO KEY UPDATE;
UPDATE dispatcher.deliveries SET state = 'pending', due_at = now(), ended_at = NULL, attempts_before_resend = attempt_count,
  answers_erased_at = NULL, last_status = NULL, last_error = NULL
WHERE id = ANY('{$E1}') AND state IN ('delivered', 'rejected', 'dead', 'cancelled');"
pair "2a. support's resend of E1 twice at once (lock_patients on the ended row, then put_back)" \
  "$resend SELECT pg_sleep(1); COMMIT;" "$resend COMMIT;"

cancel="BEGIN; EXECUTE lock('{$U1}', '{$U1}');
UPDATE dispatcher.deliveries SET state = 'cancelled', due_at = NULL, ended_at = now()
WHERE PRUNE id = ANY('{$U1}') AND claim_token IS NULL AND state IN ('pending', 'waiting', 'rejected') RETURNING id;"
pair "2b. support's cancel of U1 (pending, due) twice at once" \
  "$cancel SELECT pg_sleep(1); COMMIT;" "$cancel COMMIT;"

pair "3a. the claim (FOR UPDATE SKIP LOCKED) while a cancel of U1 holds its row, uncommitted" \
  "$cancel SELECT pg_sleep(1); COMMIT;" \
  "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;
   EXECUTE claim(100, 300, gen_random_uuid(), '{partner-0,partner-1,partner-2,partner-3}', '{100,100,100,100}'); COMMIT;"

# The claim's `locked` step as the claim runs it, its candidates read first (here slowed by
# pg_sleep, so the cancel commits between the statement's snapshot and its lock).
pair "3b. the claim's lock (FOR UPDATE SKIP LOCKED) of a candidate a cancel moved after the claim's snapshot (A waits 0.8 s, so B's snapshot comes first; B's candidates take 1 s)" \
  "SELECT pg_sleep(0.8); $cancel COMMIT;" \
  "SELECT d.id FROM QUEUE d
   WHERE d.id = ANY(ARRAY(SELECT c.id FROM QUEUE c WHERE c.state = 'pending' AND c.claim_token IS NULL
                          AND c.due_at <= now() AND pg_sleep(1) IS NOT NULL))
     AND d.due_at <= now() AND d.claim_token IS NULL
   ORDER BY d.due_at LIMIT 100 FOR UPDATE OF d SKIP LOCKED;"

rescue="BEGIN; EXECUTE lock('{$R1}', '{$R1}');
UPDATE dispatcher.deliveries d SET state = 'dead', due_at = NULL, ended_at = now(), claim_token = NULL, leased_until = NULL,
  attempt_count = d.attempt_count + 1, last_status = NULL, last_error = 'no result before the lease ran out'
WHERE PRUNE id = ANY('{$R1}') AND claim_token = ANY('{$T2}') AND leased_until <= now() RETURNING id, state;"
pair "4a. the rescue gives R1 up (dead) while R1's late record waits for it" \
  "$rescue SELECT pg_sleep(1); COMMIT;" \
  "BEGIN; EXECUTE lock('{$R1}', '{$R1}'); EXECUTE write('{$R1}', '{$T2}', '{NULL}'); COMMIT;"
pair "4b. R1's record ends it while the rescue waits for it" \
  "BEGIN; EXECUTE lock('{$R1}', '{$R1}'); EXECUTE write('{$R1}', '{$T2}', '{NULL}'); SELECT pg_sleep(1); COMMIT;" \
  "$rescue COMMIT;"

pair "5. retention's erase of E1's answer while a resend moves E1 back to the queue" \
  "$resend SELECT pg_sleep(1); COMMIT;" \
  "UPDATE dispatcher.deliveries SET answers_erased_at = now(), first_attempt_response_body = NULL
   WHERE id = '$E1' AND ended_at < now() - interval '12 hours' RETURNING id;"

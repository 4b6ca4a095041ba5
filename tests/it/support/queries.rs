//! The questions tests keep asking the database ("how many deliveries are delivered?",
//! "wait until this one is"), each written once, so a scenario reads as its steps and a
//! change of schema is one edit here.

use super::TestDb;

/// The states of a delivery the dispatcher still has work to do with (a claimed one is
/// stored `pending`).
const UNFINISHED: &str = "('pending', 'waiting', 'in_flight')";

/// A delivery's state as support and the tests name it, over the row `d`: since
/// migration 0020 a claimed delivery is stored `pending` with a claim token, and is
/// `in_flight` to everyone who reads it. Written here apart from the store's own, so the
/// tests read it as the migration defines it.
pub(super) const SHOWN_STATE: &str =
    "CASE WHEN d.claim_token IS NOT NULL THEN 'in_flight' ELSE d.state END";

/// Which deliveries a test asks about: every condition named must hold.
#[derive(Clone, Debug, Default)]
pub struct Deliveries {
    conditions: Vec<String>,
}

impl Deliveries {
    /// Every delivery.
    pub fn all() -> Deliveries {
        Deliveries::default()
    }

    /// The deliveries of one partner.
    pub fn of(partner: &str) -> Deliveries {
        Deliveries::all().and(format!("partner = {}", literal(partner)))
    }

    /// In `state` as shown (`in_flight`: claimed).
    pub fn in_state(self, state: &str) -> Deliveries {
        self.and(format!("{SHOWN_STATE} = {}", literal(state)))
    }

    /// Still `pending`, `waiting` or `in_flight`: the dispatcher has more to do with them.
    pub fn unfinished(self) -> Deliveries {
        self.and(format!("state IN {UNFINISHED}"))
    }

    /// In a final state (delivered, rejected, dead, invalid, unrouted, cancelled).
    pub fn finished(self) -> Deliveries {
        self.and(format!("state NOT IN {UNFINISHED}"))
    }

    /// Ended: given its final state at some time (`ended_at` set).
    pub fn ended(self) -> Deliveries {
        self.and("ended_at IS NOT NULL".to_string())
    }

    /// Due: to be claimed at once, not after a delay, nor claimed already (a claimed one
    /// keeps the `due_at` it fell due at).
    pub fn due(self) -> Deliveries {
        self.and("due_at <= now() AND claim_token IS NULL".to_string())
    }

    /// With exactly `attempts` attempts spent.
    pub fn with_attempts(self, attempts: i32) -> Deliveries {
        self.and(format!("attempt_count = {attempts}"))
    }

    /// The one delivery with this id.
    pub fn with_id(self, id: &str) -> Deliveries {
        self.and(format!("id = {}", literal(id)))
    }

    /// The deliveries of one outbox event.
    pub fn of_event(self, event_id: i64) -> Deliveries {
        self.and(format!("event_id = {event_id}"))
    }

    pub fn of_patient(self, patient_id: &str) -> Deliveries {
        self.and(format!("patient_id = {}", literal(patient_id)))
    }

    fn and(mut self, condition: String) -> Deliveries {
        self.conditions.push(condition);
        self
    }

    /// The count, as SQL (also what a failed wait prints).
    fn count_sql(&self) -> String {
        let mut sql = "SELECT count(*) FROM dispatcher.deliveries d".to_string();
        if !self.conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&self.conditions.join(" AND "));
        }
        sql
    }
}

/// A text value as an SQL literal (test names and states: no user input).
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Events in the outbox, routed or not.
const EVENT_COUNT: &str = "SELECT count(*) FROM dispatcher.outbox";
/// Attempts recorded, of every delivery.
const ATTEMPT_COUNT: &str = "SELECT count(*) FROM dispatcher.every_attempt";

impl TestDb {
    /// How many deliveries `selection` matches.
    pub async fn count_deliveries(&self, selection: &Deliveries) -> i64 {
        self.count(&selection.count_sql()).await
    }

    /// Polls until `selection` matches `expected` deliveries; fails after a generous
    /// deadline.
    pub async fn wait_for_deliveries(&self, selection: &Deliveries, expected: i64) {
        self.wait_for_count(&selection.count_sql(), expected).await
    }

    /// [`TestDb::wait_for_deliveries`] with another deadline, for work that takes long
    /// however well it goes.
    pub async fn wait_for_deliveries_within(
        &self,
        selection: &Deliveries,
        expected: i64,
        deadline: std::time::Duration,
    ) {
        self.wait_for_count_within(&selection.count_sql(), expected, deadline)
            .await
    }

    /// How many deliveries are in `state`.
    pub async fn count_in_state(&self, state: &str) -> i64 {
        self.count_deliveries(&Deliveries::all().in_state(state))
            .await
    }

    /// Polls until `expected` deliveries are in `state`.
    pub async fn wait_for_state(&self, state: &str, expected: i64) {
        self.wait_for_deliveries(&Deliveries::all().in_state(state), expected)
            .await
    }

    /// Polls until the delivery `id` is in `state`.
    pub async fn wait_for_delivery_state(&self, id: &str, state: &str) {
        self.wait_for_deliveries(&Deliveries::all().with_id(id).in_state(state), 1)
            .await
    }

    /// The ids of the deliveries in `state` (as shown), in no particular order.
    pub async fn ids_in_state(&self, state: &str) -> Vec<String> {
        self.client
            .query(
                &format!("SELECT id::text FROM dispatcher.deliveries d WHERE {SHOWN_STATE} = $1"),
                &[&state],
            )
            .await
            .expect("read delivery ids")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// How many attempts were recorded, of every delivery.
    pub async fn count_attempts(&self) -> i64 {
        self.count(ATTEMPT_COUNT).await
    }

    /// How many recorded attempts failed with `error_kind` (e.g. `timeout`).
    pub async fn count_attempts_failed_with(&self, error_kind: &str) -> i64 {
        self.count(&format!(
            "{ATTEMPT_COUNT} WHERE error_kind = {}",
            literal(error_kind)
        ))
        .await
    }

    /// How many partners' ids for patients the dispatcher keeps (from their 200 answers).
    pub async fn count_partner_patients(&self) -> i64 {
        self.count("SELECT count(*) FROM dispatcher.partner_patients")
            .await
    }

    /// How many events the outbox holds.
    pub async fn count_events(&self) -> i64 {
        self.count(EVENT_COUNT).await
    }

    /// Polls until the outbox holds `expected` events.
    pub async fn wait_for_events(&self, expected: i64) {
        self.wait_for_count(EVENT_COUNT, expected).await
    }

    /// Every event and delivery a month older, as if a month had passed since: when each
    /// was made, and when each delivery that ended did (past `payload_days`, 30). Their
    /// ids stay of today, so they go to this week of the archive.
    pub async fn a_month_passes(&self) {
        self.client
            .batch_execute(
                "UPDATE dispatcher.outbox SET created_at = now() - interval '31 days';
                 UPDATE dispatcher.deliveries
                 SET created_at = now() - interval '31 days',
                     ended_at = CASE WHEN ended_at IS NOT NULL
                                     THEN now() - interval '31 days' END",
            )
            .await
            .expect("a month passes");
    }

    /// Moves the end of `patient`'s archived deliveries `days` into the past, and each
    /// week of the archive's latest end with it (the greatest of its deliveries'), as if
    /// that time had passed since.
    pub async fn archived_ended_days_ago(&self, patient: &str, days: i32) {
        self.client
            .execute(
                "UPDATE dispatcher.archived_deliveries
                 SET ended_at = now() - make_interval(days => $2)
                 WHERE patient_id = $1",
                &[&patient, &days],
            )
            .await
            .expect("time passes in the archive");
        // A statement of its own: it reads the ends the one above wrote.
        self.client
            .batch_execute(
                "UPDATE dispatcher.archive_weeks kept
                 SET last_ended_at = (SELECT max(d.ended_at) FROM dispatcher.archived_deliveries d
                                      WHERE dispatcher.archive_week_of(d.id) = kept.week)",
            )
            .await
            .expect("and for the weeks");
    }
}

/// The outbox's wake-up flag (migration 0006), as the router and the producers see it.
impl TestDb {
    /// Whether the flag says a router waits for a NOTIFY.
    pub async fn router_waiting(&self) -> bool {
        self.count("SELECT last_value FROM dispatcher.router_waiting")
            .await
            == 1
    }

    /// What a busy router does: producers stop notifying.
    pub async fn mark_router_busy(&self) {
        self.client
            .execute("SELECT setval('dispatcher.router_waiting', 0)", &[])
            .await
            .expect("mark the router busy");
    }

    /// What a router going to sleep does: producers notify from now on.
    pub async fn mark_router_waiting(&self) {
        self.client
            .execute("SELECT setval('dispatcher.router_waiting', 1)", &[])
            .await
            .expect("mark the router waiting");
    }

    /// Polls until the flag says a router waits.
    pub async fn wait_for_router_waiting(&self) {
        self.wait_for_count("SELECT last_value FROM dispatcher.router_waiting", 1)
            .await;
    }
}

impl TestDb {
    /// The states (as shown) of one patient's deliveries to acme, in event order.
    pub async fn states_of(&self, patient: &str) -> Vec<String> {
        self.client
            .query(
                &format!(
                    "SELECT {SHOWN_STATE} FROM dispatcher.deliveries d
                     WHERE patient_id = $1 AND partner = 'acme'
                     ORDER BY event_id"
                ),
                &[&patient],
            )
            .await
            .expect("states")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }
}

/// Deliveries put in flight by hand, as the claim stores a claim.
impl TestDb {
    /// Claims the pending deliveries `ids` as one claim of a daemon would (migration 0020):
    /// each stays `pending`, due when it fell due, with the claim's fresh token and the
    /// lease's end, and the lease goes to `dispatcher.leases`, where support and the
    /// rescuer find it. Returns the claim token.
    pub async fn claim_by_hand(&self, ids: &[&str], lease: std::time::Duration) -> uuid::Uuid {
        let token = uuid::Uuid::new_v4();
        let claimed: i64 = self
            .client
            .query_one(
                "WITH claimed AS (
                     UPDATE dispatcher.deliveries
                     SET claim_token = $2, leased_until = now() + make_interval(secs => $3)
                     WHERE id = ANY($1::text[]::uuid[])
                       AND state = 'pending' AND claim_token IS NULL
                     RETURNING id, leased_until
                 ),
                 leased AS (
                     INSERT INTO dispatcher.leases (claim_token, lease_end, deliveries)
                     SELECT $2, max(leased_until), array_agg(id) FROM claimed
                 )
                 SELECT count(*) FROM claimed",
                &[&ids, &token, &lease.as_secs_f64()],
            )
            .await
            .expect("claim by hand")
            .get(0);
        assert_eq!(
            claimed,
            ids.len() as i64,
            "every one of {ids:?} was pending and unclaimed"
        );
        token
    }
}

/// A long history and a backlog beside the queue, and what PostgreSQL read of the
/// deliveries, for the scenarios that hold the daemon's and support's statements to the
/// queue's indexes.
impl TestDb {
    /// Due deliveries as the router would have left them, `count` for each partner, each
    /// partner's due `overdue` ago, then ANALYZE. Events are the contract's enrollment, one
    /// patient each.
    pub async fn seed_due_deliveries(&self, backlogs: &[(&str, i64, std::time::Duration)]) {
        self.insert_due_deliveries(backlogs).await;
        self.client
            .batch_execute("ANALYZE dispatcher.deliveries")
            .await
            .expect("analyze");
    }

    /// [`TestDb::seed_due_deliveries`] without the ANALYZE: the plans made before stay.
    pub async fn insert_due_deliveries(&self, backlogs: &[(&str, i64, std::time::Duration)]) {
        for (partner, count, overdue) in backlogs {
            self.client
                .execute(
                    "WITH events AS (
                         INSERT INTO dispatcher.outbox (event_name, event, routed_at, xid)
                         SELECT $1, jsonb_set($2::jsonb, '{patient,id}',
                                              to_jsonb($3 || '-' || g)), now(), NULL
                         FROM generate_series(1, $4::int8) AS g
                         RETURNING id, event_name, event -> 'patient' ->> 'id' AS patient_id
                     )
                     INSERT INTO dispatcher.deliveries
                         (id, event_id, partner, event_name, patient_id, state, due_at)
                     SELECT gen_random_uuid(), id, $3, event_name, patient_id, 'pending',
                            now() - make_interval(secs => $5)
                     FROM events",
                    &[
                        &super::ENROLLMENT,
                        &super::enrollment_event("template"),
                        partner,
                        count,
                        &overdue.as_secs_f64(),
                    ],
                )
                .await
                .expect("seed due deliveries");
        }
    }

    /// Ended deliveries as support keeps them (`metadata_days`), `count` of them to `partner`,
    /// each with its event, delivered a month ago at its first attempt, then ANALYZE. Their
    /// ids are earlier than any delivery routed since, as the time-ordered ids the router
    /// makes are.
    pub async fn seed_ended_deliveries(&self, partner: &str, count: i64) {
        self.insert_ended_deliveries(partner, count).await;
        self.client
            .batch_execute("ANALYZE dispatcher.deliveries")
            .await
            .expect("analyze");
    }

    /// [`TestDb::seed_ended_deliveries`] without the ANALYZE: the plans made before stay.
    pub async fn insert_ended_deliveries(&self, partner: &str, count: i64) {
        self.client
            .execute(
                "WITH events AS (
                     INSERT INTO dispatcher.outbox (event_name, event, routed_at, xid)
                     SELECT $1, jsonb_set($2::jsonb, '{patient,id}', to_jsonb('past-' || g)),
                            now(), NULL
                     FROM generate_series(1, $4::int8) AS g
                     RETURNING id, event_name, event -> 'patient' ->> 'id' AS patient_id
                 )
                 INSERT INTO dispatcher.deliveries
                     (id, event_id, partner, event_name, patient_id, state, attempt_count,
                      created_at, ended_at, first_attempt_started_at, first_attempt_duration_ms,
                      first_attempt_http_status)
                 SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(id), 12, '0'))::uuid, id, $3,
                        event_name, patient_id, 'delivered', 1,
                        now() - interval '30 days', now() - interval '30 days',
                        now() - interval '30 days', 40, 200
                 FROM events",
                &[
                    &super::ENROLLMENT,
                    &super::enrollment_event("template"),
                    &partner,
                    &count,
                ],
            )
            .await
            .expect("seed ended deliveries");
    }

    /// The deliveries' row updates so far, and how many of them were HOT (written beside
    /// the old version, with no index entry), once `client`'s backend has reported (a
    /// finished process's have).
    pub async fn delivery_updates(&self, client: &tokio_postgres::Client) -> (i64, i64) {
        client
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .expect("flush the statistics");
        let row = self
            .client
            .query_one(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                 WHERE schemaname = 'dispatcher' AND relname = 'deliveries'",
                &[],
            )
            .await
            .expect("the deliveries' updates");
        (row.get(0), row.get(1))
    }

    /// How many rows and index entries of `dispatcher.deliveries` PostgreSQL has read so
    /// far (sequential scans and index scans), by the statistics every backend reports.
    /// This session's own reads are reported first: a backend holds what it read for up
    /// to a second before it reports it, so counts the test asked just before would
    /// otherwise land after this baseline, in what the statement under test read.
    pub async fn delivery_entries_read(&self) -> i64 {
        self.client
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .expect("flush this session's statistics");
        self.count(
            "SELECT (SELECT COALESCE(seq_tup_read, 0) FROM pg_stat_user_tables
                     WHERE schemaname = 'dispatcher' AND relname = 'deliveries')
                  + (SELECT COALESCE(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
                     WHERE schemaname = 'dispatcher' AND relname = 'deliveries')::int8",
        )
        .await
    }

    /// How many rows and index entries of the deliveries were read since `before` (a
    /// [`TestDb::delivery_entries_read`]), once `client`'s backend has reported what it
    /// read: it reports before it answers the flush.
    pub async fn delivery_entries_read_since(
        &self,
        client: &deadpool_postgres::Client,
        before: i64,
    ) -> i64 {
        client
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .expect("flush the statistics");
        self.delivery_entries_read().await - before
    }
}

/// Races between two transactions, one of them spawned to run into the other's locks.
impl TestDb {
    /// Polls until the spawned `task` has finished (`false`), or the backend `pid` it runs
    /// on waits for a lock another transaction holds (`true`); fails after a generous
    /// deadline. Then the test ends the other transaction, knowing which way they met.
    pub async fn blocked_before_done<T>(
        &self,
        pid: i32,
        task: &tokio::task::JoinHandle<T>,
    ) -> bool {
        self.waits_before_done(&format!("pid = {pid}"), &format!("backend {pid}"), task)
            .await
    }

    /// As [`TestDb::blocked_before_done`], for a task whose backend the test does not
    /// know (a `dispatcher` command's): any session of this database.
    pub async fn a_session_blocked_before_done<T>(
        &self,
        task: &tokio::task::JoinHandle<T>,
    ) -> bool {
        self.waits_before_done(
            "datname = current_database()",
            "the database's sessions",
            task,
        )
        .await
    }

    async fn waits_before_done<T>(
        &self,
        sessions: &str,
        who: &str,
        task: &tokio::task::JoinHandle<T>,
    ) -> bool {
        let started = std::time::Instant::now();
        let blocked = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {sessions} AND wait_event_type = 'Lock'"
        );
        while !task.is_finished() {
            if self.count(&blocked).await > 0 {
                return true;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "{who} neither finished nor waited for a lock within 60s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }
}

impl TestDb {
    /// A page session for `actor` with `role` (viewer, support or operator), as a sign-in
    /// through the identity provider leaves it; returns the cookie's value.
    pub async fn signed_in(&self, actor: &str, role: &str) -> String {
        let secret = format!("test-session-{actor}-{role}");
        self.client
            .execute(
                "INSERT INTO dispatcher.admin_sessions (id_hash, actor, subject, role, expires_at)
                 VALUES (sha256(convert_to($1, 'UTF8')), $2, $2, $3, now() + interval '1 hour')",
                &[&secret, &actor, &role],
            )
            .await
            .expect("a session");
        secret
    }
}

/// A session LISTENing on the outbox's channel (`dispatcher_outbox`), as a daemon's
/// listener does: it counts the NOTIFYs producers' commits send.
pub struct OutboxListener {
    client: tokio_postgres::Client,
    heard: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// The payload of the listener's own NOTIFY, which closes a count (producers send '').
const END_OF_COUNT: &str = "end of count";

impl OutboxListener {
    pub async fn start(db: &TestDb) -> OutboxListener {
        let (client, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .expect("connect the listener");
        let (sender, heard) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) =
                futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let tokio_postgres::AsyncMessage::Notification(note) = message {
                    let _ = sender.send(note.payload().to_string());
                }
            }
        });
        client
            .batch_execute("LISTEN dispatcher_outbox")
            .await
            .expect("listen on the outbox's channel");
        OutboxListener { client, heard }
    }

    /// How many NOTIFYs were heard since the last count. The listener then notifies
    /// itself: PostgreSQL delivers notifications in commit order, so everything a
    /// commit that ended before this call sent is heard before its own.
    pub async fn count_heard(&mut self) -> usize {
        self.client
            .execute(
                "SELECT pg_notify('dispatcher_outbox', $1)",
                &[&END_OF_COUNT],
            )
            .await
            .expect("notify the end of the count");
        let mut count = 0;
        loop {
            let heard = tokio::time::timeout(std::time::Duration::from_secs(60), self.heard.recv())
                .await
                .expect("the listener's own NOTIFY arrives")
                .expect("the listener's connection is open");
            match heard.as_str() {
                END_OF_COUNT => return count,
                _ => count += 1,
            }
        }
    }
}

//! The PostgreSQL side: a fresh database per measurement, events put into the outbox the
//! way the enrollment flow does, progress and results read back, and the server's CPU.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use crate::procfs::{self, ProcessTree};

pub const ENROLLMENT: &str = "HelpAround.Patient.CompleteEnrollment";
pub const VIEWED_TRACKER: &str = "HelpAround.Patient.UserAction.ViewedTracker";

/// Opens a connection and returns it with the pid of the backend serving it, so that
/// backend's CPU can be told apart from the dispatcher's.
pub async fn connect(url: &str) -> Result<(Client, u32)> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(connection);
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    Ok((client, pid.unsigned_abs()))
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// The server the benchmark runs against (a superuser URL: it creates databases).
pub struct Cluster {
    admin_url: String,
    admin: Client,
    /// The postmaster and its children: where PostgreSQL's CPU is counted.
    pub server: ProcessTree,
    pub version: String,
    /// `pg_stat_statements` is preloaded, so statement timings can be read.
    pub has_statement_stats: bool,
    databases: AtomicUsize,
}

impl Cluster {
    pub async fn connect(admin_url: &str) -> Result<Cluster> {
        let (admin, backend) = connect(admin_url).await?;
        // Backends are the postmaster's children; its /proc entry is readable even when
        // the server runs as another user.
        let postmaster = procfs::parent_of(backend).with_context(|| {
            "cannot find the PostgreSQL server's processes in /proc: the benchmark must run \
             on the database's machine (its CPU is measured)"
        })?;
        let server = ProcessTree::new(postmaster)?;
        let version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
        let preload: String = admin
            .query_one("SHOW shared_preload_libraries", &[])
            .await?
            .get(0);
        Ok(Cluster {
            admin_url: admin_url.to_string(),
            admin,
            server,
            version,
            has_statement_stats: preload.contains("pg_stat_statements"),
            databases: AtomicUsize::new(0),
        })
    }

    /// A new, empty database (not yet migrated).
    pub async fn create_database(&self, label: &str) -> Result<BenchDb> {
        let number = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "bench_{}_{}_{number}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id()
        );
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let url = match self.admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => bail!("the database URL must end in /<database>"),
        };
        let (client, backend) = connect(&url).await?;
        if self.has_statement_stats {
            client
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await
                .context("creating extension pg_stat_statements")?;
        }
        client.batch_execute(UUID_V7).await?;
        Ok(BenchDb {
            name,
            url,
            client,
            backend,
        })
    }

    pub async fn drop_database(&self, db: BenchDb) -> Result<()> {
        let name = db.name.clone();
        drop(db);
        self.admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .with_context(|| format!("dropping database {name}"))
    }

    /// WAL written by the whole cluster so far: the difference over a run is its WAL,
    /// plus whatever else ran (autovacuum, other databases). The insert position, not
    /// `pg_stat_wal.wal_bytes`: backends add to that lazily (an idle one up to 10 s
    /// late), so a short run read 0 bytes.
    pub async fn wal_bytes(&self) -> Result<i64> {
        Ok(self
            .admin
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8",
                &[],
            )
            .await
            .context("reading the WAL insert position")?
            .get(0))
    }

    /// The WAL position written up to, as PostgreSQL writes an LSN.
    pub async fn wal_position(&self) -> Result<String> {
        Ok(self
            .admin
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .context("reading the WAL insert position")?
            .get(0))
    }

    /// The WAL records from `from` to what is flushed now, counted and sized by type
    /// (`pg_waldump --stats=record`, from the server's own bin directory): where a run's
    /// WAL went. Everything on the server is in it (autovacuum, other databases).
    pub async fn wal_records(&self, from: &str) -> Result<String> {
        let row = self
            .admin
            .query_one(
                "SELECT pg_current_wal_flush_lsn()::text,
                        current_setting('data_directory'),
                        (SELECT setting FROM pg_config WHERE name = 'BINDIR')",
                &[],
            )
            .await
            .context("reading the WAL flush position and where PostgreSQL is")?;
        let (to, data, bin): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let output = tokio::process::Command::new(format!("{bin}/pg_waldump"))
            .args(["--stats=record", "--path"])
            .arg(format!("{data}/pg_wal"))
            .args(["--start", from, "--end", &to])
            .output()
            .await
            .with_context(|| format!("running {bin}/pg_waldump"))?;
        Ok(format!(
            "pg_waldump --stats=record {from} .. {to}\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// Runs a statement on the whole server (e.g. `ALTER SYSTEM`).
    pub async fn execute(&self, sql: &str) -> Result<()> {
        self.admin
            .batch_execute(sql)
            .await
            .with_context(|| sql.to_string())
    }
}

/// The ids the dispatcher gives deliveries are UUIDv7 of their `created_at`'s millisecond
/// (`delivery/id.rs`); seeded deliveries get the same kind, of the `created_at` they are
/// seeded with (`at`), so the primary key index grows the same way and a delivered one
/// has no entry in `deliveries_ended_by_state`, as the daemon's have none (migration 0023).
const UUID_V7: &str = "
CREATE FUNCTION public.bench_uuid_v7(at timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
           PLACING substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
           FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;";

/// How the seeded events are spread over patients.
#[derive(Debug, Clone, Copy)]
pub enum Patients {
    /// Every event for a patient of its own.
    Distinct,
    /// Every event for a patient of its own, whose id (a hash of `<prefix><n>`) falls
    /// anywhere in the patient indexes, among other seeds' too, as real patients' ids do,
    /// instead of next to the one before: each new delivery then writes a leaf page of its
    /// own in every index keyed by patient, and after a checkpoint the first write of each
    /// page writes it whole, which a large history makes the common case.
    Scattered,
    /// This many events per patient, one after another in outbox order: an enrollment,
    /// then viewed-tracker events.
    EventsEach(u64),
}

/// One database of the cluster, used for one measurement and dropped after it.
pub struct BenchDb {
    pub name: String,
    pub url: String,
    /// The benchmark's own connection (progress polls, seeding, reading results).
    pub client: Client,
    /// Its backend: excluded from PostgreSQL's CPU.
    pub backend: u32,
}

/// The contract's example events, as the enrollment flow stores them: without
/// `sendDate`, `sourceName`, `eventName` (and `data`), which the dispatcher sets.
pub fn example_event(event_name: &str) -> Value {
    let text = match event_name {
        ENROLLMENT => include_str!("../../contract/examples/enrollment.json"),
        _ => include_str!("../../contract/examples/viewed-tracker.json"),
    };
    let mut example: Value = serde_json::from_str(text).expect("the contract's example is JSON");
    let mut event = example["event"].take();
    if let Some(object) = event.as_object_mut() {
        for field in ["sendDate", "sourceName", "eventName", "data"] {
            object.remove(field);
        }
    }
    event
}

/// The support program of the contract's examples; every benchmark partner takes it.
pub fn program() -> String {
    example_event(ENROLLMENT)["supportProgramId"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl BenchDb {
    /// Puts `count` events into the outbox in one statement, with patient ids
    /// `<prefix><n>`. `routed` marks them routed (for [`BenchDb::seed_routed_backlog`]).
    pub async fn seed_events(
        &self,
        count: u64,
        patients: Patients,
        prefix: &str,
        routed: bool,
    ) -> Result<()> {
        let per_patient = match patients {
            Patients::Distinct | Patients::Scattered => 1,
            Patients::EventsEach(each) => each.max(1),
        };
        let scattered = matches!(patients, Patients::Scattered);
        let patient_count = count.div_ceil(per_patient);
        let enrollment = example_event(ENROLLMENT).to_string();
        let viewed = example_event(VIEWED_TRACKER).to_string();
        // From migration 0013 on, an event is routed by the router's position, not by
        // `routed_at`: one seeded as routed carries no transaction id, as events from before
        // the migration, which the router takes as routed when `routed_at` says so.
        let (columns, xid) = if self.routes_by_position().await? {
            (
                "event_name, event, routed_at, xid",
                ", CASE WHEN $8 THEN NULL ELSE pg_current_xact_id() END",
            )
        } else {
            ("event_name, event, routed_at", "")
        };
        self.client
            .execute(
                &format!(
                    "INSERT INTO dispatcher.outbox ({columns})
                 SELECT CASE WHEN k = 0 THEN $1 ELSE $2 END,
                        jsonb_set(CASE WHEN k = 0 THEN $3::text::jsonb ELSE $4::text::jsonb END,
                                  '{{patient,id}}', to_jsonb(CASE WHEN $10
                                      THEN md5($5::text || p::text) ELSE $5::text || p::text END)),
                        CASE WHEN $8 THEN now() END{xid}
                 FROM generate_series(0, $6::int8 - 1) AS p, generate_series(0, $7::int8 - 1) AS k
                 WHERE p * $7::int8 + k < $9::int8
                 ORDER BY p, k"
                ),
                &[
                    &ENROLLMENT,
                    &VIEWED_TRACKER,
                    &enrollment,
                    &viewed,
                    &prefix,
                    &(patient_count as i64),
                    &(per_patient as i64),
                    &routed,
                    &(count as i64),
                    &scattered,
                ],
            )
            .await
            .context("seeding the outbox")?;
        Ok(())
    }

    /// `count` events (a patient each, as `patients` says: `Distinct` or `Scattered`) and a
    /// pending delivery to `partner` for each, as routing would have made them (see the
    /// dispatcher's `store::queue::insert`): a backlog already routed, due `overdue` ago
    /// (zero: due now).
    pub async fn seed_routed_backlog(
        &self,
        partner: &str,
        count: u64,
        patients: Patients,
        prefix: &str,
        overdue: Duration,
    ) -> Result<()> {
        self.seed_events(count, patients, prefix, true).await?;
        // For every event that has none yet: the ones just written.
        self.client
            .execute(
                "INSERT INTO dispatcher.deliveries
                     (id, event_id, partner, event_name, patient_id, state, due_at)
                 SELECT public.bench_uuid_v7(now()), id, $1, event_name, event -> 'patient' ->> 'id',
                        'pending', now() - make_interval(secs => $2)
                 FROM dispatcher.outbox o
                 WHERE NOT EXISTS (SELECT 1 FROM dispatcher.deliveries d WHERE d.event_id = o.id)
                 ORDER BY id",
                &[&partner, &overdue.as_secs_f64()],
            )
            .await
            .context("seeding pending deliveries")?;
        Ok(())
    }

    /// `count` events (a patient each, as `patients` says: `Distinct` or `Scattered`), each
    /// with a delivery to `partner` delivered yesterday after one attempt: the history
    /// support keeps (issue 22's `history` scenario), within every retention period, so
    /// that no pruning runs during the measurement.
    pub async fn seed_ended_deliveries(
        &self,
        partner: &str,
        count: u64,
        patients: Patients,
        prefix: &str,
    ) -> Result<()> {
        self.seed_events(count, patients, prefix, true).await?;
        // For every event that has none yet: the ones just written.
        self.client
            .execute(
                // Each delivered at its first attempt, which the record keeps in the
                // delivery's row (migration 0024).
                "INSERT INTO dispatcher.deliveries
                     (id, event_id, partner, event_name, patient_id, state, attempt_count,
                      last_status, created_at, ended_at, first_attempt_started_at,
                      first_attempt_duration_ms, first_attempt_http_status,
                      first_attempt_response_body)
                 SELECT public.bench_uuid_v7(now() - interval '1 day'), id, $1, event_name,
                        event -> 'patient' ->> 'id', 'delivered', 1, 200,
                        now() - interval '1 day', now() - interval '1 day',
                        now() - interval '1 day', 40, 200,
                        '{\"data\": {\"externalId\": \"crm-1\"}}'
                 FROM dispatcher.outbox o
                 WHERE NOT EXISTS (SELECT 1 FROM dispatcher.deliveries d WHERE d.event_id = o.id)
                 ORDER BY id",
                &[&partner],
            )
            .await
            .context("seeding ended deliveries")?;
        Ok(())
    }

    /// Whether the schema has the archive (migration 0025).
    pub async fn has_archive(&self) -> Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT to_regclass('dispatcher.archived_deliveries') IS NOT NULL",
                &[],
            )
            .await?
            .get(0))
    }

    /// `count` deliveries to `partner` in the archive, as retention leaves a year of
    /// history there (migration 0025): each delivered at its first attempt, its answer
    /// and its event's body erased, a patient each (a hash of `<prefix><n>`), spread
    /// evenly over the 51 weeks that end a little more than `payload_days` (30) ago, so
    /// that no pass archives or drops anything during the measurement. A week at a time,
    /// into the partitions the owner's `archive_week` makes; then vacuumed and analyzed,
    /// as autovacuum would have left weeks that filled long ago.
    pub async fn seed_archived_deliveries(
        &self,
        partner: &str,
        count: u64,
        prefix: &str,
    ) -> Result<()> {
        const WEEKS: u64 = 51;
        let first_week: chrono::NaiveDate = self
            .client
            .query_one(
                "SELECT date_trunc('week', now() - interval '390 days')::date",
                &[],
            )
            .await?
            .get(0);
        for week in 0..WEEKS {
            let monday = first_week + chrono::Days::new(week * 7);
            let (from, to) = (
                i64::try_from(count.saturating_mul(week) / WEEKS)?,
                i64::try_from(count.saturating_mul(week + 1) / WEEKS)?,
            );
            self.client
                .execute(
                    "SELECT dispatcher.archive_week($1::date, ($1::date + 7)::timestamp AT TIME ZONE 'UTC')",
                    &[&monday],
                )
                .await
                .context("making an archived week")?;
            self.client
                .execute(
                    "INSERT INTO dispatcher.archived_deliveries
                         (id, event_id, partner, event_name, patient_id, state, attempt_count,
                          attempts_before_resend, last_status, created_at, ended_at,
                          answers_erased_at, event_erased_at, first_attempt_started_at,
                          first_attempt_duration_ms, first_attempt_http_status,
                          first_attempt_answer_erased_at, first_attempt_resent_after)
                     SELECT public.bench_uuid_v7(at), 1000000000000 + g, $1, $2,
                            md5($3::text || g::text), 'delivered', 1, 0, 200, at,
                            at + interval '40 ms', at + interval '30 days',
                            at + interval '30 days', at, 40, 200, at + interval '30 days', false
                     FROM generate_series($5::int8, $6::int8 - 1) AS g,
                          LATERAL (SELECT $4::date::timestamp AT TIME ZONE 'UTC'
                                          + interval '7 days' * ((g - $5 + 0.5)::float8 / ($6 - $5))
                                          AS at) AS t
                     ORDER BY g",
                    &[&partner, &ENROLLMENT, &prefix, &monday, &from, &to],
                )
                .await
                .context("seeding an archived week")?;
        }
        self.client
            .batch_execute("VACUUM ANALYZE dispatcher.archived_deliveries")
            .await
            .context("vacuum after seeding the archive")
    }

    /// After seeding: statistics and visibility as autovacuum would have left a backlog
    /// that built up over time, and a checkpoint so the measurement does not pay for the
    /// seeding's writes.
    pub async fn settle(&self) -> Result<()> {
        // Two statements: VACUUM cannot run in the implicit transaction of a batch.
        self.client
            .batch_execute("VACUUM ANALYZE dispatcher.outbox, dispatcher.deliveries")
            .await
            .context("vacuum after seeding")?;
        self.client
            .batch_execute("CHECKPOINT")
            .await
            .context("checkpoint after seeding")
    }

    /// Records `partner`'s circuit open until far in the future, as a daemon that saw it
    /// fail would have left it: the next daemon starts from it (`store::circuits`) and
    /// claims nothing of the partner's.
    pub async fn hold_partner(&self, partner: &str) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO dispatcher.partner_circuits
                     (partner, state, consecutive_failures, opened_at, retry_at)
                 VALUES ($1, 'open', 5, now(), now() + interval '30 days')",
                &[&partner],
            )
            .await
            .context("opening a partner's circuit")?;
        Ok(())
    }

    /// Deliveries to `partner` in `state`, e.g. that a held partner's stayed pending.
    pub async fn count_in_state(&self, partner: &str, state: &str) -> Result<i64> {
        Ok(self
            .client
            .query_one(
                "SELECT count(*) FROM dispatcher.deliveries WHERE partner = $1 AND state = $2",
                &[&partner, &state],
            )
            .await?
            .get(0))
    }

    pub async fn reset_statement_stats(&self, cluster: &Cluster) -> Result<()> {
        if cluster.has_statement_stats {
            self.client
                .batch_execute("SELECT pg_stat_statements_reset()")
                .await?;
        }
        Ok(())
    }

    /// Everything routed, and nothing unfinished (for `partner`, when given).
    pub async fn all_ended(&self, partner: Option<&str>) -> Result<bool> {
        if self.unrouted().await? > 0 {
            return Ok(false);
        }
        let row = self
            .client
            .query_one(
                // Each unfinished state on its own partial index: one `IN` of both
                // matches neither, and read the table (the history included) at each poll.
                // A claimed delivery is `pending` with a token (migration 0020).
                "SELECT NOT EXISTS (SELECT 1 FROM dispatcher.deliveries
                                    WHERE state = 'pending' AND ($1::text IS NULL OR partner = $1))
                    AND NOT EXISTS (SELECT 1 FROM dispatcher.deliveries
                                    WHERE state = 'waiting' AND ($1::text IS NULL OR partner = $1))",
                &[&partner],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Whether the schema routes by the router's position (migration 0013) rather than
    /// by `routed_at`: the bench also measures daemons from before it.
    pub async fn routes_by_position(&self) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT to_regclass('dispatcher.routing_position') IS NOT NULL",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// How many events wait to be routed.
    pub async fn unrouted(&self) -> Result<i64> {
        let sql = if self.routes_by_position().await? {
            "SELECT dispatcher.unrouted_events()"
        } else {
            "SELECT count(*) FROM dispatcher.outbox WHERE routed_at IS NULL"
        };
        Ok(self.client.query_one(sql, &[]).await?.get(0))
    }

    pub async fn delivered_count(&self) -> Result<i64> {
        Ok(self
            .client
            .query_one(
                "SELECT count(*) FROM dispatcher.deliveries WHERE state = 'delivered'",
                &[],
            )
            .await?
            .get(0))
    }

    /// How many deliveries (to `partner`, when given) are delivered, and when the last of
    /// them was recorded (Unix seconds).
    pub async fn delivered(&self, partner: Option<&str>) -> Result<(i64, f64)> {
        let row = self
            .client
            .query_one(
                "SELECT count(*), COALESCE(extract(epoch FROM max(ended_at))::float8, 0)
                 FROM dispatcher.deliveries
                 WHERE state = 'delivered' AND ($1::text IS NULL OR partner = $1)",
                &[&partner],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// When the `n`th delivery (in order of recording) was recorded (Unix seconds).
    pub async fn nth_delivered_at(&self, n: i64) -> Result<f64> {
        let row = self
            .client
            .query_one(
                "SELECT extract(epoch FROM ended_at)::float8 FROM dispatcher.deliveries
                 WHERE state = 'delivered' ORDER BY ended_at OFFSET $1 LIMIT 1",
                &[&(n - 1).max(0)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Deliveries per state, e.g. to show why a run did not finish.
    pub async fn states(&self) -> Result<String> {
        let rows = self
            .client
            .query(
                "SELECT state, count(*) FROM dispatcher.deliveries GROUP BY state ORDER BY state",
                &[],
            )
            .await?;
        let unrouted = self.unrouted().await?;
        let mut text = format!("unrouted events {unrouted}");
        for row in rows {
            text.push_str(&format!(
                ", {} {}",
                row.get::<_, String>(0),
                row.get::<_, i64>(1)
            ));
        }
        Ok(text)
    }

    /// Fails when any delivery ended other than delivered (the partner must accept all).
    pub async fn expect_no_failures(&self) -> Result<()> {
        let failed: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM dispatcher.deliveries
                 WHERE state NOT IN ('pending', 'waiting', 'in_flight', 'delivered')",
                &[],
            )
            .await?
            .get(0);
        if failed > 0 {
            let example: Option<String> = self
                .client
                .query_opt(
                    "SELECT state || ': ' || COALESCE(last_error, '') FROM dispatcher.deliveries
                     WHERE state NOT IN ('pending', 'waiting', 'in_flight', 'delivered') LIMIT 1",
                    &[],
                )
                .await?
                .map(|row| row.get(0));
            bail!(
                "{failed} deliveries did not end delivered ({}); e.g. {}",
                self.states().await?,
                example.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Delivery id (the webhook-id) to event id, for matching arrivals with commits.
    pub async fn event_of_delivery(&self) -> Result<Vec<(String, i64)>> {
        let rows = self
            .client
            .query(
                "SELECT id::text, event_id FROM dispatcher.deliveries WHERE partner IS NOT NULL",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Mean execution time (ms) and calls of the claim statement, from
    /// `pg_stat_statements`: the `UPDATE dispatcher.deliveries` with `SKIP LOCKED` called
    /// most often.
    pub async fn claim_time(&self, cluster: &Cluster) -> Result<Option<(f64, i64)>> {
        if !cluster.has_statement_stats {
            return Ok(None);
        }
        let row = self
            .client
            .query_opt(
                "SELECT mean_exec_time, calls FROM pg_stat_statements
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND query ILIKE '%SKIP LOCKED%' AND query ILIKE '%UPDATE dispatcher.deliveries%'
                   AND query NOT ILIKE '%pg_stat_statements%'
                 ORDER BY calls DESC LIMIT 1",
                &[],
            )
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    /// The statements that took the most time in this database, for profiling.
    pub async fn top_statements(&self, cluster: &Cluster, limit: i64) -> Result<String> {
        if !cluster.has_statement_stats {
            return Ok("pg_stat_statements is not loaded on this server\n".into());
        }
        let rows = self
            .client
            .query(
                "SELECT calls, total_exec_time, mean_exec_time, rows,
                        shared_blks_hit, shared_blks_read, wal_bytes::int8,
                        regexp_replace(query, '\\s+', ' ', 'g')
                 FROM pg_stat_statements
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                 ORDER BY total_exec_time DESC LIMIT $1",
                &[&limit],
            )
            .await?;
        let mut text =
            String::from("calls\ttotal_ms\tmean_ms\trows\tblks_hit\tblks_read\twal_bytes\tquery\n");
        for row in rows {
            text.push_str(&format!(
                "{}\t{:.1}\t{:.3}\t{}\t{}\t{}\t{}\t{}\n",
                row.get::<_, i64>(0),
                row.get::<_, f64>(1),
                row.get::<_, f64>(2),
                row.get::<_, i64>(3),
                row.get::<_, i64>(4),
                row.get::<_, i64>(5),
                row.get::<_, i64>(6),
                row.get::<_, String>(7),
            ));
        }
        Ok(text)
    }

    /// Sizes of the dispatcher's busy tables.
    pub async fn table_sizes(&self) -> Result<Vec<TableSize>> {
        let rows = self
            .client
            .query(
                "SELECT c.relname::text, pg_total_relation_size(c.oid), pg_indexes_size(c.oid),
                        s.n_live_tup, s.n_dead_tup, s.autovacuum_count + s.vacuum_count
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_stat_user_tables s ON s.relid = c.oid
                 WHERE n.nspname = 'dispatcher'
                   AND c.relname IN ('outbox', 'deliveries', 'attempts', 'partner_patients')
                 ORDER BY array_position(ARRAY['outbox', 'deliveries', 'attempts', 'partner_patients'],
                                         c.relname::text)",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| TableSize {
                table: row.get(0),
                total_bytes: row.get(1),
                index_bytes: row.get(2),
                live_rows: row.get(3),
                dead_rows: row.get(4),
                vacuums: row.get(5),
            })
            .collect())
    }
}

/// One table's size: `pg_total_relation_size` (heap, TOAST and indexes) and
/// `pg_indexes_size`, with the row counts autovacuum goes by.
#[derive(Debug, Clone)]
pub struct TableSize {
    pub table: String,
    pub total_bytes: i64,
    pub index_bytes: i64,
    pub live_rows: i64,
    pub dead_rows: i64,
    pub vacuums: i64,
}

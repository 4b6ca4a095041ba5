//! What the outbox costs the enrollment flow: the `producer` scenario (8 connections
//! committing one event per transaction as fast as they can, into the outbox with and
//! without its wake-up, and into a plain copy of the table; then both again in bursts,
//! each starting with the router asleep) and `producer-end-to-end`
//! (16 producers' events delivered as they commit, against a drain of as many committed
//! rows).
//!
//! Both drive whichever `dispatcher` binary is measured, and whatever wake-up its schema
//! ships: the legs switch the outbox's triggers off and on by name as they found them.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::daemon::Daemon;
use crate::database::Patients;
use crate::notifications::OutboxNotifications;
use crate::producer::{FlatOut, Producer, Stop};
use crate::report::{self, Metric, Target};
use crate::scenarios::{
    wal_per_delivery, ArrivalCounter, Arrivals, Bench, CpuWindow, Setup, Until,
};

/// The enrollment flow's connections in the `producer` scenario, and in `end-to-end`.
const PRODUCERS: usize = 8;
const END_TO_END_PRODUCERS: usize = 16;

/// The copy of the outbox without triggers, and v1's wake-up (migration 0001's
/// `outbox_notify`: one `pg_notify` per inserting statement), made by the benchmark.
const BENCH_OBJECTS: &str = "
CREATE SCHEMA bench;
CREATE TABLE bench.outbox_plain (LIKE dispatcher.outbox INCLUDING ALL);
CREATE FUNCTION bench.v1_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dispatcher_outbox', '');
    RETURN NULL;
END
$$;";

/// The producer scenario's legs, run in this order, round after round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Leg {
    /// A plain copy of the outbox: no trigger, nothing reads it (the daemon idles).
    Plain,
    /// The outbox as the schema ships it; the daemon routes and delivers.
    Outbox,
    /// The outbox with its user triggers disabled; the daemon finds events by polling.
    NoWakeup,
    /// User triggers disabled, v1's statement-level `pg_notify` trigger added.
    V1Notify,
    /// The plain copy in bursts, each started once the router sleeps (as it does).
    PlainBursts,
    /// The outbox in bursts, each started once the router has delivered the last one and
    /// sleeps: what a burst after a quiet spell pays for waking it.
    OutboxBursts,
    /// The outbox as the schema ships it, the daemon stopped (SIGSTOP) for the leg and
    /// let go after it: what the table and its trigger cost a producer, without the
    /// daemon's routing and delivering beside it on the same cores.
    OutboxUnread,
}

impl Leg {
    const ALL: [Leg; 7] = [
        Leg::Plain,
        Leg::Outbox,
        Leg::NoWakeup,
        Leg::V1Notify,
        Leg::PlainBursts,
        Leg::OutboxBursts,
        Leg::OutboxUnread,
    ];

    fn name(self) -> &'static str {
        match self {
            Leg::Plain => "plain",
            Leg::Outbox => "outbox",
            Leg::NoWakeup => "no_wakeup",
            Leg::V1Notify => "v1_notify",
            Leg::PlainBursts => "plain_bursts",
            Leg::OutboxBursts => "outbox_bursts",
            Leg::OutboxUnread => "outbox_unread",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Leg::Plain | Leg::PlainBursts => "bench.outbox_plain",
            _ => "dispatcher.outbox",
        }
    }

    fn in_bursts(self) -> bool {
        matches!(self, Leg::PlainBursts | Leg::OutboxBursts)
    }
}

/// Empties the tables the legs write. The running daemon's statements (the router's,
/// the rescuer's) lock some of the same tables in another order than the `TRUNCATE`, so
/// now and then PostgreSQL ends the `TRUNCATE` as a deadlock's victim: it is tried again.
async fn empty_tables(db: &crate::database::BenchDb) -> Result<()> {
    let mut tries = 0;
    loop {
        let emptied = db
            .client
            .batch_execute(
                "TRUNCATE dispatcher.outbox, dispatcher.deliveries, dispatcher.attempts,
                          dispatcher.partner_patients, bench.outbox_plain CASCADE",
            )
            .await;
        match emptied {
            Err(error)
                if tries < 5
                    && error.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                tries += 1;
            }
            emptied => return emptied.context("emptying the tables between legs"),
        }
    }
}

/// One user trigger of the outbox and how it was enabled (`pg_trigger.tgenabled`).
struct ShippedTrigger {
    name: String,
    enabled: String,
}

impl ShippedTrigger {
    /// The statement that puts it back as it was.
    fn restore(&self) -> String {
        let how = match self.enabled.as_str() {
            "D" => "DISABLE TRIGGER",
            "R" => "ENABLE REPLICA TRIGGER",
            "A" => "ENABLE ALWAYS TRIGGER",
            _ => "ENABLE TRIGGER",
        };
        format!(
            "ALTER TABLE dispatcher.outbox {how} \"{}\"",
            self.name.replace('"', "\"\"")
        )
    }
}

impl Bench {
    /// The `producer` scenario: commits/s of 8 producers in each leg, the legs
    /// alternated on one database with one daemon running throughout.
    pub(crate) async fn producer(&self) -> Result<Vec<Metric>> {
        let setup = self.setup("producer", &[self.fast_partner()], "").await?;
        let db = &setup.db;
        db.client
            .batch_execute(BENCH_OBJECTS)
            .await
            .context("creating the plain outbox and v1's trigger")?;
        let shipped: Vec<ShippedTrigger> = db
            .client
            .query(
                "SELECT tgname::text, tgenabled::text FROM pg_trigger
                 WHERE tgrelid = 'dispatcher.outbox'::regclass AND NOT tgisinternal
                 ORDER BY tgname",
                &[],
            )
            .await?
            .iter()
            .map(|row| ShippedTrigger {
                name: row.get(0),
                enabled: row.get(1),
            })
            .collect();
        let producer = Producer::connect(&db.url, PRODUCERS).await?;
        let mut daemon = self.start_daemon(&setup, 0, None)?;
        self.wait_delivering(&setup, &mut daemon).await?;

        let duration = Duration::from_secs_f64(self.sizes.producer_seconds);
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Leg::ALL.len()];
        let mut wal: Vec<Vec<f64>> = vec![Vec::new(); Leg::ALL.len()];
        let mut notifies_per_burst = Vec::new();
        for round in 0..self.sizes.producer_rounds {
            for (index, leg) in Leg::ALL.into_iter().enumerate() {
                // Every leg starts from empty tables, right after a checkpoint (whose
                // full-page images the first writes after it pay).
                empty_tables(db).await?;
                db.client.batch_execute("CHECKPOINT").await?;
                self.arm(&setup, leg).await?;
                let mut counter = ArrivalCounter::start(self, Arrivals::Nginx).await?;
                let wal_start = self.cluster.wal_bytes().await?;
                let produced = match leg.in_bursts() {
                    false if leg == Leg::OutboxUnread => {
                        daemon.pause()?;
                        let produced = producer
                            .flat_out(leg.table(), Stop::After(duration), "producer-")
                            .await;
                        daemon.resume()?;
                        produced?
                    }
                    false => {
                        producer
                            .flat_out(leg.table(), Stop::After(duration), "producer-")
                            .await?
                    }
                    true => {
                        let (produced, notifies) = self
                            .bursts(&setup, &producer, leg, &mut daemon, &mut counter)
                            .await?;
                        if leg == Leg::OutboxBursts {
                            let bursts = self.sizes.producer_bursts.max(1) as f64;
                            notifies_per_burst.push(notifies as f64 / bursts);
                        }
                        produced
                    }
                };
                // The legs on the outbox also wait for the daemon to deliver what was
                // committed, so the next leg starts with an idle daemon; the WAL per
                // event then includes delivering it.
                if leg.table() == "dispatcher.outbox" {
                    self.wait_delivered(&setup, &mut daemon, &mut counter, produced.commits)
                        .await
                        .with_context(|| format!("leg {}", leg.name()))?;
                }
                let wal_bytes = self.cluster.wal_bytes().await? - wal_start;
                self.disarm(&setup, leg, &shipped).await?;
                let rate = produced.commits as f64 / produced.seconds;
                eprintln!(
                    "bench: producer round {} {}: {} commits/s",
                    round + 1,
                    leg.name(),
                    report::number(rate)
                );
                rates[index].push(rate);
                wal[index].push(wal_bytes as f64 / produced.commits.max(1) as f64);
            }
        }
        daemon.stop(Duration::from_secs(30)).await?;
        db.expect_no_failures().await?;
        self.dump_statements(&setup).await?;
        self.finish(setup).await?;

        let mut metrics = Vec::new();
        let medians: Vec<f64> = rates.iter().map(|r| report::median(r)).collect();
        for (index, leg) in Leg::ALL.into_iter().enumerate() {
            metrics.push(Metric::new(
                format!("{}.commits_per_s", leg.name()),
                "/s",
                medians[index],
            ));
            metrics.push(Metric::new(
                format!("{}.wal_bytes_per_event", leg.name()),
                "B",
                report::median(&wal[index]),
            ));
        }
        let [plain, outbox, no_wakeup, v1_notify, plain_bursts, outbox_bursts, outbox_unread] =
            [0, 1, 2, 3, 4, 5, 6].map(|i| medians[i]);
        metrics.extend([
            Metric::new("outbox_to_plain", "x", outbox / plain).target(Target::AtLeast(0.95)),
            Metric::new(
                "outbox_bursts_to_plain_bursts",
                "x",
                outbox_bursts / plain_bursts,
            )
            .target(Target::AtLeast(0.85)),
            Metric::new(
                "outbox_bursts.notifies_per_burst",
                "",
                report::median(&notifies_per_burst),
            ),
            Metric::new("v1_notify_to_plain", "x", v1_notify / plain),
            Metric::new("outbox_to_no_wakeup", "x", outbox / no_wakeup),
            Metric::new("outbox_unread_to_plain", "x", outbox_unread / plain),
            Metric::new("producers", "", PRODUCERS as f64),
            Metric::new("rounds", "", self.sizes.producer_rounds as f64),
            Metric::new("seconds_per_leg", "s", self.sizes.producer_seconds),
            Metric::new("burst_events", "", self.sizes.producer_burst_events as f64),
            Metric::new("bursts_per_leg", "", self.sizes.producer_bursts as f64),
            Metric::new("outbox.user_triggers", "", shipped.len() as f64),
        ]);
        Ok(metrics)
    }

    /// A bursts leg: `producer_bursts` bursts of `producer_burst_events` events, each
    /// started once the router sleeps (it delivered all before, and its wake-up flag,
    /// `dispatcher.router_waiting`, reads "waiting"). Its rate counts the bursts' time
    /// only, not the waits between them; also returns the NOTIFYs the bursts sent.
    async fn bursts(
        &self,
        setup: &Setup,
        producer: &Producer,
        leg: Leg,
        daemon: &mut Daemon,
        counter: &mut ArrivalCounter<'_>,
    ) -> Result<(FlatOut, u64)> {
        let mut notifications = OutboxNotifications::listen(&setup.db.url).await?;
        let mut all = FlatOut {
            commits: 0,
            seconds: 0.0,
            started_unix: crate::daemon::unix_now(),
        };
        for burst in 0..self.sizes.producer_bursts {
            if leg == Leg::OutboxBursts {
                self.wait_delivered(setup, daemon, counter, all.commits)
                    .await?;
            }
            self.wait_router_asleep(setup).await?;
            let events = Stop::Events(self.sizes.producer_burst_events);
            let done = producer
                .flat_out(leg.table(), events, &format!("burst-{burst}-"))
                .await?;
            all.commits += done.commits;
            all.seconds += done.seconds;
        }
        Ok((all, notifications.count().await?))
    }

    /// Waits until the router's wake-up flag reads "waiting" (1): the router sleeps, or
    /// is on its last look before it, so the next commit is the first of a burst after
    /// a quiet spell (both the schema of before issue 22 and after have this flag).
    async fn wait_router_asleep(&self, setup: &Setup) -> Result<()> {
        let deadline = Instant::now() + self.sizes.deadline;
        loop {
            let waiting: i64 = setup
                .db
                .client
                .query_one("SELECT last_value FROM dispatcher.router_waiting", &[])
                .await
                .context("reading the router's wake-up flag")?
                .get(0);
            if waiting == 1 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the router did not go to sleep within {:?}",
                    self.sizes.deadline
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sets the outbox's triggers up for `leg`.
    async fn arm(&self, setup: &Setup, leg: Leg) -> Result<()> {
        let client = &setup.db.client;
        match leg {
            Leg::Plain | Leg::Outbox | Leg::PlainBursts | Leg::OutboxBursts | Leg::OutboxUnread => {
                return Ok(())
            }
            Leg::NoWakeup => client
                .batch_execute("ALTER TABLE dispatcher.outbox DISABLE TRIGGER USER")
                .await
                .context("disabling the outbox's triggers")?,
            Leg::V1Notify => client
                .batch_execute(
                    "ALTER TABLE dispatcher.outbox DISABLE TRIGGER USER;
                     CREATE TRIGGER bench_v1_notify
                         AFTER INSERT ON dispatcher.outbox
                         FOR EACH STATEMENT EXECUTE FUNCTION bench.v1_notify()",
                )
                .await
                .context("putting v1's wake-up on the outbox")?,
        }
        // DISABLE TRIGGER USER spares only the internal ones (foreign keys'); a
        // constraint trigger made by a migration is a user trigger and goes off too.
        let enabled: Vec<String> = client
            .query(
                "SELECT tgname::text FROM pg_trigger
                 WHERE tgrelid = 'dispatcher.outbox'::regclass AND NOT tgisinternal
                   AND tgenabled <> 'D' AND tgname <> 'bench_v1_notify'",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !enabled.is_empty() {
            bail!(
                "the outbox's triggers {} are still enabled",
                enabled.join(", ")
            );
        }
        Ok(())
    }

    /// Puts the outbox's triggers back as the schema shipped them.
    async fn disarm(&self, setup: &Setup, leg: Leg, shipped: &[ShippedTrigger]) -> Result<()> {
        let mut statements: Vec<String> = shipped.iter().map(ShippedTrigger::restore).collect();
        match leg {
            Leg::Plain | Leg::Outbox | Leg::PlainBursts | Leg::OutboxBursts | Leg::OutboxUnread => {
                return Ok(())
            }
            Leg::NoWakeup => {}
            Leg::V1Notify => {
                statements.insert(
                    0,
                    "DROP TRIGGER bench_v1_notify ON dispatcher.outbox".into(),
                );
            }
        }
        for statement in statements {
            setup
                .db
                .client
                .batch_execute(&statement)
                .await
                .with_context(|| statement.clone())?;
        }
        Ok(())
    }

    /// Waits until a running daemon delivers: one event committed and delivered, so
    /// whatever wake-up the binary uses is set up (not every one need LISTEN).
    pub(crate) async fn wait_delivering(&self, setup: &Setup, daemon: &mut Daemon) -> Result<()> {
        setup
            .db
            .seed_events(1, Patients::Distinct, "ready-", false)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while setup.db.delivered_count().await? < 1 {
            daemon.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "the dispatcher delivered no event within 60 s of its start ({})",
                    setup.db.states().await?
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until the partner received `expected` requests and nothing is unfinished.
    async fn wait_delivered(
        &self,
        setup: &Setup,
        daemon: &mut Daemon,
        counter: &mut ArrivalCounter<'_>,
        expected: u64,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            daemon.check_running()?;
            if counter.count(self).await? >= expected && setup.db.all_ended(None).await? {
                return Ok(());
            }
            if start.elapsed() > self.sizes.deadline {
                bail!(
                    "not all delivered within {:?} ({}); end of the daemon's log:\n{}",
                    self.sizes.deadline,
                    setup.db.states().await?,
                    daemon.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `producer-end-to-end`: 16 producers commit the events one per transaction as
    /// fast as they can while the daemon delivers them, against the same daemon's
    /// drain of as many events committed before it starts.
    pub(crate) async fn end_to_end(&self) -> Result<Vec<Metric>> {
        let events = self.sizes.end_to_end_events;

        let setup = self
            .setup("end-to-end-drain", &[self.fast_partner()], "")
            .await?;
        setup
            .db
            .seed_events(events, Patients::Distinct, "drain-", false)
            .await?;
        setup.db.settle().await?;
        let drain = self
            .run_dispatcher(&setup, 1, Arrivals::Nginx, Until::all(events), None)
            .await?;
        self.finish(setup).await?;

        let setup = self
            .setup("end-to-end-produced", &[self.fast_partner()], "")
            .await?;
        let producer = Producer::connect(&setup.db.url, END_TO_END_PRODUCERS).await?;
        let mut daemon = self.start_daemon(&setup, 0, None)?;
        self.wait_delivering(&setup, &mut daemon).await?;
        let mut excluded = producer.backends.clone();
        excluded.push(setup.db.backend);
        setup.db.reset_statement_stats(&self.cluster).await?;
        let mut counter = ArrivalCounter::start(self, Arrivals::Nginx).await?;
        let wal_start = self.cluster.wal_bytes().await?;
        let window = CpuWindow::open(self, &excluded);
        let daemon_cpu_start = daemon.cpu_seconds();
        let produced = producer
            .flat_out("dispatcher.outbox", Stop::Events(events), "end-to-end-")
            .await?;
        self.wait_delivered(&setup, &mut daemon, &mut counter, events)
            .await?;
        let cpu = window.close();
        let wal_bytes = self.cluster.wal_bytes().await? - wal_start;
        let daemon_cpu = daemon.cpu_seconds() - daemon_cpu_start;
        daemon.stop(Duration::from_secs(30)).await?;
        setup.db.expect_no_failures().await?;
        let (delivered, last_end) = setup.db.delivered(None).await?;
        // The readiness check's event was delivered before the clock started.
        if delivered - 1 != events as i64 {
            bail!("end-to-end: {} of {events} delivered", delivered - 1);
        }
        self.dump_statements(&setup).await?;
        self.finish(setup).await?;

        let seconds = last_end - produced.started_unix;
        let end_to_end_rate = events as f64 / seconds;
        let per_delivery = |cpu: f64| cpu * 1000.0 / events.max(1) as f64;
        let mut metrics = vec![
            Metric::new("end_to_end.deliveries_per_s", "/s", end_to_end_rate),
            Metric::new("end_to_end.seconds", "s", seconds),
            Metric::new(
                "end_to_end.commits_per_s",
                "/s",
                produced.commits as f64 / produced.seconds,
            ),
            Metric::new("end_to_end.producers", "", END_TO_END_PRODUCERS as f64),
            Metric::new("end_to_end.daemon_cpu_s", "s", daemon_cpu),
            Metric::new("end_to_end.postgres_cpu_s", "s", cpu.postgres),
            Metric::new(
                "end_to_end.daemon_cpu_ms_per_delivery",
                "ms",
                per_delivery(daemon_cpu),
            ),
            Metric::new(
                "end_to_end.postgres_cpu_ms_per_delivery",
                "ms",
                per_delivery(cpu.postgres),
            ),
            Metric {
                name: "end_to_end.wal_bytes_per_delivery".into(),
                ..wal_per_delivery(wal_bytes, events as f64)
            },
        ];
        metrics.extend(drain.metrics("drain"));
        metrics.push(
            Metric::new(
                "end_to_end_to_drain",
                "x",
                end_to_end_rate / drain.per_second(),
            )
            .target(Target::AtLeast(0.8)),
        );
        Ok(metrics)
    }
}

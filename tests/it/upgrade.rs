//! Upgrades: ops run `dispatcher migrate` beside the enrollment flow and a daemon that
//! keeps delivering, on a database with a long history. No insert fails and no delivery
//! stops while the schema changes; a long transaction makes `migrate` give up and say
//! so, rather than stop every insert behind it; a migrate cut short is finished by the
//! next one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use dispatcher::config::Config;
use dispatcher::store::{db, queue};
use tokio::task::JoinHandle;

/// The migration files as they shipped, `(version, text)` in order: `NNNN_name.sql`,
/// not the `.online.sql` that `migrate` applies instead today.
fn shipped_migrations() -> Vec<(i32, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<(i32, String)> = std::fs::read_dir(&dir)
        .expect("migrations/")
        .map(|entry| entry.expect("a migration file").path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".sql") && !name.ends_with(".online.sql")
        })
        .map(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let version = name[..4].parse().expect("NNNN_name.sql");
            (
                version,
                std::fs::read_to_string(&path).expect("read migration"),
            )
        })
        .collect();
    files.sort();
    files
}

/// A database as the dispatcher that shipped migration `version` left it: every shipped
/// file up to it, applied in one transaction, as that dispatcher's `migrate` did. A file
/// written for today's runner, whose index builds run concurrently outside a
/// transaction, is applied with plain builds, which leave the same schema.
async fn database_at(version: i32) -> TestDb {
    let db = TestDb::unmigrated().await;
    let mut sql = String::from("BEGIN;\n");
    for (shipped, text) in shipped_migrations() {
        if shipped <= version {
            sql.push_str(&text.replace(" CONCURRENTLY", ""));
            sql.push_str(&format!(
                "\n;INSERT INTO dispatcher.schema_migrations (version) VALUES ({shipped});\n"
            ));
        }
    }
    sql.push_str("COMMIT;");
    db.client
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("migrate to {version} the old way: {e}"));
    db
}

/// What the schema holds, one line per column, constraint, index, trigger, function and
/// sequence, to compare two databases by.
async fn schema_of(db: &TestDb) -> Vec<String> {
    let rows = db
        .client
        .query(
            "SELECT format('column %s.%s %s %s %s', table_name, column_name, data_type, is_nullable, column_default)
             FROM information_schema.columns WHERE table_schema = 'dispatcher'
             UNION ALL
             SELECT format('constraint %s %s', conrelid::regclass, pg_get_constraintdef(oid))
             FROM pg_constraint WHERE connamespace = 'dispatcher'::regnamespace
             UNION ALL
             SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'dispatcher'
             UNION ALL
             SELECT format('trigger %s', pg_get_triggerdef(t.oid))
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
             WHERE c.relnamespace = 'dispatcher'::regnamespace AND NOT t.tgisinternal
             UNION ALL
             SELECT format('function %s', pg_get_functiondef(oid))
             FROM pg_proc WHERE pronamespace = 'dispatcher'::regnamespace
             UNION ALL
             SELECT format('sequence %s %s %s %s %s', c.relname, s.seqmin, s.seqmax, s.seqstart, c.relacl)
             FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
             WHERE c.relnamespace = 'dispatcher'::regnamespace
             ORDER BY 1",
            &[],
        )
        .await
        .expect("read the schema");
    rows.iter().map(|row| row.get(0)).collect()
}

/// The versions `migrate` applies from `first` on: every shipped migration from it (a
/// number may be missing while work beside it holds it).
fn versions_from(first: i32) -> Vec<i32> {
    shipped_migrations()
        .into_iter()
        .map(|(version, _)| version)
        .filter(|version| *version >= first)
        .collect()
}

async fn versions(db: &TestDb) -> Vec<i32> {
    let rows = db
        .client
        .query(
            "SELECT version FROM dispatcher.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("read schema_migrations");
    rows.iter().map(|row| row.get(0)).collect()
}

/// The dispatcher's indexes that an interrupted concurrent build left INVALID.
async fn invalid_indexes(db: &TestDb) -> Vec<String> {
    let rows = db
        .client
        .query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE c.relnamespace = 'dispatcher'::regnamespace AND NOT i.indisvalid
             ORDER BY 1",
            &[],
        )
        .await
        .expect("read pg_index");
    rows.iter().map(|row| row.get(0)).collect()
}

async fn migrate(config: &std::path::Path, args: &[&str]) -> Output {
    let mut command = dispatcher(config);
    command.arg("migrate").args(args);
    finish(command).await
}

/// A long history, fast: `events` delivered events of long ago, each to four partners,
/// their bodies erased by retention. Written as a bulk load (foreign keys and triggers
/// off for this session), with ids in order as the daemon's are.
async fn seed_history(db: &TestDb, events: i64) {
    let loader = db.connect().await;
    loader
        .batch_execute("SET session_replication_role = replica")
        .await
        .expect("bulk load mode");
    loader
        .execute(
            "INSERT INTO dispatcher.outbox (event_name, event, event_erased_at, created_at, routed_at)
             SELECT $1, NULL, now() - interval '20 days', now() - interval '60 days', now() - interval '60 days'
             FROM generate_series(1, $2::int8)",
            &[&ENROLLMENT, &events],
        )
        .await
        .expect("seed the outbox");
    loader
        .batch_execute(
            "INSERT INTO dispatcher.deliveries
                 (id, event_id, partner, event_name, patient_id, state, attempt_count,
                  last_status, created_at, ended_at)
             SELECT lpad(to_hex(o.id * 4 + p.n), 32, '0')::uuid, o.id, p.partner, o.event_name,
                    'history-' || o.id, 'delivered', 1, 200, o.created_at, o.created_at
             FROM dispatcher.outbox o,
                  (VALUES (0, 'acme'), (1, 'globex'), (2, 'initech'), (3, 'umbrella')) AS p(n, partner);
             ANALYZE dispatcher.outbox, dispatcher.deliveries",
        )
        .await
        .expect("seed the deliveries");
}

/// What the enrollment flow does all day: one insert per transaction, here with a
/// `lock_timeout` of 1s, so an insert the migration holds up longer fails, and is
/// counted.
struct EnrollmentFlow {
    stop: Arc<AtomicBool>,
    producers: Vec<JoinHandle<Tally>>,
}

/// What a producer or the daemon did: how many commits, and every failure.
#[derive(Debug, Default)]
struct Tally {
    done: u64,
    failures: Vec<String>,
}

impl EnrollmentFlow {
    async fn start(db: &TestDb, producers: usize) -> EnrollmentFlow {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for producer in 0..producers {
            let client = db.connect().await;
            client
                .batch_execute("SET lock_timeout = '1s'")
                .await
                .expect("set lock_timeout");
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::SeqCst) {
                    let event = enrollment_event(&format!("upgrade-{producer}-{}", tally.done));
                    match client
                        .execute(
                            "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2)",
                            &[&ENROLLMENT, &event],
                        )
                        .await
                    {
                        Ok(_) => tally.done += 1,
                        Err(error) => tally.failures.push(format!("{error:?}")),
                    }
                    // A steady flow, not a flood the daemon could never keep up with.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tally
            }));
        }
        EnrollmentFlow {
            stop,
            producers: tasks,
        }
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Tally::default();
        for producer in self.producers {
            let tally = producer.await.expect("producer");
            all.done += tally.done;
            all.failures.extend(tally.failures);
        }
        all
    }
}

/// The daemon of the release before, delivering while `migrate` runs beside it: it routes
/// new events, claims due deliveries and records their results with the daemon's own
/// statements (`store::outbox`, `store::queue`), and records each claim as delivered
/// instead of sending it (the partner is not what an upgrade puts at risk; the new
/// daemon sends for real afterwards). This release's `dispatcher run` refuses a database
/// at 0005, and a binary of that release cannot be built here, so this is that daemon's
/// side of the database. Its session waits at most 1s for a lock, like the producers', so
/// a write the migration holds up fails and is counted, rather than only taking long.
struct OldDaemon {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Tally>,
}

impl OldDaemon {
    async fn start(config: &TestConfig, db: &TestDb) -> OldDaemon {
        let (mut client, loaded) = OldDaemon::session(config, db).await;
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::SeqCst) {
                    match deliver_once(&mut client, &loaded).await {
                        Ok(recorded) => tally.done += recorded,
                        Err(error) => tally.failures.push(format!("{error:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tally
            }
        });
        OldDaemon { stop, task }
    }

    /// A connection as the old daemon's pool gives it, and its configuration.
    async fn session(config: &TestConfig, db: &TestDb) -> (deadpool_postgres::Client, Config) {
        let loaded = Config::parse(&config.text(db), "upgrade", None, |_| None).expect("config");
        let client = db::pool(&loaded.database, loaded.database.pool_limits())
            .expect("pool")
            .get()
            .await
            .expect("a pooled connection");
        client
            .batch_execute("SET lock_timeout = '1s'")
            .await
            .expect("set lock_timeout");
        (client, loaded)
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the old daemon's task")
    }
}

/// Routing as the releases before migration 0013 did it (every event of the test's one
/// program goes to acme): each routed event marked in its own row. Run after 0013 too,
/// as an old daemon beside the migration would; the new daemon then routes those events
/// again, and the (event, partner) key makes that a no-op.
async fn route_as_released(
    client: &deadpool_postgres::Client,
    config: &Config,
) -> Result<u64, tokio_postgres::Error> {
    let partner = &config.partners[0].name;
    client
        .execute(
            "WITH events AS (
                 UPDATE dispatcher.outbox SET routed_at = now()
                 WHERE id IN (SELECT id FROM dispatcher.outbox WHERE routed_at IS NULL
                              ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
                 RETURNING id, event_name, event -> 'patient' ->> 'id' AS patient_id
             )
             INSERT INTO dispatcher.deliveries (id, event_id, partner, event_name, patient_id, state, due_at)
             SELECT gen_random_uuid(), id, $1, event_name, patient_id, 'pending', now() FROM events
             ON CONFLICT DO NOTHING",
            &[partner],
        )
        .await
}

/// One round of the daemon's work: route, claim, record. How many deliveries it recorded.
async fn deliver_once(
    client: &mut deadpool_postgres::Client,
    config: &Config,
) -> Result<u64, tokio_postgres::Error> {
    route_as_released(client, config).await?;
    let claim_token = uuid::Uuid::new_v4();
    let claimed = claim_as_released(client, claim_token).await?;
    record_as_released(client, claim_token, &claimed).await
}

/// The claim as the releases before migration 0020 made it: the delivery moved to
/// `in_flight` under the claim's token, the lease's end in `due_at`, taken from any due
/// pending delivery. After 0020, its trigger stores such a claim as this version does and
/// leaves out a delivery this version has claimed.
async fn claim_as_released(
    client: &tokio_postgres::Client,
    claim_token: uuid::Uuid,
) -> Result<Vec<uuid::Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            "UPDATE dispatcher.deliveries
             SET state = 'in_flight', due_at = now() + interval '60 seconds', claim_token = $1
             WHERE id IN (SELECT id FROM dispatcher.deliveries
                          WHERE state = 'pending' AND due_at <= now()
                          ORDER BY due_at LIMIT 100 FOR UPDATE SKIP LOCKED)
             RETURNING id",
            &[&claim_token],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The record of a 200 as the releases before migration 0020 wrote it, by the claim's
/// token. How many it recorded.
async fn record_as_released(
    client: &deadpool_postgres::Client,
    claim_token: uuid::Uuid,
    claimed: &[uuid::Uuid],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "WITH recorded AS (
                 UPDATE dispatcher.deliveries
                 SET state = 'delivered', due_at = NULL, claim_token = NULL, ended_at = now(),
                     attempt_count = attempt_count + 1, last_status = 200
                 WHERE id = ANY($1) AND claim_token = $2
                 RETURNING id, attempt_count
             )
             INSERT INTO dispatcher.attempts (delivery_id, number, started_at, duration_ms, http_status)
             SELECT id, attempt_count, now(), 1, 200 FROM recorded",
            &[&claimed, &claim_token],
        )
        .await
}

/// The index on `deliveries` whose concurrent build waits for the transactions writing
/// to it to end, if any (its builder and its oid).
async fn build_waiting_for_writers(client: &tokio_postgres::Client) -> Option<(i32, i64)> {
    client
        .query_opt(
            "SELECT pid, index_relid::int8 FROM pg_stat_progress_create_index
             WHERE relid = 'dispatcher.deliveries'::regclass
               AND phase = 'waiting for writers before build'
             LIMIT 1",
            &[],
        )
        .await
        .expect("read pg_stat_progress_create_index")
        .map(|row| (row.get(0), row.get(1)))
}

/// Polls until a concurrent build on `deliveries` waits for its writers; which one.
async fn wait_for_build(db: &TestDb) -> (i32, i64) {
    let started = std::time::Instant::now();
    loop {
        if let Some(build) = build_waiting_for_writers(&db.client).await {
            return build;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no index build started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrating_a_long_history_stops_neither_enrollment_nor_delivery() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    // A database of the release that shipped 0005, with 1,000,000 deliveries.
    let db = database_at(5).await;
    seed_history(&db, 250_000).await;
    assert_eq!(db.count_deliveries(&Deliveries::all()).await, 1_000_000);
    let path = config.write(&db);

    let enrollment = EnrollmentFlow::start(&db, 4).await;
    let old_daemon = OldDaemon::start(&config, &db).await;
    db.wait_for_count(
        "SELECT least(count(*), 1) FROM dispatcher.deliveries WHERE state = 'delivered' AND partner = 'acme' AND patient_id LIKE 'upgrade-%'",
        1,
    )
    .await;

    // A write of the daemon's to `deliveries`, slow to commit: the first concurrent build
    // waits for it, in plain sight in pg_stat_progress_create_index, until it commits.
    let writer = db.connect().await;
    writer
        .batch_execute("BEGIN; LOCK TABLE dispatcher.deliveries IN ROW EXCLUSIVE MODE")
        .await
        .expect("hold a write lock");
    let during_the_build = async {
        let build = wait_for_build(&db).await;
        // The daemon's work goes on meanwhile: an event is routed, claimed and recorded
        // (by this round or the old daemon's), and the ANALYZE it runs after a burst
        // skips the table the build holds rather than wait for it.
        let (mut client, loaded) = OldDaemon::session(&config, &db).await;
        db.insert_event(ENROLLMENT, &enrollment_event("during-the-build"))
            .await;
        let delivered = "SELECT count(*) FROM dispatcher.deliveries
                         WHERE patient_id = 'during-the-build' AND state = 'delivered'";
        let started = std::time::Instant::now();
        while db.count(delivered).await == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "nothing was delivered while the index was built"
            );
            deliver_once(&mut client, &loaded)
                .await
                .expect("a round of the daemon's work during the build");
        }
        queue::refresh_statistics(&client)
            .await
            .expect("ANALYZE during the build");
        assert_eq!(
            build_waiting_for_writers(&db.client).await,
            Some(build),
            "the build went on before the daemon's work was done"
        );
        writer.batch_execute("COMMIT").await.expect("commit");
    };
    let (migrated, ()) = tokio::join!(migrate(&path, &[]), during_the_build);

    let old_daemon = old_daemon.stop().await;
    let enrollment = enrollment.stop().await;
    assert!(migrated.status.success(), "migrate failed:\n{migrated}");
    assert!(
        migrated
            .stdout
            .contains(&format!("applied migrations {:?}", versions_from(6))),
        "{migrated}"
    );
    assert_eq!(
        enrollment.failures,
        Vec::<String>::new(),
        "inserts failed during the upgrade ({} committed)",
        enrollment.done
    );
    assert_eq!(
        old_daemon.failures,
        Vec::<String>::new(),
        "the daemon's writes failed during the upgrade ({} recorded)",
        old_daemon.done
    );
    eprintln!(
        "during the upgrade: {} events inserted, {} deliveries recorded",
        enrollment.done, old_daemon.done
    );
    assert_eq!(invalid_indexes(&db).await, Vec::<String>::new());

    // The new daemon takes over on the new schema and delivers what is left, for real.
    let _daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("after-the-upgrade"))
        .await;
    partner.wait_for_requests(1).await;
    db.wait_for_count("SELECT dispatcher.unrouted_events()", 0)
        .await;
    db.wait_for_count(
        "SELECT count(*) FROM dispatcher.deliveries WHERE state <> 'delivered'",
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_enrollment_transaction_makes_migrate_give_up_and_say_so_instead_of_stopping_inserts(
) {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = database_at(5).await;
    let path = config.write(&db);

    // An enrollment transaction that inserted its event and is slow to commit.
    let long = db.connect().await;
    long.batch_execute("BEGIN").await.expect("begin");
    long.execute(
        "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2)",
        &[&ENROLLMENT, &enrollment_event("slow-to-commit")],
    )
    .await
    .expect("insert");
    let long_pid: i32 = long
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);

    // The rest of the enrollment flow goes on, while migrate tries and gives up.
    let enrollment = EnrollmentFlow::start(&db, 2).await;
    let refused = migrate(&path, &["--lock-timeout", "200ms", "--lock-retries", "1"]).await;
    let enrollment = enrollment.stop().await;

    assert!(!refused.status.success(), "{refused}");
    let expected = format!(
        "migration 0006 could not take its lock on dispatcher.outbox within 200ms (2 tries): \
         a long transaction holds it (backend pid {long_pid} in pg_stat_activity); try again"
    );
    assert!(refused.stderr.contains(&expected), "{refused}");
    assert_eq!(
        enrollment.failures,
        Vec::<String>::new(),
        "inserts waited behind the migration ({} committed)",
        enrollment.done
    );
    assert!(enrollment.done > 0, "no insert went through meanwhile");
    assert_eq!(versions(&db).await, vec![1, 2, 3, 4, 5], "0006 rolled back");

    // Once that transaction ends, the same command goes through.
    long.batch_execute("COMMIT").await.expect("commit");
    let migrated = migrate(&path, &["--lock-timeout", "200ms"]).await;
    assert!(migrated.status.success(), "{migrated}");
    assert_eq!(versions(&db).await, versions_from(1));
    assert_eq!(db.count_events().await, enrollment.done as i64 + 1);
}

/// Migration 0017 validates its constraint over the whole history after adding it: a row
/// a hand edit left claimed but not in flight stops it there, with the constraint added.
/// Once ops mend the row, the next `migrate` runs 0017 again from its start and finishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_validation_stopped_by_a_hand_edited_row_is_finished_by_the_next_migrate() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = database_at(16).await;
    let path = config.write(&db);
    db.client
        .execute(
            "INSERT INTO dispatcher.deliveries
                 (id, event_id, partner, event_name, patient_id, state, due_at, claim_token)
             VALUES (gen_random_uuid(), 1, 'acme', $1, 'p-1', 'pending', now(), gen_random_uuid())",
            &[&ENROLLMENT],
        )
        .await
        .expect("a hand-edited delivery: pending, yet claimed");

    let stopped = migrate(&path, &[]).await;
    assert!(!stopped.status.success(), "{stopped}");
    assert!(
        stopped.stderr.contains("migration 0017 failed")
            && stopped.stderr.contains("deliveries_claimed_in_flight"),
        "{stopped}"
    );
    assert_eq!(versions(&db).await, versions_from(1)[..16].to_vec());

    db.client
        .execute(
            "UPDATE dispatcher.deliveries SET claim_token = NULL WHERE state = 'pending'",
            &[],
        )
        .await
        .expect("mend the row");
    let finished = migrate(&path, &[]).await;
    assert!(finished.status.success(), "{finished}");
    assert_eq!(versions(&db).await, versions_from(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_build_cut_short_is_finished_by_the_next_migrate() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = database_at(6).await;
    let path = config.write(&db);

    // A daemon's write to `deliveries`, slow to commit: the concurrent build waits for it.
    let writer = db.connect().await;
    writer
        .batch_execute("BEGIN; LOCK TABLE dispatcher.deliveries IN ROW EXCLUSIVE MODE")
        .await
        .expect("hold a write lock");
    // Someone cancels the build while it waits (ops, or a statement that outlived its
    // welcome); a crash or a lost connection leaves the same INVALID index.
    let cancel = async {
        let started = std::time::Instant::now();
        loop {
            let waiting = db
                .client
                .query_opt(
                    "SELECT p.pid FROM pg_stat_progress_create_index p
                     JOIN pg_class c ON c.oid = p.index_relid
                     WHERE c.relname = 'deliveries_pending'",
                    &[],
                )
                .await
                .expect("read pg_stat_progress_create_index");
            if let Some(row) = waiting {
                let pid: i32 = row.get(0);
                db.client
                    .execute("SELECT pg_cancel_backend($1)", &[&pid])
                    .await
                    .expect("cancel the build");
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the build never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (cut_short, ()) = tokio::join!(migrate(&path, &[]), cancel);

    assert!(!cut_short.status.success(), "{cut_short}");
    assert!(
        cut_short.stderr.contains("migration 0007 failed")
            && cut_short
                .stderr
                .contains("canceling statement due to user request"),
        "{cut_short}"
    );
    assert_eq!(versions(&db).await, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(invalid_indexes(&db).await, vec!["deliveries_pending"]);

    writer.batch_execute("COMMIT").await.expect("commit");
    let finished = migrate(&path, &[]).await;
    assert!(finished.status.success(), "{finished}");
    assert!(
        finished
            .stdout
            .contains(&format!("applied migrations {:?}", versions_from(7))),
        "{finished}"
    );
    assert!(
        format!("{}{}", finished.stdout, finished.stderr).contains("INVALID"),
        "the rebuild is not logged:\n{finished}"
    );
    assert_eq!(invalid_indexes(&db).await, Vec::<String>::new());
    assert_eq!(versions(&db).await, versions_from(1));
    let latest = versions_from(1).last().copied().unwrap_or(7);
    assert_eq!(
        schema_of(&db).await,
        schema_of(&database_at(latest).await).await,
        "the schema differs from the one the shipped migrations built"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_database_gets_the_schema_the_shipped_migrations_built() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let migrated = TestDb::migrated(&config).await;
    let latest = shipped_migrations()
        .last()
        .map(|(v, _)| *v)
        .expect("a migration");
    let shipped = database_at(latest).await;

    let schema = schema_of(&migrated).await;
    assert!(schema
        .iter()
        .any(|line| line.contains("deliveries_pending")));
    assert_eq!(schema, schema_of(&shipped).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_rolled_back_to_end_a_deadlock_is_tried_again() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    // 0003 locks `outbox`, then `deliveries`, then `attempts`, each ACCESS EXCLUSIVE.
    let db = database_at(2).await;
    let path = config.write(&db);

    // A daemon's transaction that recorded an attempt and is about to touch the outbox.
    // PostgreSQL ends a deadlock by rolling back the transaction whose `deadlock_timeout`
    // runs out first once the cycle is closed: this one's waits far longer than the
    // migration's (the default 1s), so the migration is the one rolled back.
    let daemon = db.connect().await;
    daemon
        .batch_execute(
            "SET deadlock_timeout = '1h'; BEGIN;
             LOCK TABLE dispatcher.attempts IN ROW EXCLUSIVE MODE",
        )
        .await
        .expect("hold a write lock on attempts");
    // A support reader on `deliveries` keeps the migration waiting there, with the outbox
    // locked, until the daemon's transaction waits for the outbox.
    let reader = db.connect().await;
    reader
        .batch_execute("BEGIN; LOCK TABLE dispatcher.deliveries IN ACCESS SHARE MODE")
        .await
        .expect("hold a read lock on deliveries");

    let deadlock = async {
        wait_for_lock_wait(
            &db,
            "application_name = 'helparound-dispatcher migrate'",
            "deliveries",
        )
        .await;
        let daemon_pid: i32 = daemon
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let (touched, ()) = tokio::join!(
            daemon.batch_execute("LOCK TABLE dispatcher.outbox IN ROW EXCLUSIVE MODE"),
            async {
                wait_for_lock_wait(&db, &format!("pid = {daemon_pid}"), "outbox").await;
                // The migration goes on to `attempts`, which the daemon holds: a deadlock.
                reader
                    .batch_execute("COMMIT")
                    .await
                    .expect("commit the reader");
            }
        );
        // The migration was rolled back, so the daemon's transaction goes on and ends.
        touched.expect("the daemon's transaction is not the one rolled back");
        daemon
            .batch_execute("COMMIT")
            .await
            .expect("commit the daemon's transaction");
    };
    let (migrated, ()) = tokio::join!(migrate(&path, &["--lock-timeout", "1min"]), deadlock);

    assert!(migrated.status.success(), "{migrated}");
    assert!(
        migrated.stderr.contains("to end a deadlock"),
        "the migration was not rolled back by a deadlock:\n{migrated}"
    );
    assert!(
        migrated.stderr.contains("dispatcher.attempts"),
        "the lock it waited for is not named:\n{migrated}"
    );
    assert_eq!(versions(&db).await, versions_from(1));
}

/// Polls until the session `who` (a condition on `pg_stat_activity`) waits for a lock on
/// `dispatcher.table`.
async fn wait_for_lock_wait(db: &TestDb, who: &str, table: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE a.{who} AND NOT l.granted AND l.relation = 'dispatcher.{table}'::regclass"
    );
    db.wait_for_count(&sql, 1).await;
}

/// A connection as a daemon from before 0020, under a role granted what that release's
/// `db grants` gave it on `deliveries`, and nothing on `dispatcher.leases` (the grants are
/// run again only after `migrate`).
async fn old_daemon_role(db: &TestDb) -> tokio_postgres::Client {
    let role = format!(
        "old_daemon_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA dispatcher TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON dispatcher.deliveries TO {role};"
        ))
        .await
        .expect("the old daemon's role");
    db.connect_as(&role).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_from_before_0020_beside_this_one_never_sends_what_this_one_claimed() {
    // An upgrade under way: this version's daemon claims as 0020 stores it, while one
    // from before still claims by writing `in_flight`, from any due pending delivery, and
    // still cancels and routes as it did.
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    for patient in ["first", "second"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    let mut router = Router::of(&config, &db).await;
    router.route().await;
    let ours = router.claim(&[]).await;
    assert_eq!(ours.len(), 2);
    db.insert_event(ENROLLMENT, &enrollment_event("third"))
        .await;
    router.route().await;
    let old = old_daemon_role(&db).await;

    // Its claim takes only what nobody had claimed.
    let theirs_token = uuid::Uuid::new_v4();
    let theirs = claim_as_released(&old, theirs_token)
        .await
        .expect("the old daemon's claim");
    assert_eq!(theirs.len(), 1, "only the delivery nobody had claimed");
    assert!(ours.iter().all(|claimed| !theirs.contains(&claimed.id)));
    // Its support page's cancel leaves a delivery on the wire alone.
    let cancelled = old
        .execute(
            "UPDATE dispatcher.deliveries
             SET state = 'cancelled', due_at = NULL, claim_token = NULL, ended_at = now()
             WHERE id = $1 AND state IN ('pending', 'waiting', 'rejected', 'dead', 'invalid')",
            &[&ours[0].id],
        )
        .await
        .expect("the old daemon's cancel");
    assert_eq!(cancelled, 0, "a delivery in flight is not cancelled");
    assert_eq!(db.states_of("first").await, ["in_flight"]);
    // Its routing's claim as it inserts is left for a claim, due now: its router sends
    // only what comes back `in_flight`.
    let routed = old
        .query_one(
            "INSERT INTO dispatcher.deliveries
                 (id, event_id, partner, event_name, patient_id, state, due_at, claim_token)
             VALUES (gen_random_uuid(), 1000, 'acme', $1, 'fourth', 'in_flight',
                     now() + interval '60 seconds', gen_random_uuid())
             RETURNING state",
            &[&ENROLLMENT],
        )
        .await
        .expect("the old daemon's routing");
    assert_eq!(routed.get::<_, &str>(0), "pending");
    assert_eq!(db.states_of("fourth").await, ["pending"]);

    // Its claim is stored as this version's are, and its lease can be rescued.
    db.client
        .batch_execute(&format!(
            "UPDATE dispatcher.deliveries SET leased_until = now() - interval '1 second'
             WHERE claim_token = '{theirs_token}';
             UPDATE dispatcher.leases SET lease_end = now() - interval '1 second'
             WHERE claim_token = '{theirs_token}'"
        ))
        .await
        .expect("the old daemon dies, its lease runs out");
    let rescued = queue::rescue_expired(&mut router.client, Duration::from_secs(60), 5, 100)
        .await
        .expect("rescue");
    assert_eq!(
        rescued.iter().map(|lost| lost.id).collect::<Vec<_>>(),
        theirs,
        "the old daemon's lost claim is rescued by this version"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_in_flight_through_0020_are_recorded_by_their_daemon_or_rescued() {
    // Two deliveries in flight under a daemon from before 0020, one pending behind them,
    // when 0020 runs: the one its daemon answers is recorded, the one whose daemon died is
    // rescued when its lease runs out, the pending one is left for a claim.
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = database_at(19).await;
    let path = config.write(&db);
    let (old, loaded) = OldDaemon::session(&config, &db).await;
    let mut claims = Vec::new();
    for patient in ["answered", "lost"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
        route_as_released(&old, &loaded).await.expect("route");
        let token = uuid::Uuid::new_v4();
        let claimed = claim_as_released(&old, token).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        claims.push((token, claimed));
    }
    db.insert_event(ENROLLMENT, &enrollment_event("pending"))
        .await;
    route_as_released(&old, &loaded).await.expect("route");

    let migrated = migrate(&path, &[]).await;
    assert!(migrated.status.success(), "{migrated}");

    for (patient, state) in [
        ("answered", "in_flight"),
        ("lost", "in_flight"),
        ("pending", "pending"),
    ] {
        assert_eq!(db.states_of(patient).await, [state], "{patient}");
    }
    let (answered, lost) = (&claims[0], &claims[1]);
    let recorded = record_as_released(&old, answered.0, &answered.1)
        .await
        .expect("the old daemon records its answer");
    assert_eq!(recorded, 1);
    db.client
        .batch_execute(
            "UPDATE dispatcher.deliveries SET leased_until = now() - interval '1 second'
             WHERE claim_token IS NOT NULL;
             UPDATE dispatcher.leases SET lease_end = now() - interval '1 second'",
        )
        .await
        .expect("the leases run out");
    let mut router = Router::of(&config, &db).await;
    let rescued = queue::rescue_expired(&mut router.client, Duration::from_secs(60), 5, 100)
        .await
        .expect("rescue");

    assert_eq!(
        rescued.iter().map(|lost| lost.id).collect::<Vec<_>>(),
        lost.1,
        "the lost claim is rescued, the answered one is not"
    );
    for (patient, state) in [
        ("answered", "delivered"),
        ("lost", "pending"),
        ("pending", "pending"),
    ] {
        assert_eq!(db.states_of(patient).await, [state], "{patient}");
    }
    assert_eq!(db.count("SELECT count(*) FROM dispatcher.leases").await, 0);
}

/// A daemon from before migration 0024, beside this one during an upgrade, resends a
/// delivery that ended at its first attempt with its own statement, which marks only rows
/// of `attempts`: the first attempt, kept in the delivery's row, is marked as the one the
/// resend came after all the same, so the chart does not count it as retried and the
/// timeline shows where the round ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_from_before_0024_resending_marks_the_first_attempt_in_the_row() {
    let partner = TestPartner::start("acme", |_| {
        Reply::status(400, r#"{"errorMessage": "unknown program"}"#)
    })
    .await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let daemon = Daemon::start(&config, &db);
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    db.wait_for_state("rejected", 1).await;
    drop(daemon);
    let [rejected] = &db.ids_in_state("rejected").await[..] else {
        panic!("one delivery, rejected")
    };

    // 0023's resend as released: the delivery put back, its last attempt's row marked.
    db.client
        .batch_execute(&format!(
            "UPDATE dispatcher.deliveries
             SET state = 'pending', due_at = now(), ended_at = NULL,
                 attempts_before_resend = attempt_count, answers_erased_at = NULL,
                 last_status = NULL, last_error = NULL
             WHERE id = '{rejected}';
             UPDATE dispatcher.attempts SET resent_after = true
             WHERE delivery_id = '{rejected}' AND number = 1;"
        ))
        .await
        .expect("the old daemon's resend");

    let attempts = db.attempts(rejected).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["resent_after"], true, "{attempts:?}");
}

/// A history of erased events, as the release before 0025 left it: the first pass after
/// `migrate` moves every ended delivery of them to the archive, where support reads them,
/// and leaves an event whose body a daemon from before erased under a delivery still
/// pending (it ends `dead` when claimed, and moves then).
#[tokio::test(flavor = "multi_thread")]
async fn a_history_erased_before_0025_is_archived_by_the_first_pass_but_what_is_unfinished() {
    let partner = TestPartner::accepting("acme").await;
    let config = TestConfig::new().partner(&partner, &[PROGRAM]);
    let db = database_at(24).await;
    seed_history(&db, 250).await;
    let unfinished: i64 = db
        .client
        .query_one(
            "WITH erased AS (
                 INSERT INTO dispatcher.outbox (event_name, event, event_erased_at, created_at, routed_at)
                 VALUES ($1, NULL, now() - interval '20 days', now() - interval '60 days',
                         now() - interval '60 days')
                 RETURNING id
             )
             INSERT INTO dispatcher.deliveries
                 (id, event_id, partner, event_name, patient_id, state, due_at, created_at)
             SELECT gen_random_uuid(), id, 'acme', $1, 'history-pending', 'pending', now(),
                    now() - interval '60 days'
             FROM erased
             RETURNING event_id",
            &[&ENROLLMENT],
        )
        .await
        .expect("a pending delivery whose body is erased")
        .get(0);
    let path = config.write(&db);
    let migrated = migrate(&path, &[]).await;
    assert!(migrated.status.success(), "{migrated}");

    let mut prune = dispatcher(&path);
    prune.arg("prune");
    let pruned = finish(prune).await;

    assert!(
        pruned.status.success()
            && pruned
                .stdout
                .contains("archived 1000 deliveries and dropped 0 archived weeks"),
        "{pruned}"
    );
    assert_eq!(db.count_deliveries(&Deliveries::all()).await, 1);
    assert_eq!(db.count_events().await, 1, "the unfinished event stays");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM dispatcher.outbox WHERE id = {unfinished}"
        ))
        .await,
        1
    );
    let archived: String = db
        .client
        .query_one(
            "SELECT id::text FROM dispatcher.archived_deliveries
             WHERE patient_id = 'history-7' AND partner = 'globex'",
            &[],
        )
        .await
        .expect("an archived delivery of the history")
        .get(0);
    let mut show = dispatcher(&path);
    show.args(["deliveries", "show", &archived]);
    let shown = finish(show).await;
    assert!(
        shown.status.success() && shown.stdout.contains("delivered"),
        "{shown}"
    );
}

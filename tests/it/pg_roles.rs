//! The PostgreSQL roles of README's "Setting up PostgreSQL": an owner migrates, `dispatcher
//! db grants` gives the others what they need, and each part runs under its own role with
//! nothing more: the daemon delivers (woken by the enrollment flow's insert, so the
//! wake-up trigger works for a role that may only insert), the enrollment flow inserts
//! and can read nothing, support's CLI reads and audits but cannot resend, the daemon's
//! role cannot change the audit trail, and it archives and drops weeks of the archive
//! through the owner's functions.

use std::time::Duration;

use crate::support::*;

struct Roles {
    owner: String,
    daemon: String,
    producer: String,
    support: String,
}

/// `db`'s URL, connecting as `role` instead (the test cluster trusts local connections).
async fn create_roles(db: &TestDb) -> Roles {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let roles = Roles {
        owner: format!("dispatcher_owner_{tag}"),
        daemon: format!("dispatcher_{tag}"),
        producer: format!("enrollment_{tag}"),
        support: format!("support_{tag}"),
    };
    let database = db.url.rsplit('/').next().expect("database name");
    for role in [&roles.owner, &roles.daemon, &roles.producer, &roles.support] {
        db.client
            .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
            .await
            .expect("create role");
    }
    db.client
        .batch_execute(&format!(
            "GRANT CREATE ON DATABASE {database} TO {}",
            roles.owner
        ))
        .await
        .expect("let the owner create the schema");
    roles
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_the_enrollment_flow_and_support_each_run_under_their_least_privilege_role() {
    let partner = TestPartner::accepting("acme").await;
    let db = TestDb::unmigrated().await;
    let roles = create_roles(&db).await;

    // The owner migrates, then applies the grants `dispatcher db grants` prints.
    let owner_config = TestConfig::new().database_url(&db.url_as(&roles.owner));
    let migrated = finish({
        let mut command = dispatcher(&owner_config.write(&db));
        command.arg("migrate");
        command
    })
    .await;
    assert!(migrated.status.success(), "{migrated}");
    let grants = finish({
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"));
        command.args([
            "db",
            "grants",
            "--owner",
            &roles.owner,
            "--daemon",
            &roles.daemon,
            "--producer",
            &roles.producer,
            "--support",
            &roles.support,
        ]);
        command
    })
    .await;
    assert!(grants.status.success(), "{grants}");
    let owner = db.connect_as(&roles.owner).await;
    // A site that takes from PUBLIC what PostgreSQL gives it: the grants name each
    // function the roles call, the index predicates' among them.
    owner
        .batch_execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA dispatcher FROM PUBLIC")
        .await
        .expect("revoke the functions from PUBLIC");
    owner
        .batch_execute(&grants.stdout)
        .await
        .unwrap_or_else(|e| panic!("the grants, as the owner: {e:?}\n{}", grants.stdout));
    // Every table is named by the grants (a new one would need its own).
    let tables: Vec<String> = owner
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'dispatcher'",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|row| row.get(0))
        .collect();
    for table in &tables {
        assert!(
            grants.stdout.contains(&format!("dispatcher.{table}")),
            "dispatcher db grants forgets table {table}"
        );
    }

    // The daemon, under its role, asleep on the wake-up (it polls once an hour).
    let daemon_config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .poll_interval(Duration::from_secs(3600))
        .database_url(&db.url_as(&roles.daemon));
    let daemon = Daemon::start(&daemon_config, &db);
    daemon.wait_for_log("listening for new events", 1).await;
    daemon.wait_for_log("waiting for new events", 2).await;

    // The enrollment flow's one INSERT, README's own, wakes it.
    let producer = db.connect_as(&roles.producer).await;
    let event = enrollment_event("ha-roles-1");
    producer
        .execute(
            "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2)",
            &[&ENROLLMENT, &event],
        )
        .await
        .expect("the enrollment flow inserts");
    db.wait_for_state("delivered", 1).await;
    for denied in [
        "SELECT count(*) FROM dispatcher.outbox",
        "SELECT count(*) FROM dispatcher.deliveries",
        "UPDATE dispatcher.outbox SET routed_at = NULL",
        "SELECT count(*) FROM dispatcher.audit_log",
    ] {
        let error = producer.batch_execute(denied).await.expect_err(denied);
        assert!(
            format!("{error:?}").contains("permission denied"),
            "{denied}: {error:?}"
        );
    }

    // The daemon's role appends to the trail but cannot change it.
    let as_daemon = db.connect_as(&roles.daemon).await;
    for denied in [
        "UPDATE dispatcher.audit_log SET actor = 'x'",
        "DELETE FROM dispatcher.audit_log",
        "TRUNCATE dispatcher.audit_log",
        "SELECT event FROM dispatcher.outbox LIMIT 0; INSERT INTO dispatcher.outbox (event_name, event) VALUES ('x', '{}')",
    ] {
        let error = as_daemon.batch_execute(denied).await.expect_err(denied);
        assert!(format!("{error:?}").contains("permission denied"), "{denied}: {error:?}");
    }

    // Support's CLI reads (and its read is audited under its database role), but cannot
    // resend, and cannot read a body.
    let support_config = daemon_config
        .clone()
        .database_url(&db.url_as(&roles.support));
    let support_path = support_config.dir.path().join("support.toml");
    std::fs::write(&support_path, support_config.text(&db)).expect("write support config");
    let id = db.deliveries().await[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let cli = |args: &[&str]| {
        let mut command = dispatcher(&support_path);
        command.args(args);
        command
    };
    let listed = finish(cli(&["deliveries", "list", "--state", "delivered"])).await;
    assert!(
        listed.status.success() && listed.stdout.contains(&id),
        "{listed}"
    );
    // A window of delivered deliveries is a range of ids, by migration 0023's functions.
    let an_hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let listed = finish(cli(&[
        "deliveries",
        "list",
        "--state",
        "delivered",
        "--since",
        &an_hour_ago,
    ]))
    .await;
    assert!(
        listed.status.success() && listed.stdout.contains(&id),
        "{listed}"
    );
    let shown = finish(cli(&["deliveries", "show", &id])).await;
    assert!(shown.status.success(), "{shown}");
    let trail = finish(cli(&["audit", "--action", "delivery_read"])).await;
    assert!(
        trail.status.success() && trail.stdout.contains(&format!("db role {}", roles.support)),
        "{trail}"
    );
    let retry = finish(cli(&["deliveries", "retry", &id])).await;
    assert!(
        !retry.status.success() && retry.stderr.contains("permission denied"),
        "{retry}"
    );
    let as_support = db.connect_as(&roles.support).await;
    let error = as_support
        .batch_execute("SELECT event FROM dispatcher.outbox")
        .await
        .expect_err("support reads no body");
    assert!(
        format!("{error:?}").contains("permission denied"),
        "{error:?}"
    );
    drop(daemon);

    // A month on, the daemon's role archives the delivery (the owner's function makes
    // the week's tables for it), and support's still reads it.
    db.a_month_passes().await;
    let prune = || {
        let mut command = dispatcher(&daemon_config.write(&db));
        command.arg("prune");
        command
    };
    let pruned = finish(prune()).await;
    assert!(
        pruned.status.success()
            && pruned
                .stdout
                .contains("archived 1 deliveries and dropped 0 archived weeks"),
        "{pruned}"
    );
    let shown = finish(cli(&["deliveries", "show", &id])).await;
    assert!(
        shown.status.success() && shown.stdout.contains("erased"),
        "{shown}"
    );
    // Neither support's role nor the daemon's can take the archive's lock.
    for role in [&as_support, &as_daemon] {
        let error = role
            .batch_execute("BEGIN; LOCK TABLE dispatcher.archive_weeks IN SHARE ROW EXCLUSIVE MODE")
            .await
            .expect_err("the archive's lock is the owner's functions'");
        assert!(
            format!("{error:?}").contains("permission denied"),
            "{error:?}"
        );
        role.batch_execute("ROLLBACK").await.expect("roll back");
    }

    // A year on, its week of the archive is dropped: the owner's function drops the
    // tables for the daemon's role.
    db.archived_ended_days_ago("ha-roles-1", 401).await;
    let pruned = finish(prune()).await;
    assert!(
        pruned.status.success() && pruned.stdout.contains("dropped 1 archived weeks"),
        "{pruned}"
    );
}

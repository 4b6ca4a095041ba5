//! Support reading from a hot standby (`[support] database_url`): a real primary and a
//! real streaming replica on 127.0.0.1 made with `pg_basebackup -R`. The page, the API
//! and `dispatcher deliveries list`/`show` read the standby, which the tests tell by
//! pausing its replay: what the primary committed since is not there. Resend, cancel and
//! the audit trail go to the primary; the page says how far behind the standby is, and
//! reads the primary (saying so) while the standby is down or is no standby at all.

use crate::support::cluster::Cluster;
use crate::support::*;
use serde_json::Value;

/// A primary, its standby, a migrated database on them, and a daemon whose support reads
/// the standby, with one rejected delivery (patient `p-first`) replayed on both.
struct Replicated {
    /// Up for the whole test: a resend is answered.
    _partner: TestPartner,
    primary: Cluster,
    standby: Cluster,
    db: TestDb,
    config: TestConfig,
    /// Killed with the test.
    _daemon: Daemon,
    admin: AdminClient,
    first: String,
}

impl Replicated {
    async fn start() -> Replicated {
        let acme = TestPartner::refusing("acme", &["p-first", "p-second"], ALREADY_ENROLLED).await;
        let primary = Cluster::new();
        let standby = primary.standby();
        let config = TestConfig::new().partner(&acme, &[PROGRAM]);
        let db = TestDb::migrated_on(&config, &primary.admin_url()).await;
        let config = config.standby_url(&standby.url_of(&db.url));
        db.insert_event(ENROLLMENT, &enrollment_event("p-first"))
            .await;
        let daemon = Daemon::start(&config, &db);
        db.wait_for_deliveries(
            &Deliveries::all().of_patient("p-first").in_state("rejected"),
            1,
        )
        .await;
        let first = db.ids_in_state("rejected").await.remove(0);
        standby.wait_until_replayed(&primary).await;
        let admin = AdminClient::of(&daemon, None).await;
        Replicated {
            _partner: acme,
            primary,
            standby,
            db,
            config,
            _daemon: daemon,
            admin,
            first,
        }
    }

    async fn page(&self, path: &str) -> String {
        let page = self
            .admin
            .raw(self.admin.http().get(format!("{}{path}", self.admin.base)))
            .await;
        assert_eq!(page.status().as_u16(), 200, "{path}");
        page.text().await.expect("page")
    }

    /// The ids the API lists for a patient.
    async fn api_ids(&self, patient: &str) -> Vec<String> {
        let (status, page) = self
            .admin
            .get(&format!("/api/deliveries?patient_id={patient}"))
            .await;
        assert_eq!(status, 200, "{page}");
        ids(&page)
    }

    /// `dispatcher deliveries ARGS… --database-url <the primary>`, with the test's
    /// config file (and its `[support]`) beside it.
    async fn deliveries(&self, args: &[&str]) -> Output {
        let path = self.config.write(&self.db);
        let mut command = dispatcher(&path);
        command
            .arg("deliveries")
            .args(args)
            .args(["--database-url", &self.db.url]);
        finish(command).await
    }

    async fn audited(&self, action: &str) -> i64 {
        self.db
            .client
            .query_one(
                "SELECT count(*) FROM dispatcher.audit_log WHERE action = $1",
                &[&action],
            )
            .await
            .expect("read the audit trail")
            .get(0)
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|delivery| delivery["id"].as_str().expect("id").to_string())
        .collect()
}

/// The standby's note on a page: the text of `#read-from`.
fn read_from(page: &str) -> &str {
    let start = page
        .find("id=\"read-from\"")
        .unwrap_or_else(|| panic!("no note of where the page read:\n{page}"));
    let text = &page[start..];
    let text = &text[text.find('>').expect("tag end") + 1..];
    &text[..text.find("</p>").expect("note end")]
}

async fn wait_for_page(replicated: &Replicated, path: &str, says: &str) -> String {
    for _ in 0..600 {
        let page = replicated.page(path).await;
        if page.contains(says) {
            return page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} did not say `{says}` within a minute");
}

#[tokio::test]
async fn support_reads_the_standby_and_its_lag_while_resends_and_the_audit_trail_go_to_the_primary()
{
    let replicated = Replicated::start().await;
    let db = &replicated.db;
    let caught_up = wait_for_page(&replicated, "/", "caught up with the primary").await;
    assert!(caught_up.contains("p-first"), "{caught_up}");

    // The primary commits what the standby, its replay paused, does not show.
    replicated.standby.pause_replay().await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-second"))
        .await;
    db.wait_for_deliveries(
        &Deliveries::all()
            .of_patient("p-second")
            .in_state("rejected"),
        1,
    )
    .await;
    let second = db.ids_in_state("rejected").await;
    let second = second
        .into_iter()
        .find(|id| *id != replicated.first)
        .expect("the second delivery");

    assert_eq!(
        replicated.api_ids("p-first").await,
        [replicated.first.as_str()]
    );
    assert!(
        replicated.api_ids("p-second").await.is_empty(),
        "the API read the primary"
    );
    let overview = replicated.page("/").await;
    assert!(overview.contains("p-first"), "{overview}");
    assert!(!overview.contains("p-second"), "the page read the primary");
    let note = read_from(&overview);
    assert!(
        note.contains("of WAL behind the primary") && note.contains("Replay is paused"),
        "{note}"
    );
    assert!(
        overview.contains("notice bad"),
        "the lag is not shown plainly"
    );
    let detail = replicated
        .page(&format!("/deliveries/{}", replicated.first))
        .await;
    assert!(
        read_from(&detail).contains("behind the primary"),
        "{detail}"
    );

    // The command line reads the standby too, and says so beside its answer.
    let listed = replicated
        .deliveries(&["list", "--state", "rejected", "--json"])
        .await;
    assert!(listed.status.success(), "{listed}");
    let rows: Value = serde_json::from_str(&listed.stdout).expect("JSON");
    let listed_ids: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed_ids, [replicated.first.as_str()], "{listed}");
    assert!(
        listed.stderr.contains("of WAL behind the primary"),
        "{listed}"
    );
    let unseen = replicated.deliveries(&["show", &second]).await;
    assert!(
        !unseen.status.success() && unseen.stderr.contains("no delivery with id"),
        "{unseen}"
    );
    let reads_before = replicated.audited("delivery_read").await;
    let shown = replicated.deliveries(&["show", &replicated.first]).await;
    assert!(
        shown.status.success() && shown.stdout.contains("already enrolled"),
        "{shown}"
    );

    // Every read of partners' answers was recorded on the primary (the standby could not
    // have taken it), and so is a resend, which the primary carries out.
    assert!(replicated.audited("deliveries_read").await >= 1);
    assert_eq!(replicated.audited("delivery_read").await, reads_before + 1);
    let resent = replicated
        .admin
        .raw(
            replicated
                .admin
                .http()
                .post(format!(
                    "{}/deliveries/{}/resend",
                    replicated.admin.base, replicated.first
                ))
                .form(&[("back", "/")]),
        )
        .await;
    assert_eq!(resent.status().as_u16(), 303);
    assert!(
        resent.headers()["location"]
            .to_str()
            .expect("location")
            .contains("notice=resent"),
        "{:?}",
        resent.headers()
    );
    db.wait_for_deliveries(
        &Deliveries::all()
            .with_id(&replicated.first)
            .in_state("rejected")
            .with_attempts(2),
        1,
    )
    .await;
    assert_eq!(replicated.audited("resend").await, 1);

    // Replay resumed, the standby shows all of it, and says it caught up.
    replicated.standby.resume_replay().await;
    replicated
        .standby
        .wait_until_replayed(&replicated.primary)
        .await;
    assert_eq!(replicated.api_ids("p-second").await, [second.as_str()]);
    let overview = wait_for_page(&replicated, "/", "caught up with the primary").await;
    assert!(overview.contains("p-second"), "{overview}");
}

#[tokio::test]
async fn while_the_standby_is_down_support_reads_the_primary_and_is_told_so() {
    let replicated = Replicated::start().await;
    replicated.standby.stop_immediately();

    let overview = replicated.page("/").await;
    let note = read_from(&overview);
    assert!(
        note.contains("could not be read") && note.contains("read from the primary instead"),
        "{note}"
    );
    assert!(overview.contains("p-first"), "{overview}");
    assert_eq!(
        replicated.api_ids("p-first").await,
        [replicated.first.as_str()]
    );
    let listed = replicated
        .deliveries(&["list", "--state", "rejected"])
        .await;
    assert!(
        listed.status.success() && listed.stdout.contains(&replicated.first),
        "{listed}"
    );
    assert!(
        listed.stderr.contains("read from the primary instead"),
        "{listed}"
    );

    // Back up, it is read again.
    replicated.standby.start();
    wait_for_page(&replicated, "/", "Read from the standby").await;
}

/// A `[support] database_url` naming a server that is not in recovery (here the primary
/// itself, as a standby since promoted would be) is not read as a standby.
#[tokio::test]
async fn a_support_database_that_is_no_standby_is_not_read_as_one() {
    let acme = TestPartner::refusing("acme", &["p-first"], ALREADY_ENROLLED).await;
    let config = TestConfig::new().partner(&acme, &[PROGRAM]);
    let db = TestDb::migrated(&config).await;
    let config = config.standby_url(&db.url);
    db.insert_event(ENROLLMENT, &enrollment_event("p-first"))
        .await;
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 1).await;
    let admin = AdminClient::of(&daemon, None).await;

    let overview = admin
        .raw(admin.http().get(format!("{}/", admin.base)))
        .await
        .text()
        .await
        .expect("overview");
    let note = read_from(&overview);
    assert!(
        note.contains("not in recovery") && note.contains("read from the primary instead"),
        "{note}"
    );
    assert!(overview.contains("p-first"), "{overview}");
    let (status, page) = admin.get("/api/deliveries?patient_id=p-first").await;
    assert_eq!((status, ids(&page).len()), (200, 1), "{page}");
    let path = config.write(&db);
    let mut command = dispatcher(&path);
    command.args(["deliveries", "list"]);
    let listed = finish(command).await;
    assert!(listed.stderr.contains("not in recovery"), "{listed}");

    // `check` names where support's reads go, without connecting to find out.
    let mut command = dispatcher(&path);
    command.arg("check");
    let checked = finish(command).await;
    assert!(
        checked.status.success()
            && checked
                .stdout
                .contains("support reads from the standby in support.database_url"),
        "{checked}"
    );
}

//! A PostgreSQL database of its own for each test, migrated by the real binary, and the
//! plain ways to write to it and read it back (the questions tests keep asking are in
//! `queries`).

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::NoTls;

use super::queries::SHOWN_STATE;
use super::{dispatcher, TestConfig};

/// A database of its own for one test, migrated by the real binary.
pub struct TestDb {
    pub url: String,
    pub client: tokio_postgres::Client,
}

impl TestDb {
    pub async fn unmigrated() -> TestDb {
        let admin_url = std::env::var("DISPATCHER_TEST_DATABASE_URL").expect(
            "DISPATCHER_TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL",
        );
        TestDb::unmigrated_on(&admin_url).await
    }

    /// A new database on the server `admin_url` points to (e.g. a test's own
    /// [`super::cluster::Cluster`]).
    pub async fn unmigrated_on(admin_url: &str) -> TestDb {
        let (admin, connection) = tokio_postgres::connect(admin_url, NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(connection);
        let name = format!("dispatcher_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("DISPATCHER_TEST_DATABASE_URL must end in /<database>"),
        };
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        TestDb { url, client }
    }

    pub async fn migrated(config: &TestConfig) -> TestDb {
        TestDb::migrate(config, TestDb::unmigrated().await)
    }

    pub async fn migrated_on(config: &TestConfig, admin_url: &str) -> TestDb {
        TestDb::migrate(config, TestDb::unmigrated_on(admin_url).await)
    }

    fn migrate(config: &TestConfig, db: TestDb) -> TestDb {
        let output = dispatcher(&config.write(&db))
            .arg("migrate")
            .output()
            .expect("run dispatcher migrate");
        assert!(
            output.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        db
    }

    /// A new connection, after the server was restarted (the old one died with it).
    pub async fn reconnect(&mut self) {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("reconnect to the test database");
        tokio::spawn(connection);
        self.client = client;
    }

    /// Another connection to the test database, e.g. for a producer's own transaction
    /// held open beside the test's.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect_to(&self.url).await
    }

    /// The test database's URL as `role` (a role of the test's own, without password:
    /// the test cluster trusts local connections).
    pub fn url_as(&self, role: &str) -> String {
        let mut url = url::Url::parse(&self.url).expect("test database URL");
        url.set_username(role).expect("a URL with a user");
        url.set_password(None).expect("a URL with a user");
        url.to_string()
    }

    /// A connection to the test database as `role`.
    pub async fn connect_as(&self, role: &str) -> tokio_postgres::Client {
        connect_to(&self.url_as(role)).await
    }

    /// What the enrollment flow does: one plain INSERT.
    pub async fn insert_event(&self, event_name: &str, event: &Value) -> i64 {
        self.client
            .query_one(
                "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2) RETURNING id",
                &[&event_name, event],
            )
            .await
            .expect("insert outbox event")
            .get(0)
    }

    /// Inserts an event given as JSON text, as the enrollment flow would with a string it
    /// built itself; PostgreSQL may refuse it (jsonb holds no `\u0000` and no lone
    /// surrogate), which the enrollment flow would see as an error.
    pub async fn insert_event_text(
        &self,
        event_name: &str,
        json: &str,
    ) -> Result<i64, tokio_postgres::Error> {
        self.client
            .query_one(
                "INSERT INTO dispatcher.outbox (event_name, event) VALUES ($1, $2::text::jsonb) RETURNING id",
                &[&event_name, &json],
            )
            .await
            .map(|row| row.get(0))
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Polls until `sql` (a count) reaches `expected`; fails after a generous deadline.
    pub async fn wait_for_count(&self, sql: &str, expected: i64) {
        self.wait_for_count_within(sql, expected, Duration::from_secs(60))
            .await
    }

    /// [`TestDb::wait_for_count`] with another deadline, for work that takes long however
    /// well it goes (a backlog of a million events).
    pub async fn wait_for_count_within(&self, sql: &str, expected: i64, deadline: Duration) {
        let started = std::time::Instant::now();
        let mut last = -1;
        while started.elapsed() < deadline {
            last = self.count(sql).await;
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("waited {deadline:?} for `{sql}` to be {expected}; it is {last}");
    }

    /// Every delivery's row, its `state` as shown (`in_flight` while claimed: see
    /// [`SHOWN_STATE`]).
    pub async fn deliveries(&self) -> Vec<Value> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT to_jsonb(d) || jsonb_build_object('state', {SHOWN_STATE})
                     FROM dispatcher.deliveries d ORDER BY event_id, partner"
                ),
                &[],
            )
            .await
            .expect("read deliveries");
        rows.iter().map(|row| row.get(0)).collect()
    }

    pub async fn attempts(&self, delivery_id: &str) -> Vec<Value> {
        let rows = self
            .client
            .query(
                "SELECT to_jsonb(a) FROM dispatcher.every_attempt a WHERE delivery_id = $1::text::uuid ORDER BY number",
                &[&delivery_id],
            )
            .await
            .expect("read attempts");
        rows.iter().map(|row| row.get(0)).collect()
    }
}

async fn connect_to(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

//! The daemon's side of a test database without the daemon: its configuration and a
//! connection as its pool gives one, running the router's, the claim's and the recorder's
//! own store functions, one step at a time, for the tests that play their races.

use std::time::Duration;

use dispatcher::config::Config;
use dispatcher::delivery::outcome::Resolution;
use dispatcher::delivery::state::DeliveryState;
use dispatcher::delivery::ClaimedDelivery;
use dispatcher::store::db;
use dispatcher::store::outbox::{self, Routed, RoutingRound};
use dispatcher::store::queue::{self, PartnerRoom};

use super::{TestConfig, TestDb};

/// The daemon's side of a test database: its configuration and one of its connections.
pub struct Router {
    pub config: Config,
    pub client: deadpool_postgres::Client,
}

impl Router {
    pub async fn of(config: &TestConfig, db: &TestDb) -> Router {
        let config = Config::parse(&config.text(db), "waiting", None, |_| None).expect("config");
        let client = connection(&config).await;
        Router { config, client }
    }

    /// Another connection as the daemon's pool gives it, e.g. for support's actions.
    pub async fn another_connection(&self) -> deadpool_postgres::Client {
        connection(&self.config).await
    }

    /// Routes every event written so far, with the router's own code.
    pub async fn route(&mut self) {
        while outbox::route_new_events(&mut self.client, &self.config, 1000)
            .await
            .expect("route")
            != Routed::Events(0)
        {}
    }

    /// Routes the events written so far (up to 1,000) as a daemon with room for every
    /// delivery does: offering to claim each as it is inserted.
    pub async fn route_and_claim(&mut self) -> RoutingRound {
        outbox::route_and_claim(&mut self.client, &self.config, 1000, &mut |_| true)
            .await
            .expect("route and claim")
    }

    /// One claim of up to 100 with room for 100 of each partner, committed.
    pub async fn claim(&mut self, partners: &[&str]) -> Vec<ClaimedDelivery> {
        queue::claim_due(
            &mut self.client,
            100,
            Duration::from_secs(60),
            &room(partners),
        )
        .await
        .expect("claim")
        .deliveries
    }

    /// Records that the claimed delivery ended in `state`.
    pub async fn record(&mut self, claimed: &ClaimedDelivery, state: DeliveryState) {
        let written = queue::record(&mut self.client, &[&ended(claimed, state)])
            .await
            .expect("record");
        assert_eq!(written, [claimed.id], "the result is recorded");
    }
}

/// The claimed delivery's result: it ended in `state`.
pub fn ended(claimed: &ClaimedDelivery, state: DeliveryState) -> Resolution {
    Resolution {
        delivery_id: claimed.id,
        claim_token: claimed.claim_token,
        state,
        due_in: None,
        last_error: None,
        attempt: None,
        learned_external_id: None,
    }
}

/// A connection as the daemon's pool of `config` gives it.
async fn connection(config: &Config) -> deadpool_postgres::Client {
    db::daemon_pool(&config.database)
        .expect("pool")
        .get()
        .await
        .expect("a pooled connection")
}

/// A connection of support's own pool, as the admin server and the CLI open it: it plans
/// as PostgreSQL chooses, sequential scans included (`store::db::pool`).
pub async fn support_connection(config: &TestConfig, db: &TestDb) -> deadpool_postgres::Client {
    let loaded = Config::parse(&config.text(db), "support", None, |_| None).expect("config");
    db::pool(&loaded.database, loaded.admin.pool)
        .expect("pool")
        .get()
        .await
        .expect("a pooled connection")
}

/// The server process behind `client`, as `pg_stat_activity` names it.
pub async fn backend_pid(client: &deadpool_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("the backend's pid")
        .get(0)
}

pub fn room(partners: &[&str]) -> Vec<PartnerRoom> {
    partners
        .iter()
        .map(|partner| PartnerRoom {
            partner: partner.to_string(),
            free: 100,
        })
        .collect()
}

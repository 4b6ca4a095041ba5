//! The admin server: what ops probe and scrape, and what support uses in a browser.
//!
//! | path | for | access |
//! |---|---|---|
//! | `/healthz`, `/readyz` | load balancers, orchestrators | open |
//! | `/metrics` | Prometheus | open (ids and counts only) |
//! | `/api/…` | scripts, other tools (OpenAPI at `/api/openapi.json`) | bearer token; JSON posts only |
//! | `/` and below | support staff in a browser | login form, then a cookie |
//!
//! The API and the page also answer only to the host names the server is published
//! under (see `access::known_hosts_only`). It runs inside the daemon on `[admin]
//! listen`, over HTTPS when `[admin] tls_cert`/`tls_key` are set, and stops with it.

mod access;
pub(crate) mod api;
mod error;
mod health;
mod metrics;
pub(crate) mod page;
pub(crate) mod selection;
mod state;
mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::Router;
use deadpool_postgres::Pool;
use tokio::net::TcpListener;

use crate::config::{AdminConfig, AdminTls};
use crate::observe::metrics::Metrics;
use crate::shutdown::Shutdown;
use access::{Access, HostRule};
use state::AdminState;

/// The bound admin server, ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    tls: Option<AdminTls>,
    router: Router,
}

impl AdminServer {
    /// Binds `[admin] listen`. Without a token, anyone who can reach the port could
    /// resend deliveries, so the server then listens on loopback only.
    ///
    /// Support's questions (the API, the page) go through `support_pool`, the admin
    /// server's own; the probes and the scrape read the daemon's `daemon_pool`, whose
    /// health they report.
    pub async fn bind(
        config: &AdminConfig,
        support_pool: Pool,
        daemon_pool: Pool,
        metrics: Metrics,
    ) -> std::io::Result<AdminServer> {
        let mut listen = config.listen;
        if config.token.is_none() {
            if !listen.ip().is_loopback() {
                tracing::warn!(configured = %listen,
                    "no [admin] token is set: the admin server listens on loopback only");
                listen = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port());
            } else {
                tracing::info!(
                    "no [admin] token is set: the admin server is open to local users only"
                );
            }
        }
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let https = config.tls.is_some();
        tracing::info!(addr = %local, https, "admin server listening");
        let hosts = match (&config.token, config.allowed_hosts.is_empty()) {
            (None, _) => HostRule::Loopback {
                port: local.port(),
                https,
            },
            (Some(_), false) => HostRule::Listed(config.allowed_hosts.clone()),
            (Some(_), true) => HostRule::Any,
        };
        let state = AdminState {
            pool: support_pool,
            daemon_pool,
            access: Arc::new(Access::new(config.token.clone(), hosts, https)),
            metrics,
        };
        Ok(AdminServer {
            listener,
            tls: config.tls.clone(),
            router: router(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the daemon starts stopping.
    pub async fn serve(self, shutdown: Shutdown) -> std::io::Result<()> {
        let stopping = async move { shutdown.stopping().await };
        match &self.tls {
            None => {
                axum::serve(self.listener, self.router)
                    .with_graceful_shutdown(stopping)
                    .await
            }
            Some(tls) => {
                axum::serve(tls::TlsListener::new(self.listener, tls), self.router)
                    .with_graceful_shutdown(stopping)
                    .await
            }
        }
    }
}

fn router(state: AdminState) -> Router {
    // The bearer check comes first, so a stranger learns nothing about what a post needs.
    let api = api::routes()
        .route_layer(from_fn_with_state(state.clone(), access::json_posts))
        .route_layer(from_fn_with_state(state.clone(), access::require_bearer));
    // What holds patient ids, partners' answers and the resend and cancel buttons
    // answers only to the names it is published under (against DNS rebinding). The
    // probes do not: load balancers and Prometheus reach them by address or service
    // name, and they show counts, partner and event names only and change nothing.
    let support = Router::new()
        .route("/api/openapi.json", get(api::openapi))
        .nest("/api", api)
        .merge(page::routes(&state))
        .layer(from_fn_with_state(state.clone(), access::known_hosts_only));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .merge(support)
        .with_state(state)
}

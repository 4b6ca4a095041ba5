//! The admin server: what ops probe and scrape, and what support uses in a browser.
//!
//! | path | for | access |
//! |---|---|---|
//! | `/healthz`, `/readyz` | load balancers, orchestrators | open |
//! | `/metrics` | Prometheus | open (ids and counts only) |
//! | `/api/…` | scripts, other tools (OpenAPI at `/api/openapi.json`) | bearer token |
//! | `/` and below | support staff in a browser | login form, then a cookie |
//!
//! It runs inside the daemon on `[admin] listen` and stops with it.

mod access;
mod api;
mod health;
mod metrics;
mod page;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use deadpool_postgres::Pool;
use tokio::net::TcpListener;

use crate::config::AdminConfig;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use access::Access;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AdminState {
    pool: Pool,
    access: Arc<Access>,
    metrics: Metrics,
}

/// The bound admin server, ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    router: Router,
}

impl AdminServer {
    /// Binds `[admin] listen`. Without a token, anyone who can reach the port could
    /// resend deliveries, so the server then listens on loopback only.
    pub async fn bind(
        config: &AdminConfig,
        pool: Pool,
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
        tracing::info!(addr = %listener.local_addr()?, "admin server listening");
        let state = AdminState {
            pool,
            access: Arc::new(Access::new(config.token.clone())),
            metrics,
        };
        Ok(AdminServer {
            listener,
            router: router(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the daemon starts stopping.
    pub async fn serve(self, shutdown: Shutdown) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.stopping().await })
            .await
    }
}

fn router(state: AdminState) -> Router {
    let api = api::routes().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        access::require_bearer,
    ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/api/openapi.json", get(api::openapi))
        .nest("/api", api)
        .merge(page::routes())
        .with_state(state)
}

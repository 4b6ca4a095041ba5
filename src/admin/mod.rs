//! The admin server: what ops probe and scrape, and what support uses in a browser.
//!
//! | path | for | access |
//! |---|---|---|
//! | `/healthz`, `/readyz` | load balancers, orchestrators | open |
//! | `/metrics` | Prometheus | open (ids and counts only) |
//! | `/api/…` | scripts, other tools (OpenAPI at `/api/openapi.json`) | personal API token (or break-glass); JSON posts only |
//! | `/login`, `/auth/…`, `/logout` | signing in and out | open |
//! | `/` and below | support staff in a browser | the identity provider (or break-glass), then a session cookie |
//!
//! Each page and API handler names the role it needs (`allowed::Allowed`); what a caller
//! did that shows partners' answers or changes something is audited (`store::audit`).
//!
//! The API and the page also answer only to the host names the server is published
//! under (see `access::known_hosts_only`). It runs inside the daemon on `[admin]
//! listen`, over HTTPS when `[admin] tls_cert`/`tls_key` are set, and stops with it.

mod access;
mod allowed;
pub(crate) mod api;
mod api_access;
mod caller;
mod error;
mod headers;
mod health;
mod input;
mod metrics;
mod oidc;
pub(crate) mod page;
mod received;
mod rejection;
pub(crate) mod selection;
mod session;
mod state;
mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::config::live::LiveConfig;
use crate::config::{AdminConfig, AdminTls};
use crate::observe::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::db::Pool;
use access::{Access, HostRule};
use state::AdminState;

/// The bound admin server, ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    tls: Option<AdminTls>,
    router: Router,
}

impl AdminServer {
    /// Binds `[admin] listen`. Without sign-in (`[admin.oidc]`) or a token, anyone who
    /// can reach the port could resend deliveries, so the server then listens on
    /// loopback only.
    ///
    /// Support's questions (the API, the page) go through `support_pool`, the admin
    /// server's own, their reads through `standby_pool` when there is one (`[support]
    /// database_url`); the probes and the scrape read the daemon's `daemon_pool`, whose
    /// health they report. `live` gives the partners' settings in force, for what a
    /// partner received.
    pub async fn bind(
        config: &AdminConfig,
        support_pool: Pool,
        standby_pool: Option<Pool>,
        daemon_pool: Pool,
        metrics: Metrics,
        live: LiveConfig,
    ) -> std::io::Result<AdminServer> {
        let mut listen = config.listen;
        let secured = config.token.is_some() || config.oidc.is_some();
        if config.token.is_some() {
            tracing::warn!(
                "BREAK-GLASS: [admin] token is set. It lets anyone who holds it in as an operator, \
                 with no name of their own; keep it for when the identity provider is down, and \
                 use [admin.oidc] and personal API tokens (dispatcher tokens create) otherwise. \
                 Every use is logged and audited."
            );
        }
        if !secured {
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
        let hosts = match (secured, config.allowed_hosts.is_empty()) {
            (false, _) => HostRule::Loopback {
                port: local.port(),
                https,
            },
            (true, false) => HostRule::Listed(config.allowed_hosts.clone()),
            (true, true) => HostRule::Any,
        };
        let oidc = config
            .oidc
            .clone()
            .map(oidc::Oidc::new)
            .transpose()
            .map_err(std::io::Error::other)?
            .map(Arc::new);
        let form_targets = headers::FormTargets::signing_in_at(
            config.oidc.as_ref().map(|oidc| oidc.issuer.as_str()),
        );
        let state = AdminState {
            pool: support_pool,
            standby: standby_pool,
            pinned: None,
            daemon_pool,
            access: Arc::new(
                Access::new(config.token.clone(), config.oidc.is_some(), hosts, https)
                    .trusting_proxies(config.trusted_proxies.clone()),
            ),
            metrics,
            oidc,
            live,
        };
        Ok(AdminServer {
            listener,
            tls: config.tls.clone(),
            router: router(state, form_targets),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the daemon starts stopping.
    pub async fn serve(self, shutdown: Shutdown) -> std::io::Result<()> {
        let stopping = async move { shutdown.stopping().await };
        // The peer's address, for `[admin] trusted_proxies`.
        let app = self
            .router
            .into_make_service_with_connect_info::<access::Peer>();
        match &self.tls {
            None => {
                axum::serve(self.listener, app)
                    .with_graceful_shutdown(stopping)
                    .await
            }
            Some(tls) => {
                axum::serve(tls::TlsListener::new(self.listener, tls), app)
                    .with_graceful_shutdown(stopping)
                    .await
            }
        }
    }
}

fn router(state: AdminState, form_targets: headers::FormTargets) -> Router {
    // The bearer check comes first, so a stranger learns nothing about what a post needs
    // (each post's JSON and origin check sits on its own route: `access::json_post`).
    let api = api::routes(&state.access)
        .route_layer(from_fn_with_state(state.clone(), session::api_caller));
    let pages = page::routes()
        .route_layer(from_fn_with_state(state.clone(), session::page_caller))
        .merge(page::sign_in_routes())
        .layer(from_fn_with_state(state.clone(), access::same_origin_posts));
    // What holds patient ids, partners' answers and the resend and cancel buttons
    // answers only to the names it is published under (against DNS rebinding). The
    // probes do not: load balancers and Prometheus reach them by address or service
    // name, and they show counts, partner and event names only and change nothing.
    let support = Router::new()
        .route("/api/openapi.json", get(api::openapi))
        .nest("/api", api)
        .merge(pages)
        .layer(from_fn_with_state(state.clone(), access::known_hosts_only))
        .layer(from_fn_with_state(form_targets, headers::security_headers));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .merge(support)
        .with_state(state)
}

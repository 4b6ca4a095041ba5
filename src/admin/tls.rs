//! HTTPS for the admin server (`[admin] tls_cert`/`tls_key`): TLS handshakes (rustls) in
//! front of axum's HTTP server, so routing, middleware and the graceful stop are the same
//! over http and https.

use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::access::Peer;
use crate::config::AdminTls;

/// A client that connects and never finishes its handshake is dropped after this, so
/// idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once. Past it, new connections wait in the kernel's backlog,
/// holding no file descriptor of ours: clients that open connections and never speak
/// cannot take the descriptors the database pool and the partners' connections need.
const MAX_HANDSHAKES: usize = 64;

/// Accepts TCP connections and hands axum those whose TLS handshake succeeded.
/// Handshakes run side by side, so a slow client does not hold up the others; those
/// still running when the server stops are dropped with it.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, tls: &AdminTls) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(tls.server.clone()),
            handshakes: JoinSet::new(),
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some((tls, peer)),
        // A client that does not speak TLS, or does not trust our certificate: its
        // business, not an error of ours.
        Ok(Err(error)) => {
            tracing::debug!(%error, "admin server: TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("admin server: TLS handshake timed out");
            None
        }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                // axum's own accept: it rides out errors such as too many open files.
                (stream, peer) = Listener::accept(&mut self.tcp),
                    if self.handshakes.len() < MAX_HANDSHAKES =>
                {
                    self.handshakes
                        .spawn(handshake(self.acceptor.clone(), stream, peer));
                }
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(established)) = done {
                        return established;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

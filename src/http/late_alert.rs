//! A partner's late alert: what it says once our side of the TLS handshake is done.
//!
//! Under TLS 1.3 the client's handshake ends as it sends its certificate, and the server
//! checks that certificate afterwards: a partner that refuses it (certificate_required,
//! unknown_ca, bad_certificate…) says so in an alert that arrives on the connection's
//! first read. `check --connect` (`http/probe.rs`) hears a partner out here when the
//! HTTP client lost that alert: it makes one connection of its own, with the TLS of the
//! partner's client (`client_config`), sends our close_notify once the handshake is
//! done, and reads until the partner closes. A partner that refused our certificate sent
//! its alert before it could read our close_notify; one that accepted it closes in turn.
//! No HTTP request is sent.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Host;

use crate::config::PartnerTls;

/// The alert the partner at `host` (one of `addresses`) sends on a connection whose
/// handshake we completed, or during that handshake. `None` when it sends none (it
/// closes, or writes something else), or when no such connection could be made:
/// nothing is learned then. The caller bounds the time it takes.
pub(crate) async fn late_alert(
    tls: &PartnerTls,
    host: Host<&str>,
    addresses: &[SocketAddr],
) -> Option<AlertDescription> {
    let name = match host {
        Host::Domain(domain) => ServerName::try_from(domain.to_string()).ok()?,
        Host::Ipv4(address) => ServerName::IpAddress(address.into()),
        Host::Ipv6(address) => ServerName::IpAddress(address.into()),
    };
    let config = client_config(tls).ok()?;
    let tcp = connect(addresses).await?;
    let mut stream = match TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(stream) => stream,
        Err(error) => return alert(&error),
    };
    // Failing, our close_notify means the partner has hung up already: what it said
    // before is still there to read.
    let _ = stream.shutdown().await;
    let mut first = [0u8; 1];
    match stream.read(&mut first).await {
        Ok(_) => None,
        Err(error) => alert(&error),
    }
}

/// The TLS of the partner's client, as `PartnerClient::new` (`http/client.rs`) has
/// reqwest build it: the web PKI roots and `ca_bundle`, our client certificate when one
/// is configured, TLS 1.2 and 1.3, the ring provider, HTTP/2 and HTTP/1.1 offered.
fn client_config(tls: &PartnerTls) -> Result<ClientConfig, rustls::Error> {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in &tls.extra_roots_der {
        roots.add(root.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match &tls.client_certificate {
        Some(certificate) => {
            builder.with_client_auth_cert(certificate.chain.clone(), certificate.key.clone_key())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A TCP connection to the first of `addresses` that takes one.
async fn connect(addresses: &[SocketAddr]) -> Option<TcpStream> {
    for address in addresses {
        if let Ok(tcp) = TcpStream::connect(address).await {
            return Some(tcp);
        }
    }
    None
}

/// The alert a failed TLS read or handshake received from the peer, if that is why it
/// failed (tokio-rustls carries the rustls error inside the I/O error).
fn alert(error: &std::io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

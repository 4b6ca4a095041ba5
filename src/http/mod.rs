//! Talking to partners over HTTP: the client, the destination guard that keeps requests
//! off internal networks (with the address classes it refuses), partner authentication,
//! the transport errors they share, and the probe `check --connect` runs. Bottom up:
//! address, guard, error, auth, headers (what every request carries), client, late_alert
//! (what a partner says once our TLS handshake is done, for the probe), probe.

pub mod address;
pub mod auth;
pub mod client;
pub mod error;
pub mod guard;
pub mod headers;
pub mod late_alert;
pub mod probe;

//! Talking to partners over HTTP: the client, the destination guard that keeps requests
//! off internal networks, partner authentication, and the probe `check --connect` runs.

pub mod auth;
pub mod client;
pub mod guard;
pub mod probe;

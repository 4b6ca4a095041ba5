//! `dispatcher check`: what a configuration file will do, before it is deployed.
//!
//! Validates like `run` does, warns about a database link an attacker could read, then
//! prints where each partner's events go, without connecting to the database or to any
//! partner. URLs are printed with their credentials
//! and query (where API keys hide) redacted; secrets and header values never.

use std::io::{self, Write};
use std::path::Path;

use crate::config::{redacted_url, Config, DatabaseConfig, Partner};
use crate::http::guard;

/// Prints every partner's routes: support programs, then where each event kind goes, and
/// warns about partner URLs whose addresses the destination guard would refuse (the one
/// lookup `check` makes: DNS, never a connection).
pub async fn describe(config: &Config, path: &Path, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{} is valid: {} partner(s)",
        path.display(),
        config.partners.len()
    )?;
    describe_database(&config.database, out)?;
    if config.partners.is_empty() {
        writeln!(
            out,
            "warning: no partners: every event will be kept as unrouted"
        )?;
    }
    for partner in &config.partners {
        describe_partner(partner, out)?;
        if let Err(error) = guard::check_destination(partner).await {
            writeln!(out, "  warning: {error}")?;
        }
    }
    Ok(())
}

/// Patient events cross the network to a database on another host: without verify-full
/// (or verify-ca) anyone in the path can read them, or pose as the database.
fn describe_database(database: &DatabaseConfig, out: &mut impl Write) -> io::Result<()> {
    for host in database.connection.unverified_remote_hosts() {
        writeln!(
            out,
            "warning: the database at {host} is reached without verifying its certificate \
             (sslmode={}): patient data can be read or altered on the way; set \
             sslmode=verify-full in database.url (and database.ca_file for a private CA)",
            database.connection.ssl_mode
        )?;
    }
    Ok(())
}

fn describe_partner(partner: &Partner, out: &mut impl Write) -> io::Result<()> {
    let signed = match partner.signing_secrets.len() {
        0 => "unsigned".to_string(),
        1 => "signed".to_string(),
        keys => format!("signed with {keys} secrets"),
    };
    let headers: Vec<&str> = partner
        .headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    writeln!(out)?;
    writeln!(
        out,
        "partner {}: max_in_flight {}, {signed}, headers [{}]",
        partner.name,
        partner.max_in_flight,
        headers.join(", ")
    )?;
    for program in &partner.support_programs {
        writeln!(out, "  support program {program}")?;
        writeln!(
            out,
            "    enrollment  -> {}",
            redacted_url(&partner.enrollment_url)
        )?;
        writeln!(
            out,
            "    user action -> {}",
            redacted_url(&partner.user_action_url)
        )?;
    }
    if partner.allow_insecure {
        writeln!(
            out,
            "  warning: allow_insecure = true: patient data may travel over plain http"
        )?;
    }
    Ok(())
}

//! `dispatcher check`: what a configuration file will do, before it is deployed.
//!
//! Validates like `run` does, warns about a database link an attacker could read, then
//! prints where each partner's events go, without connecting to the database or to any
//! partner (it only looks up their host names). With `--connect` it then connects to
//! every partner URL and token endpoint, sending no event ([`connect`]). URLs are printed
//! with their credentials and query (where API keys hide) redacted; secrets, tokens and
//! header values never.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use crate::config::{redacted_url, Config, DatabaseConfig, Partner};
use crate::http::guard;
use crate::http::probe::{self, Probe, Reached};

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
    describe_database(
        &config.database,
        ("the database", "database.url", "database.ca_file"),
        out,
    )?;
    if let Some(standby) = &config.support.standby {
        writeln!(
            out,
            "support reads from the standby in support.database_url (the support page, the \
             API, deliveries list and show); resend, cancel and the audit trail write to \
             the primary"
        )?;
        describe_database(
            standby,
            ("the standby", "support.database_url", "support.ca_file"),
            out,
        )?;
    }
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
/// (or verify-ca) anyone in the path can read them, or pose as the database. The warning
/// calls it `name`, and names the keys that configure it.
fn describe_database(
    database: &DatabaseConfig,
    (name, url_key, ca_key): (&str, &str, &str),
    out: &mut impl Write,
) -> io::Result<()> {
    for host in database.connection.unverified_remote_hosts() {
        writeln!(
            out,
            "warning: {name} at {host} is reached without verifying its certificate \
             (sslmode={}): patient data can be read or altered on the way; set \
             sslmode=verify-full in {url_key} (and {ca_key} for a private CA)",
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

/// `check --connect`: probes every partner's URLs at once (see [`probe`]) and prints one
/// line per partner and URL, in the configuration's order. Err when any failed, so the
/// command exits 1.
pub async fn connect(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let probes = futures_util::future::join_all(
        config
            .partners
            .iter()
            .map(|partner| probe::probe_partner(&config.dispatch, partner)),
    )
    .await;
    writeln!(out)?;
    writeln!(out, "connecting to each partner (no event is sent):")?;
    let (mut total, mut failed) = (0, 0);
    for (partner, probes) in config.partners.iter().zip(&probes) {
        for probe in probes {
            total += 1;
            failed += usize::from(probe.outcome.is_err());
            writeln!(out, "{}", probe_line(&partner.name, probe))?;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {total} partner connection checks failed (see above)");
    }
    Ok(())
}

fn probe_line(partner: &str, probe: &Probe) -> String {
    let outcome = match &probe.outcome {
        Ok(reached) => format!("ok  {}", timings(reached)),
        Err(error) => format!("FAILED: {error}"),
    };
    format!(
        "partner {partner}  {}  {}  {outcome}",
        probe.endpoint,
        redacted_url(&probe.url)
    )
}

/// e.g. `resolved in 1 ms, TLS connection and OPTIONS answered (HTTP 405) in 12 ms`.
fn timings(reached: &Reached) -> String {
    let ms = |duration: Duration| format!("{} ms", duration.as_millis());
    let mut steps = Vec::new();
    if let Some(resolved_in) = reached.resolved_in {
        steps.push(format!("resolved in {}", ms(resolved_in)));
    }
    let connection = if reached.tls {
        "TLS connection"
    } else {
        "plain http connection (allow_insecure)"
    };
    steps.push(format!(
        "{connection} and OPTIONS answered (HTTP {}) in {}",
        reached.status,
        ms(reached.answered_in)
    ));
    if let Some(token_in) = reached.token_in {
        steps.push(format!("token fetched in {}", ms(token_in)));
    }
    steps.join(", ")
}

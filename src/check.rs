//! `dispatcher check`: what a configuration file will do, before it is deployed.
//!
//! Validates like `run` does, then prints where each partner's events go, without
//! connecting to the database or to any partner. URLs are printed with their credentials
//! and query (where API keys hide) redacted; secrets and header values never.

use std::io::{self, Write};
use std::path::Path;

use crate::config::{redacted_url, Config, Partner};

/// Prints every partner's routes: support programs, then where each event kind goes.
pub fn describe(config: &Config, path: &Path, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{} is valid: {} partner(s)",
        path.display(),
        config.partners.len()
    )?;
    if config.partners.is_empty() {
        writeln!(
            out,
            "warning: no partners: every event will be kept as unrouted"
        )?;
    }
    for partner in &config.partners {
        describe_partner(partner, out)?;
    }
    Ok(())
}

fn describe_partner(partner: &Partner, out: &mut impl Write) -> io::Result<()> {
    let signed = if partner.signing_secret.is_some() {
        "signed"
    } else {
        "unsigned"
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
    // Destination guard (security work, not merged yet): warn here when a partner URL
    // resolves to an address the dispatcher refuses to send to.
    Ok(())
}

//! A hot standby of the database for support's reads (`[support] database_url`): which
//! server a read goes to, and how far behind the primary the standby is, in the words
//! the support page and `dispatcher deliveries` show beside what they read.
//!
//! The lag is told two ways, as neither is enough alone. The WAL the standby has not
//! replayed yet (the primary's `pg_current_wal_lsn()` less the standby's
//! `pg_last_wal_replay_lsn()`) says whether it is behind at all; it is read on the standby
//! first and on the primary after, so it may overstate the lag by what the primary wrote
//! in between, never understate it. How long ago the newest transaction it replayed
//! committed (`now() - pg_last_xact_replay_timestamp()`) says how old what it shows may
//! be, but it also grows while the primary commits nothing, so it is shown as the age of
//! the newest change, not as a lag.
//!
//! A standby that cannot be reached, or is not in recovery (promoted, or a URL naming
//! some other server), is not read: the primary answers instead, and the note says why.

use std::fmt;
use std::time::Duration;

use tokio_postgres::types::PgLsn;

use crate::store::db::{Client, DbError, GenericClient, Pool, NOT_A_STANDBY};

/// The standby's replay, as it reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Where its replay has reached; `None` when it is not in recovery (not a standby).
    pub replayed: Option<u64>,
    /// Replay paused (`pg_wal_replay_pause()`): it falls behind until resumed.
    pub paused: bool,
    /// How long ago the newest transaction it replayed committed; `None` before it
    /// replayed any since it started.
    pub newest_change_age: Option<Duration>,
}

/// The standby's replay position, on a connection to it.
pub async fn replay(client: &impl GenericClient) -> Result<Replay, tokio_postgres::Error> {
    // CASE, not AND: pg_is_wal_replay_paused() fails outside recovery.
    let row = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() END,
                    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
                    extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
            &[],
        )
        .await?;
    let replayed: Option<PgLsn> = row.get(0);
    let age: Option<f64> = row.get(2);
    Ok(Replay {
        replayed: replayed.map(u64::from),
        paused: row.get(1),
        // The commit time is the primary's clock: a standby's clock behind it reads < 0.
        newest_change_age: age.map(|seconds| Duration::from_secs_f64(seconds.max(0.0))),
    })
}

/// Where the primary has written its WAL to, on a connection to the primary.
pub async fn wal_written(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    let row = client.query_one("SELECT pg_current_wal_lsn()", &[]).await?;
    Ok(u64::from(row.get::<_, PgLsn>(0)))
}

/// Where support's reads came from, as the page and the command line say it.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadFrom {
    /// No standby is configured: the primary, as ever. Nothing to say.
    Primary,
    /// The standby, this far behind.
    Standby(Lag),
    /// The standby could not be used, for this reason: the primary answered instead.
    PrimaryInstead(String),
}

/// How far behind the primary the standby was just before it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Lag {
    /// Bytes of WAL the primary had written that the standby had not replayed; the
    /// reason when the primary did not say.
    pub behind: Result<u64, String>,
    pub paused: bool,
    pub newest_change_age: Option<Duration>,
}

impl ReadFrom {
    /// The pool the reads it speaks of go to: the standby's only when it says so.
    pub fn pool<'a>(&self, primary: &'a Pool, standby: Option<&'a Pool>) -> &'a Pool {
        match (self, standby) {
            (ReadFrom::Standby(_), Some(standby)) => standby,
            _ => primary,
        }
    }

    /// Whether what was read is the primary's present state: read from it, or from a
    /// standby that had replayed all it had written.
    pub fn is_current(&self) -> bool {
        match self {
            ReadFrom::Primary | ReadFrom::PrimaryInstead(_) => true,
            ReadFrom::Standby(lag) => lag.behind == Ok(0),
        }
    }
}

impl fmt::Display for ReadFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lag = match self {
            ReadFrom::Primary => return f.write_str("Read from the primary."),
            ReadFrom::PrimaryInstead(reason) => {
                return write!(
                    f,
                    "The standby (support.database_url) could not be read ({reason}): \
                     read from the primary instead."
                )
            }
            ReadFrom::Standby(lag) => lag,
        };
        match &lag.behind {
            Ok(0) => f.write_str("Read from the standby: caught up with the primary")?,
            Ok(bytes) => write!(
                f,
                "Read from the standby: {} of WAL behind the primary",
                size(*bytes)
            )?,
            Err(reason) => write!(
                f,
                "Read from the standby: how far behind the primary is not known (the \
                 primary did not answer: {reason})"
            )?,
        }
        match lag.newest_change_age {
            Some(age) => write!(
                f,
                "; the newest change it holds was committed {} ago.",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            )?,
            None => f.write_str("; it has replayed no transaction since it started.")?,
        }
        if lag.paused {
            f.write_str(" Replay is paused on the standby: it falls behind until resumed.")?;
        }
        Ok(())
    }
}

/// A WAL distance as people read it: bytes, kB, MB or GB (of 1024, as PostgreSQL's
/// `pg_size_pretty`).
fn size(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["kB", "MB", "GB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Where support's reads are to go now, and what to say about it: to the standby when
/// one is configured and usable, with how far behind it is; else to the primary, saying
/// why. Read the standby only when this says [`ReadFrom::Standby`], and after asking: what
/// is read then is at least as fresh as the lag says (replay only moves forward).
pub async fn read_from(primary: &Pool, standby: Option<&Pool>) -> ReadFrom {
    let Some(standby) = standby else {
        return ReadFrom::Primary;
    };
    match lag(primary, standby).await {
        Ok(lag) => ReadFrom::Standby(lag),
        Err(reason) => {
            tracing::warn!(%reason, "the standby cannot be read; support's reads go to the primary");
            ReadFrom::PrimaryInstead(reason)
        }
    }
}

async fn lag(primary: &Pool, standby: &Pool) -> Result<Lag, String> {
    let client = standby
        .get()
        .await
        .map_err(|error| DbError::from(error).to_string())?;
    let replay = replay(&client)
        .await
        .map_err(|error| DbError::from(error).to_string())?;
    let Some(replayed) = replay.replayed else {
        return Err(NOT_A_STANDBY.to_string());
    };
    // After the standby's position, so the distance never understates the lag.
    let behind = match primary.get().await {
        Ok(primary) => wal_written(&primary)
            .await
            .map(|written| written.saturating_sub(replayed))
            .map_err(|error| DbError::from(error).to_string()),
        Err(error) => Err(DbError::from(error).to_string()),
    };
    Ok(Lag {
        behind,
        paused: replay.paused,
        newest_change_age: replay.newest_change_age,
    })
}

/// A connection for one of support's reads that shows no lag (the API's): the standby's
/// when one is configured and answers (its pool opens none to a server not in recovery),
/// else the primary's.
pub async fn read_client(primary: &Pool, standby: Option<&Pool>) -> Result<Client, DbError> {
    if let Some(standby) = standby {
        match standby.get().await {
            Ok(client) => return Ok(client),
            Err(error) => tracing::warn!(
                reason = %DbError::from(error),
                "the standby cannot be read; support's reads go to the primary"
            ),
        }
    }
    Ok(primary.get().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(behind: Result<u64, String>, paused: bool, age: Option<u64>) -> ReadFrom {
        ReadFrom::Standby(Lag {
            behind,
            paused,
            newest_change_age: age.map(Duration::from_secs),
        })
    }

    #[test]
    fn the_note_says_how_far_behind_and_how_old_and_whether_replay_is_paused() {
        assert_eq!(
            standby(Ok(0), false, Some(42)).to_string(),
            "Read from the standby: caught up with the primary; the newest change it holds \
             was committed 42s ago."
        );
        assert_eq!(
            standby(Ok(12_595), true, Some(185)).to_string(),
            "Read from the standby: 12.3 kB of WAL behind the primary; the newest change it \
             holds was committed 3m 5s ago. Replay is paused on the standby: it falls behind \
             until resumed."
        );
        let unknown = standby(Err("timed out".into()), false, None).to_string();
        assert!(
            unknown.contains("not known (the primary did not answer: timed out)")
                && unknown.contains("replayed no transaction since it started"),
            "{unknown}"
        );
        let instead = ReadFrom::PrimaryInstead(NOT_A_STANDBY.into()).to_string();
        assert!(
            instead.contains("not in recovery")
                && instead.ends_with("read from the primary instead.")
        );
    }

    #[test]
    fn only_a_standby_behind_is_not_current() {
        assert!(ReadFrom::Primary.is_current());
        assert!(ReadFrom::PrimaryInstead("down".into()).is_current());
        assert!(standby(Ok(0), false, Some(500)).is_current());
        assert!(!standby(Ok(1), false, Some(0)).is_current());
        assert!(!standby(Err("down".into()), false, None).is_current());
    }

    #[test]
    fn sizes_read_as_pg_size_pretty_writes_them() {
        assert_eq!(size(0), "0 bytes");
        assert_eq!(size(1023), "1023 bytes");
        assert_eq!(size(1024), "1.0 kB");
        assert_eq!(size(5 * 1024 * 1024 + 1), "5.0 MB");
        assert_eq!(size(3 << 40), "3072.0 GB");
    }
}

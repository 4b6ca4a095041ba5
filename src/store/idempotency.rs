//! The API's `Idempotency-Key` on its bulk actions: the first answer to a request is kept
//! under its key, per caller, for [`KEPT_HOURS`] hours, and a repeat of the request gets
//! that answer and touches nothing.
//!
//! The key's row is inserted in the transaction that does the work, and its answer is
//! written there before the commit. So a second request with the same key, however close
//! behind, waits on the first's row (the primary key's uniqueness check waits for the
//! inserting transaction) and then reads the committed answer; if the first rolled back,
//! the second does the work itself. The database decides, never a process's memory, so
//! it holds across daemons.

use super::db::{DbError, GenericClient};
use super::support::resend::resend_in;
use super::support::{ResendReport, Selection, SupportError};

/// How long a key's answer is kept; the pruner deletes older keys ([`prune`]), and an
/// older key still in the table counts as unused.
pub const KEPT_HOURS: i32 = 24;

/// A key as a request gives it.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// Who asks: the provider's subject or the token's id, else the recorded name.
    pub caller: &'a str,
    pub key: &'a str,
    /// What is asked, the operation and the request as read (SHA-256, hex).
    pub fingerprint: &'a str,
}

/// A stored answer: the status and the JSON body, as first sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// What became of a keyed request.
#[derive(Debug)]
pub enum Keyed<T> {
    /// The key was new (or expired): the work was done, and its answer kept.
    Done(T),
    /// The key was used for this same request: its first answer, nothing touched.
    Replayed(Answer),
    /// The key was used for another request: refused, nothing touched.
    Reused,
}

/// A bulk resend under `key`: done and its answer (`answer` words the report) kept in one
/// transaction, or the answer kept for the key.
pub async fn resend_once(
    client: &mut deadpool_postgres::Client,
    key: Key<'_>,
    selection: &Selection,
    actor: &str,
    answer: impl FnOnce(&ResendReport) -> Answer,
) -> Result<Keyed<ResendReport>, SupportError> {
    let transaction = client.transaction().await?;
    if !take(&transaction, key).await? {
        let kept = kept(&transaction, key).await?;
        transaction.commit().await?;
        return Ok(kept);
    }
    let report = resend_in(&transaction, selection, actor).await?;
    // Where the tests hold the key taken, so a second request surely comes meanwhile
    // (`--features failpoints`, FAILPOINTS=bulk-resend-keyed=1*sleep(1000)->off).
    #[cfg(feature = "failpoints")]
    fail::fail_point!("bulk-resend-keyed");
    keep(&transaction, key, &answer(&report)).await?;
    transaction.commit().await?;
    Ok(Keyed::Done(report))
}

/// Takes the key for this request: true when it was free (or expired), false when it is
/// held by a committed request. Waits while another transaction holds it uncommitted.
async fn take(client: &impl GenericClient, key: Key<'_>) -> Result<bool, DbError> {
    let taken = client
        .query_opt(
            "INSERT INTO dispatcher.idempotency_keys (caller, key, fingerprint, status, answer)
             VALUES ($1, $2, $3, 0, '')
             ON CONFLICT (caller, key) DO UPDATE
                 SET fingerprint = EXCLUDED.fingerprint, status = 0, answer = '',
                     created_at = now()
                 WHERE idempotency_keys.created_at < now() - make_interval(hours => $4)
             RETURNING true",
            &[&key.caller, &key.key, &key.fingerprint, &KEPT_HOURS],
        )
        .await?;
    Ok(taken.is_some())
}

/// The answer kept for a key another request took.
async fn kept<T>(client: &impl GenericClient, key: Key<'_>) -> Result<Keyed<T>, DbError> {
    let row = client
        .query_one(
            "SELECT fingerprint, status, answer FROM dispatcher.idempotency_keys
             WHERE caller = $1 AND key = $2",
            &[&key.caller, &key.key],
        )
        .await?;
    let fingerprint: &str = row.get("fingerprint");
    if fingerprint != key.fingerprint {
        return Ok(Keyed::Reused);
    }
    let status: i16 = row.get("status");
    Ok(Keyed::Replayed(Answer {
        status: u16::try_from(status).unwrap_or(500),
        body: row.get("answer"),
    }))
}

async fn keep(client: &impl GenericClient, key: Key<'_>, answer: &Answer) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE dispatcher.idempotency_keys SET status = $3, answer = $4
             WHERE caller = $1 AND key = $2",
            &[
                &key.caller,
                &key.key,
                &i16::try_from(answer.status).unwrap_or(i16::MAX),
                &answer.body,
            ],
        )
        .await?;
    Ok(())
}

/// Deletes keys older than [`KEPT_HOURS`] (the pruner's pass); returns how many.
pub async fn prune(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM dispatcher.idempotency_keys
             WHERE created_at < now() - make_interval(hours => $1)",
            &[&KEPT_HOURS],
        )
        .await
}

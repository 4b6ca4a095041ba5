//! The support page's bulk resend in two steps: a preview counts what a selection would
//! resend now, and the confirmation resends exactly that set, or nothing.
//!
//! Between the two, deliveries may fail (and join the selection) or be resent by someone
//! else (and leave it). The preview names its set by a digest of the ids; the
//! confirmation resends in one transaction, compares the digest of what it touched, and
//! rolls back when they differ, so the operator sees the new count and confirms again.

use deadpool_postgres::GenericClient;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::resend::{resend_in, RESENDABLE};
use super::selection::{Params, CONDITIONS};
use super::{ResendReport, Selection, SupportError};

/// What a bulk resend of a selection would touch now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub count: i64,
    /// The digest of the ids (SHA-256, hex, of the ids in order, comma-separated).
    pub digest: String,
}

/// Counts what [`super::resend()`] would touch for `selection` now: ended deliveries
/// (`RESENDABLE`) and unrouted placeholders, whose event still has its body.
pub async fn preview(
    client: &impl GenericClient,
    selection: &Selection,
) -> Result<Preview, SupportError> {
    let params = Params::new(selection)?;
    let rows = client
        .query(
            &format!(
                "SELECT d.id FROM dispatcher.deliveries d
                 JOIN dispatcher.outbox o ON o.id = d.event_id
                 WHERE d.id IN (
                       SELECT id FROM dispatcher.every_delivery
                       WHERE NOT archived AND {CONDITIONS}
                         AND (partner IS NULL OR state IN {RESENDABLE}))
                   AND o.event IS NOT NULL"
            ),
            &params.with(&[]),
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
    Ok(Preview {
        count: ids.len() as i64,
        digest: digest(ids),
    })
}

/// What a confirmation did: resent the previewed set, or nothing because the set changed.
#[derive(Debug)]
pub enum Confirmed {
    Resent(ResendReport),
    /// The selection would now resend another set: nothing was touched; here is the new
    /// preview to confirm.
    Changed(Preview),
}

/// Resends `selection` if it touches exactly the set `previewed` names; else touches
/// nothing and says what it would touch now.
pub async fn resend_as_previewed(
    client: &mut deadpool_postgres::Client,
    selection: &Selection,
    previewed: &str,
    actor: &str,
) -> Result<Confirmed, SupportError> {
    let transaction = client.transaction().await?;
    let report = resend_in(&transaction, selection, actor).await?;
    let touched = report.resent.iter().chain(&report.rerouted).copied();
    if digest(touched.collect()) == previewed {
        transaction.commit().await?;
        return Ok(Confirmed::Resent(report));
    }
    transaction.rollback().await?;
    Ok(Confirmed::Changed(preview(&*client, selection).await?))
}

/// The digest of a set of ids, whatever their order.
fn digest(mut ids: Vec<Uuid>) -> String {
    ids.sort_unstable();
    let text: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    Sha256::digest(text.join(",").as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_has_one_digest_in_any_order() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(digest(vec![a, b]), digest(vec![b, a]));
        assert_ne!(digest(vec![a, b]), digest(vec![a]));
        assert_ne!(digest(vec![]), digest(vec![a]));
    }
}

//! Counts the NOTIFYs sent on the outbox's channel (`dispatcher_outbox`): what the
//! `producer` scenario's bursts legs pay for waking the router, a count that the machine's
//! load does not blur as it blurs commits per second.

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// The payload of the counter's own NOTIFY, which closes a count (the trigger sends '').
const END_OF_COUNT: &str = "bench: end of count";

/// A session LISTENing on the outbox's channel, as the daemon's listener does.
pub struct OutboxNotifications {
    client: Client,
    heard: mpsc::UnboundedReceiver<String>,
}

impl OutboxNotifications {
    pub async fn listen(url: &str) -> Result<OutboxNotifications> {
        let (client, mut connection) = tokio_postgres::connect(url, NoTls)
            .await
            .context("connecting the NOTIFY counter")?;
        let (sender, heard) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let AsyncMessage::Notification(note) = message {
                    let _ = sender.send(note.payload().to_string());
                }
            }
        });
        client
            .batch_execute("LISTEN dispatcher_outbox")
            .await
            .context("listening on the outbox's channel")?;
        Ok(OutboxNotifications { client, heard })
    }

    /// The NOTIFYs heard since the last count. The counter then notifies itself:
    /// PostgreSQL delivers notifications in commit order, so all that commits ended
    /// before this call sent arrive before its own.
    pub async fn count(&mut self) -> Result<u64> {
        self.client
            .execute(
                "SELECT pg_notify('dispatcher_outbox', $1)",
                &[&END_OF_COUNT],
            )
            .await
            .context("closing the NOTIFY count")?;
        let mut count = 0;
        loop {
            match self.heard.recv().await {
                Some(payload) if payload == END_OF_COUNT => return Ok(count),
                Some(_) => count += 1,
                None => bail!("the NOTIFY counter's connection closed"),
            }
        }
    }
}

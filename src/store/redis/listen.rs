//! The pub/sub listener that wakes the scheduler loop when another scheduler changed a job.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::store::StoreContext;

pub(super) async fn listen(
    client: redis::Client,
    channel: String,
    ctx: StoreContext,
    stop: CancellationToken,
) {
    let mut first = true;
    loop {
        let attempt = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::select! {
            _ = stop.cancelled() => return,
            r = attempt => r,
        };
        match ps {
            Ok(mut ps) => {
                if !first {
                    // Messages may have been lost while disconnected: look again.
                    ctx.wake_scheduler();
                }
                first = false;
                let mut stream = ps.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = stream.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let from: String = msg.get_payload().unwrap_or_default();
                    if from != ctx.scheduler_id() {
                        ctx.wake_scheduler();
                    }
                }
                tracing::warn!(%channel, "Redis pub/sub connection lost; reconnecting");
            }
            Err(e) => {
                tracing::debug!(%channel, error = %e, "Redis pub/sub connect failed; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

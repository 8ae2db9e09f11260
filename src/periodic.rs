//! Background work on an interval that stops by itself once its owner is gone, so a dropped
//! store or server leaves no task behind.

use std::sync::Arc;
use std::time::Duration;

/// Runs `work` on `owner` every `every` (first after one interval), for as long as `owner` is
/// referenced elsewhere. Needs a Tokio runtime.
pub fn while_alive<T: Send + Sync + 'static>(
    owner: &Arc<T>,
    every: Duration,
    work: impl Fn(&T) + Send + 'static,
) {
    let owner = Arc::downgrade(owner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(owner) = owner.upgrade() else { break };
            work(&owner);
        }
    });
}

//! WAL checkpoints off the write path (SQLite only).
//!
//! SQLite's automatic checkpoint runs inside the commit that pushes the WAL
//! past 1,000 pages: that commit copies the WAL into the database file and
//! fsyncs it before it returns, and every delivery queued behind it waits.
//! At 1,000 deliveries a second that happened a few times a second and was
//! the whole latency tail of intake. So every connection runs with
//! `wal_autocheckpoint=0` and this task checkpoints instead, in `PASSIVE`
//! mode on a connection of its own: it copies what no reader still needs
//! and never takes the write lock, so commits go on beside it. The next
//! writer restarts the WAL from the top once a checkpoint has caught up.
//!
//! It runs when the writer has committed [`DELIVERIES_PER_CHECKPOINT`]
//! deliveries since the last one, and at least every [`INTERVAL`] for writes
//! from elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hangar_types::ErrorChain;
use sqlx::AnyPool;
use tokio::sync::Notify;

/// Roughly SQLite's own autocheckpoint threshold of 1,000 pages, counted
/// in deliveries (each writes a few pages).
const DELIVERIES_PER_CHECKPOINT: usize = 300;
const INTERVAL: Duration = Duration::from_secs(1);

/// What the writer uses to ask for a checkpoint.
#[derive(Debug, Default)]
pub(crate) struct CheckpointTrigger {
    since_last: AtomicUsize,
    wake: Notify,
}

impl CheckpointTrigger {
    /// Counts `deliveries` committed; wakes the checkpointer when enough
    /// piled up.
    pub(crate) fn committed(&self, deliveries: usize) {
        let total = self.since_last.fetch_add(deliveries, Ordering::Relaxed) + deliveries;
        if total >= DELIVERIES_PER_CHECKPOINT {
            self.wake.notify_one();
        }
    }
}

/// Starts the checkpointer; it ends when the pool is closed or the writer
/// (the other holder of the trigger) is gone.
pub(crate) fn spawn(pool: AnyPool) -> Arc<CheckpointTrigger> {
    let trigger = Arc::new(CheckpointTrigger::default());
    tokio::spawn(run(pool, Arc::clone(&trigger)));
    trigger
}

async fn run(pool: AnyPool, trigger: Arc<CheckpointTrigger>) {
    let running =
        |trigger: &Arc<CheckpointTrigger>| !pool.is_closed() && Arc::strong_count(trigger) > 1;
    while running(&trigger) {
        let _ = tokio::time::timeout(INTERVAL, trigger.wake.notified()).await;
        trigger.since_last.store(0, Ordering::Relaxed);
        if !running(&trigger) {
            break;
        }
        let checkpointed = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await;
        if let Err(error) = checkpointed
            && !pool.is_closed()
        {
            tracing::warn!(error = %ErrorChain(&error), "WAL checkpoint failed; retrying later.");
        }
    }
}

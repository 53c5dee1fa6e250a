//! Group commit for deliveries.
//!
//! Every `delivery_record` call hands its delivery to one writer task and
//! waits. The writer takes whatever has queued up (up to [`MAX_BATCH`]),
//! records it all in one transaction, commits once, and only then answers
//! each caller. Under load a single fsync covers hundreds of deliveries;
//! when idle a lone delivery is committed at once, so latency stays low.
//!
//! If a batch fails, its deliveries are retried one transaction each, so
//! one bad write cannot fail its neighbours and each caller gets its own
//! error.

use std::sync::Arc;

use hangar_types::ErrorChain;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;
use crate::batch::deliveries_write;
use crate::checkpoint::CheckpointTrigger;
use crate::jobs::{DeliveryOutcome, NewDelivery, delivery_write};

const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<DeliveryOutcome, StoreError>>;

enum Request {
    Write(Box<NewDelivery>, Reply),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

#[derive(Debug)]
pub(crate) struct WriterHandle {
    requests: mpsc::Sender<Request>,
}

/// Starts the writer; `checkpoints` is told how much it committed.
pub(crate) fn spawn(pool: AnyPool, checkpoints: Option<Arc<CheckpointTrigger>>) -> WriterHandle {
    let (requests, queue) = mpsc::channel(QUEUE);
    tokio::spawn(run(pool, queue, checkpoints));
    WriterHandle { requests }
}

impl WriterHandle {
    pub(crate) async fn submit(
        &self,
        delivery: NewDelivery,
    ) -> Result<DeliveryOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Write(Box::new(delivery), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub(crate) async fn shutdown(&self) {
        let (done, flushed) = oneshot::channel();
        if self.requests.send(Request::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }
}

async fn run(
    pool: AnyPool,
    mut queue: mpsc::Receiver<Request>,
    checkpoints: Option<Arc<CheckpointTrigger>>,
) {
    let mut batch: Vec<(Box<NewDelivery>, Reply)> = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Write(delivery, reply) => batch.push((delivery, reply)),
                Request::Flush(done) => flushes.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let committed = batch.len();
            commit(&pool, &mut batch).await;
            if let Some(checkpoints) = &checkpoints {
                checkpoints.committed(committed);
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn commit(pool: &AnyPool, batch: &mut Vec<(Box<NewDelivery>, Reply)>) {
    match write_all(pool, batch.iter().map(|(delivery, _)| &**delivery)).await {
        Ok(outcomes) => {
            for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            tracing::warn!(
                error = %ErrorChain(&error),
                deliveries = batch.len(),
                "Batch commit failed; retrying each delivery on its own."
            );
            for (delivery, reply) in batch.drain(..) {
                let outcome = write_all(pool, std::iter::once(&*delivery)).await;
                let _ = reply.send(outcome.map(|mut outcomes| outcomes.remove(0)));
            }
        }
    }
}

/// One transaction: the batched path for several deliveries, the
/// per-delivery path (which retries contended jobs) for one.
async fn write_all<'a>(
    pool: &AnyPool,
    deliveries: impl Iterator<Item = &'a NewDelivery>,
) -> Result<Vec<DeliveryOutcome>, StoreError> {
    let deliveries: Vec<&NewDelivery> = deliveries.collect();
    let mut tx = pool.begin().await.map_err(StoreError::query("starting a transaction"))?;
    let outcomes = match deliveries.as_slice() {
        [one] => vec![delivery_write(&mut tx, one).await?],
        many => deliveries_write(&mut tx, many).await?,
    };
    tx.commit().await.map_err(StoreError::query("committing deliveries"))?;
    Ok(outcomes)
}

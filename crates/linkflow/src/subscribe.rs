//! Catch-up subscriptions over the global order.

use std::collections::VecDeque;
use std::sync::Arc;

use linkflow_core::Position;
use linkflow_store::{EventStore, StoredEvent};
use tokio::sync::{watch, Semaphore};

use crate::error::EngineError;

/// Events read per store call while catching up: also the most a subscription holds (a few
/// hundred subscribers catching up at once hold this many each).
const CATCH_UP_CHUNK: usize = 128;

/// How many catching-up subscribers read the log at once, engine-wide: half the cores (at
/// least one), so that hundreds of subscribers starting from position 0 queue for their turn
/// instead of taking every core from the writer. A subscriber that is caught up reads only what
/// each commit adds.
pub(crate) fn catch_up_readers() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

/// Committed events in global order from a position: first the log from there (catch-up), then
/// live events as they commit. There is no gap and no duplicate across the hand-over because
/// both phases read the same log by position; the notification of new commits is only a
/// wake-up.
///
/// Under `Durability::Fsync` a subscriber sees an event only once it is durable, so nothing it
/// saw can disappear in a crash.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    visible: watch::Receiver<Position>,
    readers: Arc<Semaphore>,
    after: Position,
    buffer: VecDeque<StoredEvent>,
}

impl Subscription {
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        visible: watch::Receiver<Position>,
        readers: Arc<Semaphore>,
        after: Position,
    ) -> Self {
        Subscription {
            store,
            visible,
            readers,
            after,
            buffer: VecDeque::new(),
        }
    }

    /// The position of the last event returned (or the starting point).
    pub fn position(&self) -> Position {
        self.after
    }

    /// Events read from the log and not returned yet (at most the catch-up chunk): a caller
    /// that can serve the next positions without the log (from a cache) does so only when this
    /// is zero, then subscribes again after the last position it served.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The subscription as a [`futures_util::Stream`] of events, ending after the engine is
    /// gone and every committed event was yielded (a store error is yielded, then it ends).
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<StoredEvent, EngineError>> {
        futures_util::stream::unfold(Some(self), |subscription| async move {
            let mut subscription = subscription?;
            match subscription.next().await {
                Ok(event) => Some((Ok(event), Some(subscription))),
                Err(EngineError::Closed) => None,
                Err(error) => Some((Err(error), None)),
            }
        })
    }

    /// The next event, waiting for one to commit if the subscriber is caught up. Fails with
    /// [`EngineError::Closed`] once the engine is gone and every committed event was returned.
    pub async fn next(&mut self) -> Result<StoredEvent, EngineError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = event.position;
                return Ok(event);
            }
            let visible = *self.visible.borrow_and_update();
            if visible > self.after {
                let store = Arc::clone(&self.store);
                let after = self.after;
                let limit = CATCH_UP_CHUNK.min((visible.0 - after.0) as usize);
                let _turn = Arc::clone(&self.readers)
                    .acquire_owned()
                    .await
                    .map_err(|_| EngineError::Closed)?;
                let events = tokio::task::spawn_blocking(move || store.read_all(after, limit))
                    .await
                    .map_err(|_| EngineError::Closed)??;
                self.buffer
                    .extend(events.into_iter().filter(|event| event.position <= visible));
                if self.buffer.is_empty() {
                    // The index says nothing is there yet; wait for the next commit.
                    self.visible
                        .changed()
                        .await
                        .map_err(|_| EngineError::Closed)?;
                }
                continue;
            }
            self.visible
                .changed()
                .await
                .map_err(|_| EngineError::Closed)?;
        }
    }
}

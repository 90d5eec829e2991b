//! A sled store for engine tests that watch or steer what the engine asks of its store.

use std::ops::ControlFlow;

use linkflow::store::{
    Commit, CommitError, DedupeHit, DedupeKey, EventStore, Receipt, SledStore, Snapshot,
    StoreError, StoredEvent, StreamStart, StreamsRead, VerifyReport,
};
use linkflow_core::{Position, SessionId, Version};

/// Which [`EventStore`] method was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Commit,
    Sync,
    Head,
    ReadStream,
    ReadAll,
    FindDedupe,
    StreamStart,
    ForEachSnapshot,
    ForEachEvent,
    ForEachIndexKey,
    ForEachCounter,
    Verify,
    ReadStreams,
}

/// What a test does around each call. Every method has a default that changes nothing.
pub trait Watch: Send + Sync + 'static {
    /// Before the call reaches sled; an error is answered instead of calling it.
    fn before(&self, _call: Call) -> Result<(), StoreError> {
        Ok(())
    }

    /// After sled answered (whatever it answered).
    fn after(&self, _call: Call) {}

    /// What the store says about being shared with other processes.
    fn shared(&self) -> bool {
        false
    }
}

/// A sled store with a [`Watch`] around every call. `read_streams` goes to sled's own, whose
/// reads are not seen one by one.
pub struct Watched<W> {
    pub inner: SledStore,
    pub watch: W,
}

impl<W: Watch> Watched<W> {
    fn call<T>(
        &self,
        call: Call,
        run: impl FnOnce(&SledStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.watch.before(call)?;
        let result = run(&self.inner);
        self.watch.after(call);
        result
    }
}

impl<W: Watch> EventStore for Watched<W> {
    fn commit(&self, commit: Commit) -> Result<Receipt, CommitError> {
        self.watch.before(Call::Commit)?;
        let result = self.inner.commit(commit);
        self.watch.after(Call::Commit);
        result
    }
    fn compact(&self, stream: &SessionId, snapshot: Snapshot) -> Result<u64, CommitError> {
        self.watch.before(Call::Commit)?;
        let result = self.inner.compact(stream, snapshot);
        self.watch.after(Call::Commit);
        result
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.call(Call::Sync, |store| store.sync())
    }
    fn head(&self) -> Result<Position, StoreError> {
        self.call(Call::Head, |store| store.head())
    }
    fn numbers_at_commit(&self) -> bool {
        self.inner.numbers_at_commit()
    }
    fn settle(&self) -> Result<Position, StoreError> {
        self.inner.settle()
    }
    fn read_stream(
        &self,
        stream: &SessionId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.call(Call::ReadStream, |store| {
            store.read_stream(stream, after, limit)
        })
    }
    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.call(Call::ReadAll, |store| store.read_all(after, limit))
    }
    fn find_dedupe(
        &self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError> {
        self.call(Call::FindDedupe, |store| store.find_dedupe(stream, key))
    }
    fn folded_with(&self) -> Result<Option<u32>, StoreError> {
        self.inner.folded_with()
    }
    fn set_folded_with(&self, rules: u32) -> Result<(), StoreError> {
        self.inner.set_folded_with(rules)
    }
    fn stream_start(&self, stream: &SessionId) -> Result<StreamStart, StoreError> {
        self.call(Call::StreamStart, |store| store.stream_start(stream))
    }
    fn for_each_snapshot(
        &self,
        after: Option<&SessionId>,
        visit: &mut dyn FnMut(SessionId, Snapshot) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.call(Call::ForEachSnapshot, |store| {
            store.for_each_snapshot(after, visit)
        })
    }
    fn for_each_index_key(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.call(Call::ForEachIndexKey, |store| {
            store.for_each_index_key(from, to, visit)
        })
    }
    fn for_each_index_key_descending(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.call(Call::ForEachIndexKey, |store| {
            store.for_each_index_key_descending(from, to, visit)
        })
    }
    fn for_each_counter(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut linkflow_store::store::CounterVisitor<'_>,
    ) -> Result<(), StoreError> {
        self.call(Call::ForEachCounter, |store| {
            store.for_each_counter(from, to, visit)
        })
    }
    fn for_each_event_by_stream(
        &self,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.call(Call::ForEachEvent, |store| {
            store.for_each_event_by_stream(visit)
        })
    }
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.call(Call::Verify, |store| store.verify())
    }
    fn read_streams(
        &self,
        streams: &[SessionId],
        keys: &[(SessionId, DedupeKey)],
    ) -> Result<StreamsRead, StoreError> {
        self.call(Call::ReadStreams, |store| store.read_streams(streams, keys))
    }
    fn watch_remote_commits(
        &self,
        wake: Box<dyn Fn(Position) + Send + Sync>,
    ) -> Result<bool, StoreError> {
        self.inner.watch_remote_commits(wake)?;
        Ok(self.watch.shared())
    }
}

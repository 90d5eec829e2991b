//! Under `Durability::Fsync` the writer hands each committed group to a sync thread and goes on
//! with the next group. A caller must still be answered only after a sync that covers its
//! group; a failed sync fails every group it covers; shutdown waits for the groups in flight.
//!
//! The store here is sled behind a gate the test holds: its `sync` waits until the test opens
//! the gate, so "the writer committed the next group while the previous sync was running" and
//! "nobody was answered before the sync" are observed, not timed.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use linkflow::store::{
    DedupeHit, DedupeKey, EventStore, Op, OpOutcome, ParkedEvent, SledStore, Snapshot, StoreError,
    StoredEvent, VerifyReport,
};
use linkflow::{Engine, EngineConfig, EngineError, IncomingEvent, IngestOutcome};
use linkflow_core::{Event, EventKind, Position, Provider, SessionId, Version};

#[derive(Default)]
struct GateState {
    /// `sync` returns only while this is true.
    open: bool,
    /// `sync` fails (after the gate) while this is true.
    fail: bool,
    /// What the store was asked to do, in order: `commit`, `sync`, `synced`.
    log: Vec<&'static str>,
}

/// A sled store whose syncs wait for the test.
struct GatedStore {
    inner: SledStore,
    state: Mutex<GateState>,
    changed: std::sync::Condvar,
}

impl GatedStore {
    fn new(inner: SledStore) -> Self {
        GatedStore {
            inner,
            state: Mutex::new(GateState {
                open: true,
                ..GateState::default()
            }),
            changed: std::sync::Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap()
    }

    fn set(&self, change: impl FnOnce(&mut GateState)) {
        change(&mut self.state());
        self.changed.notify_all();
    }

    fn count(&self, what: &str) -> usize {
        self.state()
            .log
            .iter()
            .filter(|entry| **entry == what)
            .count()
    }

    /// Waits (without blocking the runtime) until `done` holds; a generous deadline only
    /// turns a hang into a failure.
    async fn until(&self, what: &str, done: impl Fn(&GateState) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&self.state()) {
            assert!(Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl EventStore for GatedStore {
    fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpOutcome>, StoreError> {
        let outcomes = self.inner.commit(ops);
        self.set(|state| state.log.push("commit"));
        outcomes
    }
    fn sync(&self) -> Result<(), StoreError> {
        let mut state = self.state();
        state.log.push("sync");
        self.changed.notify_all();
        while !state.open {
            state = self.changed.wait(state).unwrap();
        }
        let fail = state.fail;
        drop(state);
        let result = if fail {
            Err(StoreError::Backend("the disk said no".into()))
        } else {
            self.inner.sync()
        };
        self.set(|state| state.log.push("synced"));
        result
    }
    fn head(&self) -> Result<Position, StoreError> {
        self.inner.head()
    }
    fn stream_version(&self, stream: &SessionId) -> Result<Version, StoreError> {
        self.inner.stream_version(stream)
    }
    fn read_stream(
        &self,
        stream: &SessionId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_stream(stream, after, limit)
    }
    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_all(after, limit)
    }
    fn find_dedupe(
        &self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError> {
        self.inner.find_dedupe(stream, key)
    }
    fn parked(&self, stream: Option<&SessionId>) -> Result<Vec<ParkedEvent>, StoreError> {
        self.inner.parked(stream)
    }
    fn snapshot(&self, stream: &SessionId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.snapshot(stream)
    }
    fn stream_is_empty(&self, stream: &SessionId) -> Result<Option<bool>, StoreError> {
        self.inner.stream_is_empty(stream)
    }
    fn for_each_snapshot(
        &self,
        visit: &mut dyn FnMut(SessionId, Snapshot) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.inner.for_each_snapshot(visit)
    }
    fn for_each_event_by_stream(
        &self,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.inner.for_each_event_by_stream(visit)
    }
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.inner.verify()
    }
}

fn opened(session: &str) -> IncomingEvent {
    IncomingEvent::new(
        SessionId::new(session).unwrap(),
        Provider::Moneykit,
        Event::new(EventKind::Opened),
    )
}

fn open_gated() -> (tempfile::TempDir, Arc<GatedStore>, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(GatedStore::new(SledStore::open(dir.path()).unwrap()));
    let engine = Engine::open_with(EngineConfig::with_store(store.clone())).unwrap();
    // Opening syncs once (whatever an earlier run left becomes durable before anyone sees it).
    assert_eq!(store.state().log, ["sync", "synced"]);
    store.set(|state| state.log.clear());
    (dir, store, engine)
}

fn spawn_ingest(
    engine: &Engine,
    session: &str,
) -> tokio::task::JoinHandle<Result<IngestOutcome, EngineError>> {
    let engine = engine.clone();
    let event = opened(session);
    tokio::spawn(async move { engine.ingest(event).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_answered_after_its_sync_and_the_next_group_commits_meanwhile() {
    let (_dir, store, engine) = open_gated();
    store.set(|state| state.open = false);

    let first = spawn_ingest(&engine, "a");
    store
        .until("the first group's sync starts", |state| {
            state.log == ["commit", "sync"]
        })
        .await;
    let second = spawn_ingest(&engine, "b");
    store
        .until("the second group commits during the first sync", |state| {
            state.log == ["commit", "sync", "commit"]
        })
        .await;
    assert!(
        !first.is_finished() && !second.is_finished(),
        "nobody is answered before a sync covers their group"
    );

    store.set(|state| state.open = true);
    for (handle, version) in [(first, 1), (second, 1)] {
        match handle.await.unwrap().unwrap() {
            IngestOutcome::Accepted { version: got, .. } => assert_eq!(got, Version(version)),
            other => panic!("accepted, got {other:?}"),
        }
    }
    // The second group had its own sync after the first one ended.
    store
        .until("both syncs end", |state| {
            state.log == ["commit", "sync", "commit", "synced", "sync", "synced"]
        })
        .await;
    assert_eq!(engine.head().unwrap(), Position(2));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_committed_during_a_sync_share_the_next_one() {
    let (_dir, store, engine) = open_gated();
    store.set(|state| state.open = false);

    let first = spawn_ingest(&engine, "a");
    store
        .until("the first sync starts", |state| {
            state.log == ["commit", "sync"]
        })
        .await;
    // Three more callers, each its own group (the writer is free: the sync thread waits).
    let mut later = Vec::new();
    for (n, session) in ["b", "c", "d"].into_iter().enumerate() {
        later.push(spawn_ingest(&engine, session));
        store
            .until("the next group commits", |state| {
                state.log.iter().filter(|entry| **entry == "commit").count() == n + 2
            })
            .await;
    }
    store.set(|state| state.open = true);
    first.await.unwrap().unwrap();
    for handle in later {
        handle.await.unwrap().unwrap();
    }
    assert_eq!(
        store.count("sync"),
        2,
        "one sync for the first group, one for the three committed while it ran: {:?}",
        store.state().log
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_fails_every_group_it_covers_and_a_retry_is_recognised() {
    let (_dir, store, engine) = open_gated();
    store.set(|state| state.fail = true);
    let error = engine.ingest(opened("a")).await.unwrap_err();
    assert!(error.to_string().contains("the disk said no"), "{error}");

    store.set(|state| state.fail = false);
    // The event was committed, only its durability was not confirmed: a retry is a duplicate
    // of it, not a second copy.
    match engine.ingest(opened("a")).await.unwrap() {
        IngestOutcome::Duplicate { .. } => {}
        other => panic!("a duplicate, got {other:?}"),
    }
    match engine.ingest(opened("b")).await.unwrap() {
        IngestOutcome::Accepted { position, .. } => assert_eq!(position, Position(2)),
        other => panic!("accepted, got {other:?}"),
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_groups_in_flight_after_their_sync() {
    let (_dir, store, engine) = open_gated();
    store.set(|state| state.open = false);
    let first = spawn_ingest(&engine, "a");
    store
        .until("the group's sync starts", |state| {
            state.log == ["commit", "sync"]
        })
        .await;
    let stopping = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.shutdown().await })
    };
    // Give the shutdown request every chance to overtake the group: it must not.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!first.is_finished() && !stopping.is_finished());
    store.set(|state| state.open = true);
    first.await.unwrap().unwrap();
    stopping.await.unwrap().unwrap();
    assert_eq!(
        store.state().log,
        ["commit", "sync", "synced", "sync", "synced"],
        "the group's sync, then shutdown's last one"
    );
    assert!(matches!(
        engine.ingest(opened("b")).await,
        Err(EngineError::Closed)
    ));
}

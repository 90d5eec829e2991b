//! Under `Durability::Fsync` the writer hands each committed group to a sync thread and goes on
//! with the next group. A caller must still be answered only after a sync that covers its
//! group; a failed sync fails every group it covers; shutdown waits for the groups in flight.
//! Most tests pin one sync thread, where the order of commits and syncs is fixed; the last ones
//! run the default two, where a group committed during a sync starts its own.
//!
//! The store here is sled behind a gate the test holds: its `sync` waits until the test opens
//! the gate, so "the writer committed the next group while the previous sync was running" and
//! "nobody was answered before the sync" are observed, not timed.

mod support;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use linkflow::store::{SledStore, StoreError};
use linkflow::{Engine, EngineConfig, EngineError, IncomingEvent, IngestOutcome};
use linkflow_core::{Event, EventKind, Position, Provider, SessionId, Version};
use support::{Call, Watch, Watched};

#[derive(Default)]
struct GateState {
    /// `sync` returns only while this is true.
    open: bool,
    /// `sync` fails (after the gate) while this is true.
    fail: bool,
    /// What the store was asked to do, in order: `commit`, `sync`, `synced`.
    log: Vec<&'static str>,
}

/// Holds every sync until the test opens the gate, and logs commits and syncs.
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Watch for Gate {
    fn before(&self, call: Call) -> Result<(), StoreError> {
        if call != Call::Sync {
            return Ok(());
        }
        let mut state = self.state();
        state.log.push("sync");
        self.changed.notify_all();
        while !state.open {
            state = self.changed.wait(state).unwrap();
        }
        if state.fail {
            state.log.push("synced");
            return Err(StoreError::Internal("the disk said no".into()));
        }
        Ok(())
    }

    fn after(&self, call: Call) {
        match call {
            Call::Commit => self.set(|state| state.log.push("commit")),
            Call::Sync => self.set(|state| state.log.push("synced")),
            _ => {}
        }
    }
}

impl Gate {
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

fn opened(session: &str) -> IncomingEvent {
    IncomingEvent::new(
        SessionId::new(session).unwrap(),
        Provider::Moneykit,
        Event::new(EventKind::Opened),
    )
}

fn open_gated() -> (tempfile::TempDir, Arc<Watched<Gate>>, Engine) {
    open_gated_with(1)
}

fn open_gated_with(sync_threads: usize) -> (tempfile::TempDir, Arc<Watched<Gate>>, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Watched {
        inner: SledStore::open(dir.path()).unwrap(),
        watch: Gate {
            state: Mutex::new(GateState {
                open: true,
                ..GateState::default()
            }),
            changed: Condvar::new(),
        },
    });
    let mut config = EngineConfig::with_store(store.clone());
    config.sync_threads = sync_threads;
    let engine = Engine::open_with(config).unwrap();
    // Opening syncs once (whatever an earlier run left becomes durable before anyone sees it).
    assert_eq!(store.watch.state().log, ["sync", "synced"]);
    store.watch.set(|state| state.log.clear());
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

/// With two sync threads: holds the first group at its sync (as below), then ingests one event
/// for `second` and returns once that group's own sync waits at the gate too.
async fn two_groups_held_at_their_syncs(
    engine: &Engine,
    gate: &Gate,
    first: &str,
    second: &str,
) -> [tokio::task::JoinHandle<Result<IngestOutcome, EngineError>>; 2] {
    let first = first_group_held_at_sync(engine, gate, first).await;
    let second = spawn_ingest(engine, second);
    gate.until(
        "the second group's sync starts while the first is held",
        |state| state.log == ["commit", "sync", "commit", "sync"],
    )
    .await;
    [first, second]
}

/// Closes the gate and ingests one event for `session`; returns once its group is committed and
/// its sync is waiting at the gate.
async fn first_group_held_at_sync(
    engine: &Engine,
    gate: &Gate,
    session: &str,
) -> tokio::task::JoinHandle<Result<IngestOutcome, EngineError>> {
    gate.set(|state| state.open = false);
    let first = spawn_ingest(engine, session);
    gate.until("the first group's sync starts", |state| {
        state.log == ["commit", "sync"]
    })
    .await;
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_answered_after_its_sync_and_the_next_group_commits_meanwhile() {
    let (_dir, store, engine) = open_gated();
    let gate = &store.watch;
    let first = first_group_held_at_sync(&engine, gate, "a").await;
    let second = spawn_ingest(&engine, "b");
    gate.until("the second group commits during the first sync", |state| {
        state.log == ["commit", "sync", "commit"]
    })
    .await;
    assert!(
        !first.is_finished() && !second.is_finished(),
        "nobody is answered before a sync covers their group"
    );

    gate.set(|state| state.open = true);
    for (handle, version) in [(first, 1), (second, 1)] {
        match handle.await.unwrap().unwrap() {
            IngestOutcome::Accepted { version: got, .. } => assert_eq!(got, Version(version)),
            other => panic!("accepted, got {other:?}"),
        }
    }
    // The second group had its own sync after the first one ended.
    gate.until("both syncs end", |state| {
        state.log == ["commit", "sync", "commit", "synced", "sync", "synced"]
    })
    .await;
    assert_eq!(engine.head().unwrap(), Position(2));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_committed_during_a_sync_share_the_next_one() {
    let (_dir, store, engine) = open_gated();
    let gate = &store.watch;
    let first = first_group_held_at_sync(&engine, gate, "a").await;
    // Three more callers, each its own group (the writer is free: the sync thread waits).
    let mut later = Vec::new();
    for (n, session) in ["b", "c", "d"].into_iter().enumerate() {
        later.push(spawn_ingest(&engine, session));
        gate.until("the next group commits", |state| {
            state.log.iter().filter(|entry| **entry == "commit").count() == n + 2
        })
        .await;
    }
    gate.set(|state| state.open = true);
    first.await.unwrap().unwrap();
    for handle in later {
        handle.await.unwrap().unwrap();
    }
    assert_eq!(
        gate.count("sync"),
        2,
        "one sync for the first group, one for the three committed while it ran: {:?}",
        gate.state().log
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_fails_its_groups_and_the_engine_takes_no_more_writes() {
    for sync_threads in [1, 2] {
        let (_dir, store, engine) = open_gated_with(sync_threads);
        let gate = &store.watch;
        gate.set(|state| state.fail = true);
        let error = engine.ingest(opened("a")).await.unwrap_err();
        assert!(error.to_string().contains("the disk said no"), "{error}");

        // Fail-stop (issue 25, finding 3): what the disk holds after a failed sync is unknown,
        // so nothing more is acknowledged, even once the disk answers again; the reason is
        // reported, and reads keep working.
        gate.set(|state| state.fail = false);
        let refused = engine.ingest(opened("b")).await.unwrap_err();
        assert!(
            matches!(&refused, EngineError::Store(store) if matches!(**store, StoreError::Failed { .. })),
            "{refused:?}"
        );
        let health = engine.health().unwrap_err().to_string();
        assert!(health.contains("the disk said no"), "{health}");
        assert!(engine
            .session(&SessionId::new("a").unwrap())
            .await
            .unwrap()
            .is_some());
        engine.shutdown().await.unwrap();
        drop(engine);

        // Reopened: the event committed before the failure is recognised, a retry is a
        // duplicate of it, and writing goes on.
        let reopened = Engine::open_with(EngineConfig::with_store(store.clone())).unwrap();
        assert!(reopened.health().is_ok());
        match reopened.ingest(opened("a")).await.unwrap() {
            IngestOutcome::Duplicate { .. } => {}
            other => panic!("a duplicate with {sync_threads} sync threads, got {other:?}"),
        }
        match reopened.ingest(opened("b")).await.unwrap() {
            IngestOutcome::Accepted { position, .. } => assert_eq!(position, Position(2)),
            other => panic!("accepted with {sync_threads} sync threads, got {other:?}"),
        }
        reopened.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_groups_in_flight_after_their_sync() {
    let (_dir, store, engine) = open_gated();
    let gate = &store.watch;
    let first = first_group_held_at_sync(&engine, gate, "a").await;
    let stopping = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.shutdown().await })
    };
    // Give the shutdown request every chance to overtake the group: it must not.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!first.is_finished() && !stopping.is_finished());
    gate.set(|state| state.open = true);
    first.await.unwrap().unwrap();
    stopping.await.unwrap().unwrap();
    assert_eq!(
        gate.state().log,
        ["commit", "sync", "synced", "sync", "synced"],
        "the group's sync, then shutdown's last one"
    );
    assert!(matches!(
        engine.ingest(opened("b")).await,
        Err(EngineError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_stats_split_each_request_at_its_commit_and_its_sync() {
    const HELD: Duration = Duration::from_millis(30);
    let (_dir, store, engine) = open_gated();
    let gate = &store.watch;
    assert_eq!(engine.write_stats(), linkflow::WriteStats::default());
    let first = first_group_held_at_sync(&engine, gate, "a").await;
    let second = spawn_ingest(&engine, "b");
    gate.until("the second group commits during the first sync", |state| {
        state.log == ["commit", "sync", "commit"]
    })
    .await;
    // The first request is in its sync, the second waits for the sync thread, both for at
    // least as long as the gate stays shut.
    tokio::time::sleep(HELD).await;
    gate.set(|state| state.open = true);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();

    let stats = engine.write_stats();
    assert_eq!((stats.requests, stats.events), (2, 2), "{stats:?}");
    assert_eq!((stats.groups, stats.syncs), (2, 2), "{stats:?}");
    assert!(stats.syncing >= HELD, "{stats:?}");
    assert!(stats.waiting_for_sync >= HELD, "{stats:?}");
    assert!(stats.sync_busy >= HELD, "{stats:?}");
    assert!(stats.committing > Duration::ZERO, "{stats:?}");
    assert!(stats.writer_busy >= stats.committing, "{stats:?}");

    // One call with three events is one request.
    let batch = ["c", "d", "e"].map(opened).to_vec();
    engine.ingest_batch(batch).await.unwrap();
    let stats = engine.write_stats();
    assert_eq!((stats.requests, stats.events), (3, 5), "{stats:?}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_durability_has_no_sync_in_its_write_stats() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.durability = linkflow::Durability::Buffered;
    let engine = Engine::open_with(config).unwrap();
    for session in ["a", "b", "c"] {
        engine.ingest(opened(session)).await.unwrap();
    }
    let stats = engine.write_stats();
    assert_eq!((stats.requests, stats.events), (3, 3), "{stats:?}");
    assert!(stats.groups >= 1, "{stats:?}");
    assert_eq!(stats.syncs, 0, "{stats:?}");
    assert_eq!(stats.waiting_for_sync + stats.syncing, Duration::ZERO);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_sync_threads_a_group_committed_during_a_sync_starts_its_own() {
    let (_dir, store, engine) = open_gated_with(2);
    let gate = &store.watch;
    let [first, second] = two_groups_held_at_their_syncs(&engine, gate, "a", "b").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !first.is_finished() && !second.is_finished(),
        "nobody is answered before a sync covers their group"
    );
    gate.set(|state| state.open = true);
    for handle in [first, second] {
        assert!(matches!(
            handle.await.unwrap().unwrap(),
            IngestOutcome::Accepted { .. }
        ));
    }
    let stats = engine.write_stats();
    assert_eq!((stats.groups, stats.syncs), (2, 2), "{stats:?}");
    assert_eq!(engine.head().unwrap(), Position(2));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_sync_threads_shutdown_waits_for_both_syncs_then_syncs_last() {
    let (_dir, store, engine) = open_gated_with(2);
    let gate = &store.watch;
    let [first, second] = two_groups_held_at_their_syncs(&engine, gate, "a", "b").await;
    let stopping = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.shutdown().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!first.is_finished() && !second.is_finished() && !stopping.is_finished());
    assert_eq!(gate.count("sync"), 2, "no third sync while two are held");
    gate.set(|state| state.open = true);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    stopping.await.unwrap().unwrap();
    let log = gate.state().log.clone();
    assert_eq!(log.len(), 8, "{log:?}");
    assert_eq!(
        log[4..],
        ["synced", "synced", "sync", "synced"],
        "both held syncs end before shutdown's last one starts: {log:?}"
    );
    assert!(matches!(
        engine.ingest(opened("c")).await,
        Err(EngineError::Closed)
    ));
}

#[test]
fn zero_or_too_many_sync_threads_are_refused() {
    for threads in [0, 17, usize::MAX] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        config.sync_threads = threads;
        match Engine::open_with(config) {
            Err(EngineError::InvalidConfig(message)) => {
                assert!(message.contains("sync_threads"), "{threads}: {message}")
            }
            Err(other) => panic!("InvalidConfig for {threads}, got {other:?}"),
            Ok(_) => panic!("InvalidConfig for {threads}, got an engine"),
        }
    }
}

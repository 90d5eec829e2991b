//! Many writers on the same sessions: nothing lost, nothing duplicated, conflicts reported.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use chrono::{TimeZone, Utc};
use linkflow::store::{Append, Commit, CommitError, DedupeKey, EventStore, NewEvent, SledStore};
use linkflow::{Engine, IncomingEvent, IngestOutcome};
use linkflow_core::{Event, EventBody, EventKind, Position, Provider, SessionId, Version};

const THREADS: u64 = 8;
const STREAMS: u64 = 3;
const EVENTS_PER_THREAD: u64 = 40;

fn new_event(thread: u64, n: u64) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        dedupe_key: DedupeKey::derive(&[&thread.to_be_bytes(), &n.to_be_bytes()]),
        provider: Provider::Knot,
        body: EventBody::Session(Event::new(EventKind::ScreenChanged)),
        raw_name: None,
        raw: None,
        received_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
    }
}

/// Optimistic concurrency on the store itself: every thread reads a stream's version and
/// appends with that expected version, retrying on conflict. All threads start together, so
/// the first round has one winner per stream and conflicts for the rest.
#[test]
fn writers_with_expected_versions_lose_nothing_and_see_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut conflicts = 0u64;
                let mut started = false;
                for n in 0..EVENTS_PER_THREAD {
                    let stream = SessionId::new(format!("shared-{}", n % STREAMS)).unwrap();
                    loop {
                        let expected = store.stream_start(&stream).unwrap().version;
                        if !started {
                            // Everyone read version 0 before anyone appends.
                            barrier.wait();
                            started = true;
                        }
                        match store.commit(Commit {
                            appends: vec![Append {
                                stream: stream.clone(),
                                expected,
                                event: new_event(thread, n),
                                stored_at: Utc::now(),
                                rejected: false,
                            }],
                            snapshots: Vec::new(),
                            ..Commit::default()
                        }) {
                            Ok(receipt) => {
                                assert_eq!(receipt.appended[0].version, expected.next());
                                break;
                            }
                            Err(CommitError::Conflict {
                                stream: conflicted,
                                expected: stale,
                                actual,
                            }) => {
                                assert_eq!(conflicted, stream);
                                assert_eq!(stale, expected);
                                assert!(actual > stale, "a conflict means someone got ahead");
                                conflicts += 1;
                            }
                            Err(other) => panic!("unexpected error: {other}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(
        conflicts >= THREADS - 1,
        "only {conflicts} conflicts were reported"
    );

    let all = store.read_all(Position::START, usize::MAX).unwrap();
    assert_eq!(all.len() as u64, THREADS * EVENTS_PER_THREAD);
    let keys: HashSet<_> = all.iter().map(|event| event.data.dedupe_key).collect();
    assert_eq!(keys.len(), all.len(), "an event was stored twice");
    for stream in 0..STREAMS {
        let id = SessionId::new(format!("shared-{stream}")).unwrap();
        let events = store.read_stream(&id, Version::EMPTY, usize::MAX).unwrap();
        let versions: Vec<u64> = events.iter().map(|event| event.version.0).collect();
        assert_eq!(versions, (1..=events.len() as u64).collect::<Vec<_>>());
    }
    assert!(store.verify().unwrap().is_clean());
}

/// Through the engine, concurrent tasks need no expected version: the writer serializes each
/// session's events, and every event lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingests_into_shared_sessions_land_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|task| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut positions = Vec::new();
                for n in 0..25u64 {
                    let session = SessionId::new(format!("s{}", (task + n) % 4)).unwrap();
                    let event = Event::new(EventKind::ScreenChanged).at(Utc
                        .timestamp_opt(1_700_000_000 + (task * 100 + n) as i64, 0)
                        .unwrap());
                    let outcome = engine
                        .ingest(IncomingEvent::new(session, Provider::Moneykit, event))
                        .await
                        .unwrap();
                    match outcome {
                        IngestOutcome::Accepted { position, .. } => positions.push(position.0),
                        other => panic!("expected accepted, got {other:?}"),
                    }
                }
                positions
            })
        })
        .collect();
    let mut positions = Vec::new();
    for task in tasks {
        positions.extend(task.await.unwrap());
    }
    positions.sort_unstable();
    assert_eq!(positions, (1..=400).collect::<Vec<u64>>());
    let mut total = 0;
    for session in 0..4 {
        let id = SessionId::new(format!("s{session}")).unwrap();
        let history = engine.history(&id).await.unwrap().unwrap();
        // The history is in event-time order; its versions (arrival numbers) are gap-free.
        let times: Vec<_> = history.iter().map(|entry| entry.event_time).collect();
        assert!(times.windows(2).all(|pair| pair[0] <= pair[1]));
        let mut versions: Vec<u64> = history.iter().map(|entry| entry.version.0).collect();
        versions.sort_unstable();
        assert_eq!(versions, (1..=history.len() as u64).collect::<Vec<_>>());
        total += history.len();
    }
    assert_eq!(total, 400);
    assert!(engine.verify().await.unwrap().is_clean());
}

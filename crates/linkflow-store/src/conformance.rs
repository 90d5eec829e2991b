//! The storage contract as tests, written once and run against every backend.
//!
//! A backend provides a [`Harness`] (a fresh, empty store location that can be opened, dropped
//! and opened again) and expands [`conformance_tests!`](crate::conformance_tests) in its test
//! module:
//!
//! ```ignore
//! linkflow_store::conformance_tests!(linkflow_store::conformance::SledHarness);
//! ```

use std::ops::ControlFlow;

use chrono::{TimeZone, Utc};
use linkflow_core::{Event, EventBody, EventKind, Position, Provider, SessionId, Version};
use uuid::Uuid;

use crate::record::{DedupeKey, NewEvent, RawJson, Snapshot, MAX_RECORD_BYTES};
use crate::store::{Append, Commit, CounterDelta, DedupeHit, EventStore, Placed, StreamRead};
use crate::{CommitError, SledStore, StoreError};

/// A fresh store location for one test.
pub trait Harness {
    /// The backend under test.
    type Store: EventStore;
    /// A new, empty location.
    fn fresh() -> Self;
    /// Opens the store at this location (again, after the previous handle was dropped).
    fn open(&self) -> Self::Store;
    /// False when the backend cannot run on this machine (a database server that is not
    /// installed): the case is skipped. The harness says so loudly, and decides whether a skip
    /// is allowed at all (not under `CI=true`).
    fn available(_case: &str) -> bool {
        true
    }
}

/// The sled backend in a temporary directory.
pub struct SledHarness {
    dir: tempfile::TempDir,
}

impl Harness for SledHarness {
    type Store = SledStore;

    fn fresh() -> Self {
        SledHarness {
            dir: tempfile::tempdir().expect("a temporary directory can be created"),
        }
    }

    fn open(&self) -> SledStore {
        SledStore::open(self.dir.path()).expect("the store opens")
    }
}

/// Expands to one `#[test]` per conformance case for `$harness`.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:ty) => {
        $crate::conformance_tests!(@cases $harness;
            appends_assign_gap_free_versions_and_positions,
            a_stale_expected_version_conflicts_and_writes_nothing,
            a_stored_dedupe_key_is_refused_and_nothing_is_written,
            a_dedupe_key_repeated_within_one_commit_is_refused,
            a_retry_by_a_stale_writer_is_a_duplicate_key_not_a_conflict,
            reads_start_after_the_given_version_and_position_and_respect_limits,
            streams_whose_ids_share_a_prefix_stay_apart,
            an_event_keeps_its_stored_time_and_rejected_flag,
            snapshots_are_replaced_and_listed,
            stream_start_says_whether_a_stream_is_empty_and_gives_its_snapshot,
            everything_survives_a_reopen,
            raw_payloads_are_kept_verbatim,
            an_oversized_event_is_refused_and_nothing_is_stored,
            verify_is_clean_after_a_mixed_workload,
            events_by_stream_come_in_stream_then_version_order,
            a_snapshot_guards_the_version_it_was_folded_at,
            read_streams_returns_snapshots_tails_and_dedupe_hits,
            a_long_stream_dedupes_every_key_across_many_commits,
            the_rules_marker_is_kept_across_a_reopen,
            a_closed_store_takes_no_writes_and_keeps_its_reads,
            index_entries_commit_with_their_events_and_walk_in_byte_order,
            thousands_of_index_entries_walk_as_a_model_says,
            counters_sum_their_deltas_and_vanish_at_zero,
            a_refused_commit_writes_no_index_entry_or_counter,
            compaction_keeps_a_streams_place_and_dedupe_keys_and_reads_skip_it,
        );
    };
    (@cases $harness:ty; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if <$harness as $crate::conformance::Harness>::available(stringify!($case)) {
                    $crate::conformance::$case::<$harness>();
                }
            }
        )*
    };
}

/// A session id for tests.
pub fn stream(id: &str) -> SessionId {
    SessionId::new(id).expect("test session ids are valid")
}

/// A distinct event numbered `n`, with a dedupe key derived from `n`.
pub fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        dedupe_key: DedupeKey::derive(&[b"conformance", &n.to_be_bytes()]),
        provider: Provider::Moneykit,
        body: EventBody::Session(
            Event::new(EventKind::ScreenChanged).with_screen(format!("screen {n}")),
        ),
        raw_name: Some("change_screen".into()),
        raw: Some(
            RawJson::from_string(format!("{{\"name\": \"change_screen\", \"n\": {n}}}"))
                .expect("valid JSON"),
        ),
        received_at: Utc
            .timestamp_millis_opt(1_700_000_000_000 + n as i64)
            .single()
            .expect("a valid time"),
    }
}

/// The version an append of these tests expects.
#[derive(Debug, Clone, Copy)]
enum ExpectedVersion {
    /// Its stream's version as the store and the commit's earlier appends leave it.
    Next,
    /// This one.
    Exact(Version),
}

/// One part of a commit these tests make (a test helper: the size of its variants does not
/// matter).
#[allow(clippy::large_enum_variant)]
enum Item {
    Append(ExpectedVersion, Append),
    Snapshot(SessionId, Snapshot),
}

/// Commits `items`, numbering each `Next` append after its stream's version (read from the
/// store, then counted through the commit): what a writer that read the stream would send.
fn commit<S: EventStore>(store: &S, items: Vec<Item>) -> Result<Vec<Placed>, CommitError> {
    let mut versions: std::collections::HashMap<SessionId, Version> = Default::default();
    let mut commit = Commit::default();
    for item in items {
        match item {
            Item::Append(expected, mut append) => {
                let version = match expected {
                    ExpectedVersion::Exact(version) => version,
                    ExpectedVersion::Next => match versions.get(&append.stream) {
                        Some(version) => *version,
                        None => store.stream_start(&append.stream)?.version,
                    },
                };
                append.expected = version;
                versions.insert(append.stream.clone(), version.next());
                commit.appends.push(append);
            }
            Item::Snapshot(stream, snapshot) => commit.snapshots.push((stream, snapshot)),
        }
    }
    let streams: Vec<SessionId> = commit.appends.iter().map(|a| a.stream.clone()).collect();
    let placed = store.commit(commit)?.appended;
    if store.numbers_at_commit() {
        return Ok(placed);
    }
    // A store that numbers after commit: the receipt says "not yet", and once the numbering
    // settles each event's position is the one a store numbering at commit would have given.
    assert!(
        placed.iter().all(|placed| placed.position.is_pending()),
        "a store that numbers after commit answers pending positions: {placed:?}"
    );
    store.settle()?;
    streams
        .into_iter()
        .zip(placed)
        .map(|(stream, placed)| {
            let read = store.read_stream(&stream, Version(placed.version.0 - 1), 1)?;
            let event = read.first().expect("a committed event is read back");
            assert!(!event.position.is_pending(), "settled: {event:?}");
            Ok(Placed {
                version: placed.version,
                position: event.position,
            })
        })
        .collect()
}

fn append(stream: &SessionId, expected: ExpectedVersion, event: NewEvent) -> Item {
    Item::Append(
        expected,
        Append {
            stream: stream.clone(),
            expected: Version::EMPTY,
            stored_at: event.received_at,
            event,
            rejected: false,
        },
    )
}

/// An append of an event the stream's fold rejected when it was stored.
fn rejected(stream: &SessionId, event: NewEvent) -> Item {
    Item::Append(
        ExpectedVersion::Next,
        Append {
            stream: stream.clone(),
            expected: Version::EMPTY,
            stored_at: event.received_at,
            event,
            rejected: true,
        },
    )
}

fn put_snapshot(stream: &SessionId, snapshot: Snapshot) -> Item {
    Item::Snapshot(stream.clone(), snapshot)
}

fn appended(placed: &Placed) -> (Version, Position) {
    (placed.version, placed.position)
}

fn assert_clean<S: EventStore>(store: &S) {
    let report = store.verify().expect("verify runs");
    assert!(
        report.is_clean(),
        "verify found problems: {:#?}",
        report.problems
    );
}

/// Versions start at 1 per stream and positions at 1 over all streams, without gaps.
pub fn appends_assign_gap_free_versions_and_positions<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let (a, b) = (stream("a"), stream("b"));
    let outcomes = commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Exact(Version(0)), event(1)),
            append(&b, ExpectedVersion::Exact(Version(0)), event(2)),
            append(&a, ExpectedVersion::Exact(Version(1)), event(3)),
        ],
    )
    .unwrap();
    let got: Vec<_> = outcomes.iter().map(appended).collect();
    // Within a commit, positions go stream by stream in order of first appearance.
    assert_eq!(
        got,
        vec![
            (Version(1), Position(1)),
            (Version(1), Position(3)),
            (Version(2), Position(2)),
        ]
    );
    let outcomes = commit(&store, vec![append(&b, ExpectedVersion::Next, event(4))]).unwrap();
    assert_eq!(appended(&outcomes[0]), (Version(2), Position(4)));
    assert_eq!(store.settle().unwrap(), Position(4));
    assert_eq!(store.stream_start(&a).unwrap().version, Version(2));
    assert_eq!(
        store.stream_start(&stream("none")).unwrap().version,
        Version(0)
    );
    assert_clean(&store);
}

/// A writer with a stale expected version gets a conflict naming both versions, and nothing of
/// its commit is written, not even the operations before the conflicting one.
pub fn a_stale_expected_version_conflicts_and_writes_nothing<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let a = stream("a");
    commit(
        &store,
        vec![append(&a, ExpectedVersion::Exact(Version(0)), event(1))],
    )
    .unwrap();
    let error = commit(
        &store,
        vec![
            append(&stream("b"), ExpectedVersion::Next, event(2)),
            append(&a, ExpectedVersion::Exact(Version(0)), event(3)),
        ],
    )
    .unwrap_err();
    match error {
        CommitError::Conflict {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(stream, a);
            assert_eq!(expected, Version(0));
            assert_eq!(actual, Version(1));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(store.settle().unwrap(), Position(1));
    assert_eq!(
        store.stream_start(&stream("b")).unwrap().version,
        Version(0)
    );
    assert_eq!(
        store
            .find_dedupe(&stream("b"), &event(2).dedupe_key)
            .unwrap(),
        None
    );
    assert_clean(&store);
}

/// Appending a dedupe key its stream holds is a typed error naming the stream and the key, and
/// nothing of the commit is written. Keys are scoped to their stream: the same key on another
/// stream is another event, and `find_dedupe` says where the original went.
pub fn a_stored_dedupe_key_is_refused_and_nothing_is_written<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let a = stream("a");
    commit(&store, vec![append(&a, ExpectedVersion::Next, event(1))]).unwrap();
    let error = commit(
        &store,
        vec![
            append(&stream("b"), ExpectedVersion::Next, event(2)),
            append(&a, ExpectedVersion::Next, event(1)),
        ],
    )
    .unwrap_err();
    assert_duplicate_key(&error, &a, 1);
    assert_eq!(store.settle().unwrap(), Position(1));
    assert_eq!(store.stream_start(&a).unwrap().version, Version(1));
    assert_eq!(
        store.stream_start(&stream("b")).unwrap().version,
        Version(0)
    );
    assert_eq!(
        store.find_dedupe(&a, &event(1).dedupe_key).unwrap(),
        Some(DedupeHit {
            stream: a.clone(),
            version: Version(1),
            position: Position(1),
        })
    );
    let outcomes = commit(
        &store,
        vec![append(&stream("other"), ExpectedVersion::Next, event(1))],
    )
    .unwrap();
    assert_eq!(appended(&outcomes[0]), (Version(1), Position(2)));
    assert_clean(&store);
}

fn assert_duplicate_key(error: &CommitError, expected_stream: &SessionId, n: u64) {
    match error {
        CommitError::DuplicateKey { stream, key } => {
            assert_eq!(stream, expected_stream);
            assert_eq!(*key, event(n).dedupe_key);
        }
        other => panic!("expected a duplicate key, got {other}"),
    }
}

/// A key appended twice in one commit is refused like a stored one: the commit writes nothing.
pub fn a_dedupe_key_repeated_within_one_commit_is_refused<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let a = stream("a");
    let error = commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Next, event(1)),
            rejected(&a, event(1)),
        ],
    )
    .unwrap_err();
    assert_duplicate_key(&error, &a, 1);
    assert_eq!(store.settle().unwrap(), Position::START);
    assert_eq!(store.stream_start(&a).unwrap().version, Version::EMPTY);
    assert_clean(&store);
}

/// A stale writer retrying a stored event learns that the key is stored (not merely that the
/// version moved), so that it reads again and answers a duplicate.
pub fn a_retry_by_a_stale_writer_is_a_duplicate_key_not_a_conflict<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let a = stream("a");
    commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Exact(Version(0)), event(1)),
            append(&a, ExpectedVersion::Exact(Version(1)), event(2)),
        ],
    )
    .unwrap();
    let error = commit(
        &store,
        vec![append(&a, ExpectedVersion::Exact(Version(0)), event(1))],
    )
    .unwrap_err();
    assert_duplicate_key(&error, &a, 1);
}

/// Reads return what follows the given version or position, in order, up to the limit.
pub fn reads_start_after_the_given_version_and_position_and_respect_limits<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let (a, b) = (stream("a"), stream("b"));
    let ops = (1..=10)
        .map(|n| {
            append(
                if n % 2 == 0 { &a } else { &b },
                ExpectedVersion::Next,
                event(n),
            )
        })
        .collect();
    commit(&store, ops).unwrap();
    let tail = store.read_stream(&a, Version(2), 100).unwrap();
    let versions: Vec<u64> = tail.iter().map(|e| e.version.0).collect();
    assert_eq!(versions, vec![3, 4, 5]);
    assert!(tail.iter().all(|e| e.stream == a));
    let limited = store.read_stream(&a, Version(0), 2).unwrap();
    assert_eq!(limited.len(), 2);
    let all = store.read_all(Position(7), 100).unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, vec![8, 9, 10]);
    assert_eq!(store.read_all(Position(0), 3).unwrap().len(), 3);
    assert!(store.read_all(Position(10), 3).unwrap().is_empty());
    assert!(store
        .read_stream(&stream("c"), Version(0), 3)
        .unwrap()
        .is_empty());
}

/// `acct-1` and `acct-10` are different streams, whatever the key encoding.
pub fn streams_whose_ids_share_a_prefix_stay_apart<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let (short, long) = (stream("acct-1"), stream("acct-10"));
    commit(
        &store,
        vec![
            append(&short, ExpectedVersion::Next, event(1)),
            append(&long, ExpectedVersion::Next, event(2)),
            append(&long, ExpectedVersion::Next, event(3)),
        ],
    )
    .unwrap();
    assert_eq!(store.stream_start(&short).unwrap().version, Version(1));
    assert_eq!(store.read_stream(&short, Version(0), 10).unwrap().len(), 1);
    assert_eq!(store.read_stream(&long, Version(0), 10).unwrap().len(), 2);
    commit(
        &store,
        vec![rejected(&short, event(4)), rejected(&long, event(5))],
    )
    .unwrap();
    assert_eq!(store.stream_start(&short).unwrap().version, Version(2));
    assert_eq!(store.stream_start(&long).unwrap().version, Version(3));
}

/// Every event is appended, the ones the stream's fold rejected too: its record keeps when the
/// log stored it and the rejected flag, its dedupe entry names its position, and a second
/// delivery of it is a duplicate key.
pub fn an_event_keeps_its_stored_time_and_rejected_flag<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let a = stream("a");
    let late = event(1);
    let stored_at = late.received_at + chrono::Duration::seconds(30);
    let outcomes = commit(
        &store,
        vec![
            Item::Append(
                ExpectedVersion::Exact(Version(0)),
                Append {
                    stream: a.clone(),
                    expected: Version::EMPTY,
                    event: late.clone(),
                    stored_at,
                    rejected: true,
                },
            ),
            append(&a, ExpectedVersion::Exact(Version(1)), event(2)),
        ],
    )
    .unwrap();
    assert_eq!(appended(&outcomes[0]), (Version(1), Position(1)));
    let events = store.read_stream(&a, Version(0), 10).unwrap();
    assert!(events[0].rejected);
    assert_eq!(events[0].stored_at, stored_at);
    assert_eq!(events[0].data, late);
    assert!(!events[1].rejected);
    let hit = DedupeHit {
        stream: a.clone(),
        version: Version(1),
        position: Position(1),
    };
    assert_eq!(store.find_dedupe(&a, &late.dedupe_key).unwrap(), Some(hit));
    let again = commit(&store, vec![rejected(&a, late.clone())]).unwrap_err();
    assert_duplicate_key(&again, &a, 1);
    assert_eq!(store.settle().unwrap(), Position(2));
    assert_clean(&store);
}

/// A snapshot replaces the previous one, other writes to its stream leave it, one of a stale
/// version is a conflict, and every stream's latest is listed.
pub fn snapshots_are_replaced_and_listed<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let (a, b) = (stream("a"), stream("b"));
    let snapshot = |version: u64| Snapshot {
        compacted: Version::EMPTY,
        provider: Provider::Benji,
        version: Version(version),
        state: format!("state {version}").into_bytes(),
    };
    commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Next, event(1)),
            append(&b, ExpectedVersion::Next, event(3)),
            put_snapshot(&a, snapshot(1)),
            put_snapshot(&b, snapshot(1)),
        ],
    )
    .unwrap();
    commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Next, event(2)),
            put_snapshot(&a, snapshot(2)),
        ],
    )
    .unwrap();
    assert_eq!(snapshot_of(&store, &a), Some(snapshot(2)));
    // A snapshot must be of its stream's version as the commit leaves it: one folded from a
    // stale read is a conflict, and nothing of its commit is written.
    let error = commit(
        &store,
        vec![
            append(&b, ExpectedVersion::Next, event(6)),
            put_snapshot(&a, snapshot(1)),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(error, CommitError::Conflict { ref stream, expected: Version(1), actual: Version(2) } if *stream == a),
        "{error}"
    );
    assert_eq!(store.stream_start(&b).unwrap().version, Version(1));
    assert_eq!(snapshot_of(&store, &a), Some(snapshot(2)));
    // Commits that do not replace it (appends) leave it as it was.
    commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Next, event(4)),
            rejected(&a, event(5)),
        ],
    )
    .unwrap();
    assert_eq!(snapshot_of(&store, &a), Some(snapshot(2)));
    assert_eq!(snapshot_of(&store, &stream("c")), None);
    let listed = |after: Option<&SessionId>| {
        let mut listed = Vec::new();
        store
            .for_each_snapshot(after, &mut |session, snapshot| {
                listed.push((session, snapshot.version));
                ControlFlow::Continue(())
            })
            .unwrap();
        listed
    };
    assert_eq!(
        listed(None),
        vec![(a.clone(), Version(2)), (b.clone(), Version(1))]
    );
    // A page starts after the stream the last one ended with.
    assert_eq!(listed(Some(&a)), vec![(b.clone(), Version(1))]);
    assert_eq!(listed(Some(&b)), vec![]);
    assert_eq!(listed(Some(&stream("0"))).len(), 2);
    assert_clean(&store);
}

/// `stream_start` answers, for every kind of stream, whether it is empty (an empty answer only
/// for a stream that holds nothing) and, unless it is, its snapshot.
pub fn stream_start_says_whether_a_stream_is_empty_and_gives_its_snapshot<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let snapshot = |version: u64| Snapshot {
        compacted: Version::EMPTY,
        provider: Provider::Knot,
        version: Version(version),
        state: vec![version as u8; 3],
    };
    let (plain, snapshotted, only_rejected, only_snapshot) = (
        stream("plain"),
        stream("snapshotted"),
        stream("only-rejected"),
        stream("only-snapshot"),
    );
    commit(
        &store,
        vec![
            append(&plain, ExpectedVersion::Next, event(1)),
            append(&snapshotted, ExpectedVersion::Next, event(2)),
            append(&snapshotted, ExpectedVersion::Next, event(3)),
            put_snapshot(&snapshotted, snapshot(2)),
            rejected(&only_rejected, event(4)),
            put_snapshot(&only_snapshot, snapshot(0)),
        ],
    )
    .unwrap();
    for (name, holds_events, expected) in [
        (&plain, true, None),
        (&snapshotted, true, Some(snapshot(2))),
        (&only_rejected, true, None),
        (&only_snapshot, false, None),
        (&stream("unknown"), false, None),
    ] {
        let start = store.stream_start(name).unwrap();
        assert_eq!(
            start.version != Version::EMPTY,
            holds_events,
            "{name}: holds events"
        );
        if holds_events {
            assert_eq!(start.snapshot, expected, "{name}");
        } else {
            assert_eq!(
                start.snapshot, None,
                "{name}: no snapshot of an empty stream"
            );
        }
    }
}

/// The snapshot `stream_start` gives (tests only ask for streams that hold events).
fn snapshot_of<S: EventStore>(store: &S, stream: &SessionId) -> Option<Snapshot> {
    store
        .stream_start(stream)
        .expect("stream_start reads")
        .snapshot
}

/// Dropping and reopening the store returns the same streams, positions, flags and
/// snapshots, and appends continue from the same head.
pub fn everything_survives_a_reopen<H: Harness>() {
    let harness = H::fresh();
    let a = stream("a");
    let (before_all, before_snapshot) = {
        let store = harness.open();
        commit(
            &store,
            vec![
                append(&a, ExpectedVersion::Next, event(1)),
                append(&stream("b"), ExpectedVersion::Next, event(2)),
                rejected(&a, event(3)),
                put_snapshot(
                    &a,
                    Snapshot {
                        compacted: Version::EMPTY,
                        provider: Provider::Knot,
                        version: Version(2),
                        state: vec![2, 0],
                    },
                ),
            ],
        )
        .unwrap();
        store.sync().unwrap();
        (
            store.read_all(Position(0), 100).unwrap(),
            snapshot_of(&store, &a),
        )
    };
    let store = harness.open();
    assert_eq!(store.read_all(Position(0), 100).unwrap(), before_all);
    // Positions go stream by stream: a's two events, then b's.
    assert!(before_all[1].rejected, "the rejected flag survives");
    assert_eq!(snapshot_of(&store, &a), before_snapshot);
    assert_eq!(store.settle().unwrap(), Position(3));
    let outcomes = commit(
        &store,
        vec![append(&a, ExpectedVersion::Exact(Version(2)), event(4))],
    )
    .unwrap();
    assert_eq!(appended(&outcomes[0]), (Version(3), Position(4)));
    assert_clean(&store);
}

/// The raw payload comes back byte for byte (key order and whitespace included).
pub fn raw_payloads_are_kept_verbatim<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let text = "{ \"z\" : 1,\n  \"a\":[true , null] }";
    let mut new = event(1);
    new.raw = Some(RawJson::from_string(text.into()).unwrap());
    commit(
        &store,
        vec![append(&stream("a"), ExpectedVersion::Next, new)],
    )
    .unwrap();
    let stored = store.read_all(Position(0), 1).unwrap().remove(0);
    assert_eq!(stored.data.raw.unwrap().get(), text);
}

/// An event too large to store is refused with the sizes, and nothing of the commit is written.
pub fn an_oversized_event_is_refused_and_nothing_is_stored<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let mut huge = event(2);
    let padding = "x".repeat(MAX_RECORD_BYTES);
    huge.raw = Some(RawJson::from_string(format!("\"{padding}\"")).unwrap());
    let error = commit(
        &store,
        vec![
            append(&stream("a"), ExpectedVersion::Next, event(1)),
            append(&stream("a"), ExpectedVersion::Next, huge),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(error, CommitError::TooLarge { limit, bytes, .. } if limit == MAX_RECORD_BYTES && bytes > limit),
        "{error}"
    );
    assert_eq!(store.settle().unwrap(), Position(0));
    assert_eq!(
        store
            .find_dedupe(&stream("a"), &event(1).dedupe_key)
            .unwrap(),
        None
    );
}

/// After appends (rejected ones too) and refused duplicates, verify finds nothing wrong and
/// counts what it walked.
pub fn verify_is_clean_after_a_mixed_workload<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let streams: Vec<SessionId> = (0..5).map(|n| stream(&format!("s{n}"))).collect();
    let mut ops = Vec::new();
    for n in 0..50u64 {
        let target = &streams[(n % 5) as usize];
        if n % 7 == 0 {
            ops.push(rejected(target, event(n)));
        } else {
            ops.push(append(target, ExpectedVersion::Next, event(n)));
        }
    }
    commit(&store, ops).unwrap();
    for n in (0..50u64).step_by(10) {
        let target = &streams[(n % 5) as usize];
        let refused = commit(
            &store,
            vec![append(target, ExpectedVersion::Next, event(n))],
        );
        assert!(matches!(refused, Err(CommitError::DuplicateKey { .. })));
    }
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert_eq!(report.events, store.settle().unwrap().0);
    assert_eq!(report.events, 50);
    assert_eq!(report.streams, 5);
}

/// A full scan visits each stream's events together, in version order.
pub fn events_by_stream_come_in_stream_then_version_order<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let ops = (1..=9)
        .map(|n| {
            append(
                &stream(&format!("s{}", n % 3)),
                ExpectedVersion::Next,
                event(n),
            )
        })
        .collect();
    commit(&store, ops).unwrap();
    let mut seen = Vec::new();
    store
        .for_each_event_by_stream(&mut |event| {
            seen.push((event.stream.to_string(), event.version.0));
            ControlFlow::Continue(())
        })
        .unwrap();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 9);
}

/// A snapshot is the guard of a decision that appends nothing to its stream (a stream folded
/// again with new rules): it holds when the stream is at the snapshot's version, counting the
/// commit's own appends, and otherwise fails the whole commit.
pub fn a_snapshot_guards_the_version_it_was_folded_at<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let a = stream("a");
    let snapshot = |version: u64| Snapshot {
        compacted: Version::EMPTY,
        provider: Provider::Moneykit,
        version: Version(version),
        state: vec![version as u8],
    };
    let outcomes = commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Next, event(1)),
            put_snapshot(&a, snapshot(1)),
        ],
    )
    .unwrap();
    assert_eq!(appended(&outcomes[0]), (Version(1), Position(1)));

    match commit(
        &store,
        vec![
            append(&stream("b"), ExpectedVersion::Next, event(2)),
            put_snapshot(&a, snapshot(0)),
        ],
    ) {
        Err(CommitError::Conflict {
            stream,
            expected,
            actual,
        }) => assert_eq!(
            (stream, expected, actual),
            (a.clone(), Version(0), Version(1))
        ),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    assert_eq!(
        store.settle().unwrap(),
        Position(1),
        "nothing of the commit is written"
    );
    commit(
        &store,
        vec![rejected(&a, event(3)), put_snapshot(&a, snapshot(2))],
    )
    .expect("appends of the same commit count");
    commit(&store, vec![put_snapshot(&a, snapshot(2))]).expect("a snapshot-only commit");
    assert_eq!(store.stream_start(&a).unwrap().version, Version(2));
    assert_eq!(snapshot_of(&store, &a), Some(snapshot(2)));
    assert_clean(&store);
}

/// `read_streams` answers, for each requested stream, its snapshot and the events after the
/// snapshot (all of them without one); and for each requested dedupe key where its first
/// delivery went. Streams that do not exist read as empty.
pub fn read_streams_returns_snapshots_tails_and_dedupe_hits<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let (a, b, empty) = (stream("a"), stream("b"), stream("a-empty"));
    let snapshot = Snapshot {
        compacted: Version::EMPTY,
        provider: Provider::Moneykit,
        version: Version(2),
        state: b"state 2".to_vec(),
    };
    commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Next, event(1)),
            append(&a, ExpectedVersion::Next, event(2)),
            append(&b, ExpectedVersion::Next, event(3)),
            put_snapshot(&a, snapshot.clone()),
        ],
    )
    .unwrap();
    commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Next, event(4)),
            append(&a, ExpectedVersion::Next, event(5)),
            rejected(&a, event(6)),
            append(&b, ExpectedVersion::Next, event(7)),
        ],
    )
    .unwrap();

    let keys = vec![
        (a.clone(), event(1).dedupe_key),
        (a.clone(), event(6).dedupe_key),
        (a.clone(), event(3).dedupe_key),
        (b.clone(), event(3).dedupe_key),
        (b.clone(), event(99).dedupe_key),
    ];
    let read = store
        .read_streams(&[a.clone(), b.clone(), empty.clone()], &keys)
        .unwrap();

    let a_read = &read.streams[&a];
    assert_eq!(a_read.snapshot, Some(snapshot));
    let versions = |read: &StreamRead| read.tail.iter().map(|e| e.version.0).collect::<Vec<_>>();
    assert_eq!(
        versions(a_read),
        vec![3, 4, 5],
        "only the events after the snapshot"
    );
    assert_eq!(a_read.tail, store.read_stream(&a, Version(2), 10).unwrap());
    assert!(a_read.tail[2].rejected);
    let b_read = &read.streams[&b];
    assert_eq!(b_read.snapshot, None);
    assert_eq!(
        versions(b_read),
        vec![1, 2],
        "every event without a snapshot"
    );
    assert_eq!(read.streams[&empty], StreamRead::default());
    assert_eq!(read.streams.len(), 3);

    assert_eq!(
        read.dedupe(&a, &event(1).dedupe_key),
        Some(Some(&DedupeHit {
            stream: a.clone(),
            version: Version(1),
            position: Position(1),
        }))
    );
    assert_eq!(
        read.dedupe(&a, &event(6).dedupe_key),
        Some(Some(&DedupeHit {
            stream: a.clone(),
            version: Version(5),
            position: Position(6),
        }))
    );
    assert_eq!(
        read.dedupe(&a, &event(3).dedupe_key),
        Some(None),
        "keys are scoped to their stream"
    );
    assert!(matches!(
        read.dedupe(&b, &event(3).dedupe_key),
        Some(Some(DedupeHit { .. }))
    ));
    assert_eq!(read.dedupe(&b, &event(99).dedupe_key), Some(None));
    assert_eq!(
        read.dedupe(&b, &event(1).dedupe_key),
        None,
        "a key that was not asked about"
    );
}

/// A stream of a few hundred events, appended over many commits of different sizes (some of
/// them rejected), still recognises every key: each redelivery is a duplicate pointing at
/// where its first delivery went, before and after the store is closed and opened again. (The sled backend moves a
/// stream's dedupe entries out of its list past 64; this crosses that several times.)
pub fn a_long_stream_dedupes_every_key_across_many_commits<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let a = stream("long");
    let other = stream("long-other");
    let mut next = 1u64;
    let mut commit_size = 1;
    while next <= 300 {
        let mut ops = Vec::new();
        for _ in 0..commit_size {
            if next > 300 {
                break;
            }
            let new = event(next);
            if next % 17 == 0 {
                ops.push(rejected(&a, new));
            } else {
                ops.push(append(&a, ExpectedVersion::Next, new));
            }
            next += 1;
        }
        ops.push(append(&other, ExpectedVersion::Next, event(10_000 + next)));
        commit(&store, ops).unwrap();
        commit_size = commit_size % 7 + 1;
    }
    let check = |store: &H::Store| {
        let mut where_went = std::collections::HashMap::new();
        for stored in store.read_stream(&a, Version(0), 1_000).unwrap() {
            where_went.insert(
                stored.data.dedupe_key,
                DedupeHit {
                    stream: a.clone(),
                    version: stored.version,
                    position: stored.position,
                },
            );
        }
        assert_eq!(where_went.len(), 300);
        let head = store.settle().unwrap();
        for n in 1..=300 {
            let key = event(n).dedupe_key;
            let original = where_went[&key].clone();
            assert_eq!(store.find_dedupe(&a, &key).unwrap(), Some(original.clone()));
            let error =
                commit(store, vec![append(&a, ExpectedVersion::Next, event(n))]).unwrap_err();
            assert_duplicate_key(&error, &a, n);
        }
        assert_eq!(store.settle().unwrap(), head, "redeliveries wrote nothing");
        assert_eq!(
            store.find_dedupe(&other, &event(1).dedupe_key).unwrap(),
            None,
            "keys stay scoped to their stream"
        );
        assert_clean(store);
    };
    check(&store);
    store.close().unwrap();
    drop(store);
    check(&harness.open());
}

/// The rules marker the engine records ([`EventStore::set_folded_with`]) is absent in a new
/// store, replaced by a later one, and survives a reopen.
pub fn the_rules_marker_is_kept_across_a_reopen<H: Harness>() {
    let harness = H::fresh();
    {
        let store = harness.open();
        assert_eq!(store.folded_with().unwrap(), None);
        store.set_folded_with(1).unwrap();
        store.set_folded_with(7).unwrap();
        assert_eq!(store.folded_with().unwrap(), Some(7));
        commit(
            &store,
            vec![append(&stream("a"), ExpectedVersion::Next, event(1))],
        )
        .unwrap();
        store.sync().unwrap();
    }
    let store = harness.open();
    assert_eq!(store.folded_with().unwrap(), Some(7));
    assert_clean(&store);
}

/// After `close`, commits and syncs fail with `Closed`, `health` says so, reads go on, and a
/// reopened store holds everything committed before.
pub fn a_closed_store_takes_no_writes_and_keeps_its_reads<H: Harness>() {
    let harness = H::fresh();
    let a = stream("a");
    {
        let store = harness.open();
        commit(&store, vec![append(&a, ExpectedVersion::Next, event(1))]).unwrap();
        store.close().unwrap();
        let refused = commit(&store, vec![append(&a, ExpectedVersion::Next, event(2))]);
        assert!(
            matches!(refused, Err(CommitError::Store(StoreError::Closed))),
            "{refused:?}"
        );
        assert!(matches!(store.sync(), Err(StoreError::Closed)));
        assert!(matches!(store.health(), Err(StoreError::Closed)));
        assert_eq!(store.read_stream(&a, Version::EMPTY, 10).unwrap().len(), 1);
    }
    let store = harness.open();
    assert_eq!(store.settle().unwrap(), Position(1));
    assert_eq!(store.stream_start(&a).unwrap().version, Version(1));
    assert_clean(&store);
}

fn index_keys<S: EventStore>(store: &S, from: &[u8], to: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    store
        .for_each_index_key(from, to, &mut |key| {
            keys.push(key.to_vec());
            ControlFlow::Continue(())
        })
        .expect("the index walks");
    keys
}

fn index_keys_descending<S: EventStore>(store: &S, from: &[u8], to: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    store
        .for_each_index_key_descending(from, to, &mut |key| {
            keys.push(key.to_vec());
            ControlFlow::Continue(())
        })
        .expect("the index walks");
    keys
}

/// The index walked both ways: descending is ascending reversed, for every range.
fn assert_both_ways<S: EventStore>(store: &S, ranges: &[(&[u8], &[u8])]) {
    for (from, to) in ranges {
        let mut reversed = index_keys(store, from, to);
        reversed.reverse();
        assert_eq!(
            index_keys_descending(store, from, to),
            reversed,
            "[{from:?}, {to:?})"
        );
    }
}

type Counted = Vec<(Vec<u8>, Vec<u8>, i64)>;

fn counters<S: EventStore>(store: &S, from: &[u8], to: &[u8]) -> Counted {
    let mut counters = Vec::new();
    store
        .for_each_counter(from, to, &mut |cell, name, value| {
            counters.push((cell.to_vec(), name.to_vec(), value));
            ControlFlow::Continue(())
        })
        .expect("the counters walk");
    counters
}

fn counted(list: &[(&[u8], &[u8], i64)]) -> Counted {
    list.iter()
        .map(|(cell, name, value)| (cell.to_vec(), name.to_vec(), *value))
        .collect()
}

/// Index entries are written by the commit that carries them (with its events, or alone),
/// removed by a later one, walked in byte order within `[from, to)` (bytes above 0x7f
/// included: keys are compared as bytes), stopped when the visitor breaks, and kept across a
/// reopen; a commit's last change of a key wins.
pub fn index_entries_commit_with_their_events_and_walk_in_byte_order<H: Harness>() {
    use crate::store::IndexChange::{Delete, Put};
    let harness = H::fresh();
    {
        let store = harness.open();
        let mut first = Commit {
            index: vec![
                Put(b"p\x01b".to_vec()),
                Put(b"p\x01a".to_vec()),
                Put(b"p\x02a".to_vec()),
                Put(b"p\xffz".to_vec()),
                Put(b"q\x00".to_vec()),
                Put(b"p\x01gone".to_vec()),
                Delete(b"p\x01gone".to_vec()),
            ],
            ..Commit::default()
        };
        first.appends.push(Append {
            stream: stream("a"),
            expected: Version::EMPTY,
            stored_at: event(1).received_at,
            event: event(1),
            rejected: false,
        });
        store.commit(first).expect("commit with index entries");
        assert_eq!(
            index_keys(&store, b"p", b"q"),
            vec![
                b"p\x01a".to_vec(),
                b"p\x01b".to_vec(),
                b"p\x02a".to_vec(),
                b"p\xffz".to_vec()
            ]
        );
        assert_eq!(
            index_keys(&store, b"p\x01", b"p\x02"),
            vec![b"p\x01a".to_vec(), b"p\x01b".to_vec()]
        );
        // `from` is inclusive: a page resumes at its last key plus a zero byte.
        assert_eq!(
            index_keys(&store, b"p\x01a\x00", b"p\x02"),
            vec![b"p\x01b".to_vec()]
        );
        assert!(index_keys(&store, b"p\x02", b"p\x01").is_empty());
        // Descending: last first; `to` is exclusive, so a page resumes at its last key.
        assert_eq!(
            index_keys_descending(&store, b"p", b"p\x02a"),
            vec![b"p\x01b".to_vec(), b"p\x01a".to_vec()]
        );
        assert!(index_keys_descending(&store, b"p\x02", b"p\x01").is_empty());
        assert_both_ways(
            &store,
            &[
                (b"p", b"q"),
                (b"p\x01", b"p\x02"),
                (b"", b"\xff"),
                (b"q", b"r"),
            ],
        );
        let mut seen = Vec::new();
        store
            .for_each_index_key_descending(b"p", b"q", &mut |key| {
                seen.push(key.to_vec());
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![b"p\xffz".to_vec()],
            "the walk stops when the visitor breaks"
        );
        let mut seen = 0;
        store
            .for_each_index_key(b"p", b"q", &mut |_| {
                seen += 1;
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(seen, 1, "the walk stops when the visitor breaks");
        // An index change alone is a commit too.
        let second = Commit {
            index: vec![Delete(b"p\x01a".to_vec()), Put(b"p\x03c".to_vec())],
            ..Commit::default()
        };
        assert!(!second.is_empty());
        store.commit(second).expect("commit of index changes alone");
        store.sync().unwrap();
    }
    let store = harness.open();
    assert_eq!(
        index_keys(&store, b"p", b"q"),
        vec![
            b"p\x01b".to_vec(),
            b"p\x02a".to_vec(),
            b"p\x03c".to_vec(),
            b"p\xffz".to_vec()
        ]
    );
    assert_eq!(index_keys(&store, b"q", b"r"), vec![b"q\x00".to_vec()]);
    assert_both_ways(
        &store,
        &[(b"p", b"q"), (b"p\x01", b"p\x03c"), (b"", b"\xff")],
    );
    assert_clean(&store);
}

/// Thousands of index entries, put and deleted over many commits in an order that mixes
/// appends at the end, inserts between and before existing keys, and long keys, walk exactly
/// as a sorted set of the same changes says: every range both ways, pages resumed from their
/// last key, across a reopen, and verify stays clean (on sled the entries are packed in runs
/// that split, shrink and move their first key as they change).
pub fn thousands_of_index_entries_walk_as_a_model_says<H: Harness>() {
    use crate::store::IndexChange::{Delete, Put};
    use std::collections::BTreeSet;
    let harness = H::fresh();
    let mut model: BTreeSet<Vec<u8>> = BTreeSet::new();
    // A seeded LCG: the same changes on every backend and every run.
    let mut seed: u64 = 0x5eed;
    let mut next = move |below: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % below
    };
    let key_of = |family: u8, n: u64, long: bool| {
        let mut key = vec![family];
        key.extend_from_slice(format!("{n:08}").as_bytes());
        if long {
            key.extend(std::iter::repeat_n(b'x', 900));
        }
        key
    };
    let check = |store: &H::Store, model: &BTreeSet<Vec<u8>>, next: &mut dyn FnMut(u64) -> u64| {
        let all: Vec<Vec<u8>> = model.iter().cloned().collect();
        assert_eq!(index_keys(store, b"", b"\xff"), all);
        for _ in 0..40 {
            let from = key_of(b'a' + next(3) as u8, next(6_000), false);
            let to = key_of(b'a' + next(3) as u8, next(6_000), false);
            let expected: Vec<Vec<u8>> = model
                .iter()
                .filter(|key| **key >= from && **key < to)
                .cloned()
                .collect();
            assert_eq!(
                index_keys(store, &from, &to),
                expected,
                "[{from:?}, {to:?})"
            );
            assert_both_ways(store, &[(&from, &to)]);
        }
        // Paged 37 keys at a time, each page resuming after the last key of the one before.
        let mut paged = Vec::new();
        let mut from = Vec::new();
        loop {
            let mut page = Vec::new();
            store
                .for_each_index_key(&from, b"\xff", &mut |key| {
                    page.push(key.to_vec());
                    if page.len() == 37 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .expect("a page");
            let Some(last) = page.last() else { break };
            from = last.clone();
            from.push(0);
            paged.extend(page);
        }
        assert_eq!(paged, all, "the pages, one after the other");
    };
    {
        let store = harness.open();
        for round in 0..60u64 {
            let mut index = Vec::new();
            for _ in 0..120 {
                let family = b'a' + next(3) as u8;
                // Mostly new keys at the end of their family, some anywhere, some long.
                let n = if next(4) == 0 {
                    next(6_000)
                } else {
                    3_000 + round * 50 + next(50)
                };
                let key = key_of(family, n, next(40) == 0);
                if next(5) == 0 && !model.is_empty() {
                    let nth = next(model.len() as u64) as usize;
                    let gone = model.iter().nth(nth).cloned().expect("in the model");
                    model.remove(&gone);
                    index.push(Delete(gone));
                } else {
                    model.insert(key.clone());
                    index.push(Put(key));
                }
            }
            store
                .commit(Commit {
                    index,
                    ..Commit::default()
                })
                .expect("a commit of index changes");
            if round % 20 == 19 {
                check(&store, &model, &mut next);
            }
        }
        // Every key of a family deleted in one commit, then a few put back.
        let family_b: Vec<Vec<u8>> = model.iter().filter(|key| key[0] == b'b').cloned().collect();
        let mut index: Vec<_> = family_b.iter().cloned().map(Delete).collect();
        for key in &family_b {
            model.remove(key);
        }
        for n in [5, 4_000, 70] {
            let key = key_of(b'b', n, false);
            model.insert(key.clone());
            index.push(Put(key));
        }
        store
            .commit(Commit {
                index,
                ..Commit::default()
            })
            .expect("a commit emptying a family");
        check(&store, &model, &mut next);
        store.sync().unwrap();
        assert_clean(&store);
    }
    let store = harness.open();
    check(&store, &model, &mut next);
    assert_clean(&store);
}

/// A counter is the sum of every delta committed to it (deltas of one commit to one counter
/// summed first), negative ones included; one that reaches zero is not stored (and not
/// visited) until a later delta, and a cell left with no counter is gone; cells are walked in
/// key order within `[from, to)`, each cell's counters in name order (the empty name first);
/// the walk stops when the visitor breaks; counters survive a reopen.
pub fn counters_sum_their_deltas_and_vanish_at_zero<H: Harness>() {
    let harness = H::fresh();
    {
        let store = harness.open();
        let deltas = |deltas: &[(&[u8], &[u8], i64)]| Commit {
            counters: deltas
                .iter()
                .map(|(cell, name, delta)| CounterDelta::new(*cell, *name, *delta))
                .collect(),
            ..Commit::default()
        };
        store
            .commit(deltas(&[
                (b"c/a", b"x", 3),
                (b"c/a", b"", 1),
                (b"c/b", b"y", 1),
                (b"c/a", b"x", 2),
                (b"d", b"\xff", 7),
            ]))
            .unwrap();
        assert_eq!(
            counters(&store, b"c/", b"c0"),
            counted(&[(b"c/a", b"", 1), (b"c/a", b"x", 5), (b"c/b", b"y", 1)])
        );
        store
            .commit(deltas(&[
                (b"c/a", b"x", -5),
                (b"c/a", b"", -1),
                (b"c/b", b"y", -3),
                (b"c/z", b"q", 2),
                (b"c/z", b"q", -2),
            ]))
            .unwrap();
        assert_eq!(
            counters(&store, b"c/", b"c0"),
            counted(&[(b"c/b", b"y", -2)])
        );
        store.commit(deltas(&[(b"c/a", b"w", 1)])).unwrap();
        let mut seen = 0;
        store
            .for_each_counter(b"c", b"e", &mut |_, _, _| {
                seen += 1;
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(seen, 1, "the walk stops when the visitor breaks");
        store.sync().unwrap();
    }
    let store = harness.open();
    assert_eq!(
        counters(&store, b"c", b"e"),
        counted(&[(b"c/a", b"w", 1), (b"c/b", b"y", -2), (b"d", b"\xff", 7)])
    );
    assert_clean(&store);
}

/// A commit refused for any reason (a conflict, a key out of bounds) writes none of its index
/// entries or counters.
pub fn a_refused_commit_writes_no_index_entry_or_counter<H: Harness>() {
    use crate::store::IndexChange::Put;
    let harness = H::fresh();
    let store = harness.open();
    let mut conflicting = Commit {
        index: vec![Put(b"i/conflict".to_vec())],
        counters: vec![CounterDelta::new(&b"c/conflict"[..], &b""[..], 1)],
        ..Commit::default()
    };
    conflicting.appends.push(Append {
        stream: stream("a"),
        expected: Version(3),
        stored_at: event(1).received_at,
        event: event(1),
        rejected: false,
    });
    assert!(matches!(
        store.commit(conflicting),
        Err(CommitError::Conflict { .. })
    ));
    for bad in [Vec::new(), vec![b'k'; crate::MAX_INDEX_KEY_BYTES + 1]] {
        let error = store
            .commit(Commit {
                index: vec![Put(b"i/fine".to_vec()), Put(bad.clone())],
                counters: vec![CounterDelta::new(&b"c/fine"[..], &b""[..], 1)],
                ..Commit::default()
            })
            .expect_err("a key out of bounds is refused");
        assert!(
            matches!(error, CommitError::InvalidIndexKey { bytes, .. } if bytes == bad.len()),
            "{error:?}"
        );
        let error = store
            .commit(Commit {
                counters: vec![
                    CounterDelta::new(&b"c/fine"[..], &b""[..], 1),
                    CounterDelta::new(bad.clone(), &b""[..], 1),
                ],
                ..Commit::default()
            })
            .expect_err("a counter cell out of bounds is refused");
        assert!(matches!(error, CommitError::InvalidIndexKey { .. }));
        if !bad.is_empty() {
            let error = store
                .commit(Commit {
                    counters: vec![CounterDelta::new(&b"c/fine"[..], bad.clone(), 1)],
                    ..Commit::default()
                })
                .expect_err("a counter name out of bounds is refused");
            assert!(matches!(error, CommitError::InvalidIndexKey { .. }));
        }
    }
    assert!(index_keys(&store, b"i", b"j").is_empty());
    assert!(counters(&store, b"c", b"d").is_empty());
    assert_eq!(store.settle().unwrap(), Position::START);
    assert_clean(&store);
}

/// [`EventStore::compact`] of a stream (300 events over many commits, some rejected, beside
/// another stream's): refused unless the snapshot is of the stream's version (nothing
/// written); then the stream's events are gone from every read (by stream, by position in
/// pages, by stream order) while its version, its snapshot and every dedupe key stay (a
/// redelivery is a duplicate, `find_dedupe` answers where it first went); later events are
/// stored whole and can be compacted in turn; compacting again compacts nothing more; verify is
/// clean, and all of it survives a reopen.
pub fn compaction_keeps_a_streams_place_and_dedupe_keys_and_reads_skip_it<H: Harness>() {
    let harness = H::fresh();
    let store = harness.open();
    let (a, b) = (stream("compacted"), stream("kept"));
    // The snapshot of `a` at `version`, compacted at `compacted` (0: not compacted).
    let snapshot_of = |version: u64, compacted: u64| Snapshot {
        compacted: Version(compacted),
        provider: Provider::Moneykit,
        version: Version(version),
        state: format!("state at {version}, compacted at {compacted}").into_bytes(),
    };
    let snapshot = |version: u64| snapshot_of(version, version);
    let mut next = 1u64;
    let mut b_events = 0u64;
    while next <= 300 {
        let mut ops = Vec::new();
        for _ in 0..7 {
            if next > 300 {
                break;
            }
            ops.push(if next % 13 == 0 {
                rejected(&a, event(next))
            } else {
                append(&a, ExpectedVersion::Next, event(next))
            });
            next += 1;
        }
        ops.push(append(&b, ExpectedVersion::Next, event(10_000 + next)));
        b_events += 1;
        commit(&store, ops).unwrap();
    }
    let mut first_went = std::collections::HashMap::new();
    for stored in store.read_stream(&a, Version::EMPTY, 1_000).unwrap() {
        first_went.insert(stored.data.dedupe_key, (stored.version, stored.position));
    }
    assert_eq!(first_went.len(), 300);
    let head = store.settle().unwrap();

    for refused in [snapshot(299), snapshot(301)] {
        match store.compact(&a, refused.clone()) {
            Err(CommitError::Conflict { stream, actual, .. }) => {
                assert_eq!((stream, actual), (a.clone(), Version(300)))
            }
            other => panic!("expected a conflict for {refused:?}, got {other:?}"),
        }
    }
    match store.compact(&stream("never-written"), snapshot(1)) {
        Err(CommitError::Conflict { actual, .. }) => assert_eq!(actual, Version::EMPTY),
        other => panic!("expected a conflict for an empty stream, got {other:?}"),
    }
    assert_eq!(
        store.read_stream(&a, Version::EMPTY, 1_000).unwrap().len(),
        300
    );

    assert_eq!(store.compact(&a, snapshot(300)).unwrap(), 300);
    store.sync().unwrap();
    // A commit decided on the state before the compaction (its snapshot not compacted) is
    // refused whole: another process compacted the stream meanwhile.
    match commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Next, event(301)),
            append(&b, ExpectedVersion::Next, event(20_000)),
            put_snapshot(&a, snapshot_of(301, 0)),
        ],
    ) {
        Err(CommitError::CompactionConflict {
            stream,
            expected,
            actual,
        }) => assert_eq!(
            (stream, expected, actual),
            (a.clone(), Version::EMPTY, Version(300))
        ),
        other => panic!("expected a compaction conflict, got {other:?}"),
    }
    let check = |store: &H::Store, a_version: u64, a_compacted: u64, a_tail: &[u64]| {
        assert_eq!(store.settle().unwrap(), Position(head.0 + a_version - 300));
        let start = store.stream_start(&a).unwrap();
        assert_eq!(start.version, Version(a_version));
        assert_eq!(start.snapshot, Some(snapshot_of(a_version, a_compacted)));
        let tail: Vec<u64> = store
            .read_stream(&a, Version::EMPTY, 1_000)
            .unwrap()
            .iter()
            .map(|event| event.version.0)
            .collect();
        assert_eq!(
            tail, a_tail,
            "only the events after the compaction are read"
        );
        // By position, in pages of 3: every event of `b` and `a`'s tail, once, in order.
        let mut after = Position::START;
        let mut read = Vec::new();
        loop {
            let page = store.read_all(after, 3).unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            read.extend(page);
        }
        assert!(read
            .windows(2)
            .all(|pair| pair[0].position < pair[1].position));
        assert_eq!(
            read.iter().filter(|event| event.stream == b).count() as u64,
            b_events
        );
        let a_read: Vec<u64> = read
            .iter()
            .filter(|event| event.stream == a)
            .map(|event| event.version.0)
            .collect();
        assert_eq!(a_read, a_tail);
        let mut by_stream = Vec::new();
        store
            .for_each_event_by_stream(&mut |event| {
                by_stream.push((event.stream.clone(), event.version.0));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(by_stream.len() as u64, b_events + a_tail.len() as u64);
        assert!(by_stream
            .iter()
            .all(|(stream, version)| *stream == b || a_tail.contains(version)));
        for n in [1u64, 13, 150, 300] {
            let key = event(n).dedupe_key;
            let (version, position) = first_went[&key];
            assert_eq!(
                store.find_dedupe(&a, &key).unwrap(),
                Some(DedupeHit {
                    stream: a.clone(),
                    version,
                    position
                }),
                "a compacted event's dedupe key still answers where it went"
            );
            let error =
                commit(store, vec![append(&a, ExpectedVersion::Next, event(n))]).unwrap_err();
            assert_duplicate_key(&error, &a, n);
        }
        let read = store
            .read_streams(
                std::slice::from_ref(&a),
                &[(a.clone(), event(7).dedupe_key)],
            )
            .unwrap();
        let a_read = &read.streams[&a];
        assert_eq!(a_read.snapshot, Some(snapshot_of(a_version, a_compacted)));
        assert!(a_read.tail.is_empty());
        assert_eq!(
            read.dedupe(&a, &event(7).dedupe_key)
                .flatten()
                .map(|hit| hit.version),
            Some(first_went[&event(7).dedupe_key].0)
        );
        assert_clean(store);
    };
    check(&store, 300, 300, &[]);

    // A later event is stored whole (its snapshot still compacted at 300), and is compacted by
    // the next compaction only.
    commit(
        &store,
        vec![
            append(&a, ExpectedVersion::Next, event(301)),
            put_snapshot(&a, snapshot_of(301, 300)),
        ],
    )
    .unwrap();
    check(&store, 301, 300, &[301]);
    assert_eq!(store.compact(&a, snapshot(301)).unwrap(), 1);
    assert_eq!(
        store.compact(&a, snapshot(301)).unwrap(),
        0,
        "compacting again compacts nothing more"
    );
    store.sync().unwrap();
    check(&store, 301, 301, &[]);
    store.close().unwrap();
    drop(store);
    check(&harness.open(), 301, 301, &[]);
}

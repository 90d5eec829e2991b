//! Tests of the sled store.

use chrono::{TimeZone, Utc};
use linkflow_core::{Event, EventBody, EventKind, Provider};
use uuid::Uuid;

use std::collections::HashMap;

use super::open::open_sled_once;
use super::*;
use crate::dedupe_list::LIST_MAX;
use crate::record::{NewEvent, RawJson, MAX_PACKED_BYTES, PACKED};
use crate::store::{Append, Placed};

/// sled's tree with every commit applied, for tests that read or change it directly.
fn settled(store: &SledStore) -> &sled::Db {
    store.settle().unwrap();
    &store.db
}

fn stream(id: &str) -> SessionId {
    SessionId::new(id).unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        dedupe_key: DedupeKey::derive(&[b"sled", &n.to_be_bytes()]),
        provider: Provider::Moneykit,
        body: EventBody::Session(Event::new(EventKind::ScreenChanged)),
        raw_name: Some("change_screen".into()),
        raw: Some(RawJson::from_string(format!("{{\"n\": {n}}}")).unwrap()),
        received_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
    }
}

/// What these tests commit: appends numbered after what the store holds (`Next`) or at a
/// stated version (`Exact`), and snapshots.
#[allow(clippy::large_enum_variant)]
enum TestOp {
    Next(Append),
    Exact(Append),
    Snapshot(SessionId, Snapshot),
}

/// Commits `ops`, each `Next` append expecting its stream's version as the store and the
/// commit's earlier appends leave it.
fn commit(store: &SledStore, ops: Vec<TestOp>) -> Result<Vec<Placed>, CommitError> {
    let mut versions: HashMap<SessionId, Version> = HashMap::new();
    let mut commit = Commit::default();
    for op in ops {
        match op {
            TestOp::Next(mut append) => {
                let version = versions.entry(append.stream.clone()).or_insert_with(|| {
                    store
                        .stream_start(&append.stream)
                        .map(|start| start.version)
                        .unwrap_or_default()
                });
                append.expected = *version;
                *version = version.next();
                commit.appends.push(append);
            }
            TestOp::Exact(append) => {
                versions.insert(append.stream.clone(), append.expected.next());
                commit.appends.push(append);
            }
            TestOp::Snapshot(stream, snapshot) => commit.snapshots.push((stream, snapshot)),
        }
    }
    Ok(store.commit(commit)?.appended)
}

/// An append, of an event the stream's fold rejected when `rejected`.
fn append(stream: &SessionId, event: NewEvent, rejected: bool) -> TestOp {
    TestOp::Next(Append {
        stream: stream.clone(),
        expected: Version::EMPTY,
        stored_at: event.received_at,
        event,
        rejected,
    })
}

fn list_of(store: &SledStore, stream: &SessionId) -> DedupeList {
    store.head_value(stream).unwrap().unwrap().list
}

fn d_keys(store: &SledStore, stream: &SessionId) -> usize {
    settled(store)
        .scan_prefix(keys::session_prefix(keys::DEDUPE, stream))
        .count()
}

fn assert_consistent(store: &SledStore) {
    let problems = problems(store);
    assert!(problems.is_empty(), "{problems:?}");
}

fn problems(store: &SledStore) -> Vec<String> {
    let report = store.verify().unwrap();
    report
        .problems
        .iter()
        .map(|problem| format!("{}: {}", problem.record, problem.message))
        .collect()
}

fn exact(stream: &SessionId, version: u64, event: NewEvent) -> TestOp {
    TestOp::Exact(Append {
        stream: stream.clone(),
        expected: Version(version),
        stored_at: event.received_at,
        event,
        rejected: false,
    })
}

/// Commits check expected versions against the version in the stream's head (which they
/// read anyway for the dedupe checks), before and after a reopen and a spill of the
/// stream's dedupe list; verify reports a head whose version is not the stream's.
#[test]
fn expected_versions_are_checked_against_the_version_in_the_streams_head() {
    let dir = tempfile::tempdir().unwrap();
    let a = stream("a");
    {
        let store = SledStore::open(dir.path()).unwrap();
        // A stream with no head has no events.
        assert!(matches!(
            commit(&store, vec![exact(&a, 1, event(1))]),
            Err(CommitError::Conflict {
                actual: Version(0),
                ..
            })
        ));
        commit(&store, vec![exact(&a, 0, event(1)), exact(&a, 1, event(2))]).unwrap();
        assert!(matches!(
            commit(&store, vec![exact(&a, 1, event(3))]),
            Err(CommitError::Conflict {
                actual: Version(2),
                ..
            })
        ));
        commit(&store, vec![exact(&a, 2, event(3))]).unwrap();
        store.sync().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert!(matches!(
        commit(&store, vec![exact(&a, 2, event(4))]),
        Err(CommitError::Conflict {
            actual: Version(3),
            ..
        })
    ));
    // Past a spill the head holds no entry, and still the version.
    let many = (4..=4 + LIST_MAX as u64).map(|n| append(&a, event(n), false));
    commit(&store, many.collect()).unwrap();
    let spilled = LIST_MAX as u64 + 4;
    assert!(list_of(&store, &a).spilled);
    assert_eq!(list_of(&store, &a).version, Version(spilled));
    assert_eq!(store.stream_start(&a).unwrap().version, Version(spilled));
    commit(&store, vec![exact(&a, spilled, event(1_000))]).unwrap();
    assert_consistent(&store);

    // A head whose version is not its stream's last event's is damage verify names.
    let mut head = list_of(&store, &a);
    head.version = Version(3);
    store
        .raw_insert_for_tests(&keys::list_key(&a), &head.encode(None))
        .unwrap();
    let found = problems(&store);
    assert!(
        found
            .iter()
            .any(|p| p.contains("head of stream `a`") && p.contains("version 3")),
        "{found:?}"
    );
}

#[test]
fn a_short_stream_keeps_its_entries_in_one_list_and_a_long_one_spills_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let a = stream("a");
    let ops = (1..=LIST_MAX as u64)
        .map(|n| append(&a, event(n), false))
        .collect();
    commit(&store, ops).unwrap();
    assert_eq!(d_keys(&store, &a), 0);
    let list = list_of(&store, &a);
    assert_eq!((list.entries.len(), list.spilled), (LIST_MAX, false));

    commit(&store, vec![append(&a, event(1_000), false)]).unwrap();
    assert_eq!(d_keys(&store, &a), LIST_MAX + 1);
    let list = list_of(&store, &a);
    assert_eq!((list.entries.len(), list.spilled), (0, true));
    commit(&store, vec![append(&a, event(1_001), false)]).unwrap();
    assert_eq!(list_of(&store, &a).entries.len(), 1);
    for n in (1..=LIST_MAX as u64).chain([1_000, 1_001]) {
        assert!(store
            .find_dedupe(&a, &event(n).dedupe_key)
            .unwrap()
            .is_some());
    }
    assert_consistent(&store);
}

#[test]
fn a_stream_is_empty_until_an_event_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (a, b, c) = (stream("a"), stream("b"), stream("c"));
    for id in [&a, &b, &c] {
        assert_eq!(store.stream_is_empty(id).unwrap(), Some(true));
    }
    commit(
        &store,
        vec![append(&a, event(1), false), append(&b, event(2), true)],
    )
    .unwrap();
    assert_eq!(store.stream_is_empty(&a).unwrap(), Some(false));
    assert_eq!(
        store.stream_is_empty(&b).unwrap(),
        Some(false),
        "a rejected event only"
    );
    assert_eq!(store.stream_is_empty(&c).unwrap(), Some(true));
    // Past a spill the list stays, empty and marked spilled.
    let ops = (10..=10 + LIST_MAX as u64)
        .map(|n| append(&c, event(n), false))
        .collect();
    commit(&store, ops).unwrap();
    commit(&store, vec![append(&c, event(500), false)]).unwrap();
    assert_eq!(store.stream_is_empty(&c).unwrap(), Some(false));
}

#[test]
fn damaged_dedupe_data_is_a_clear_error_and_a_verify_problem() {
    let dir = tempfile::tempdir().unwrap();
    let a = stream("sess-a");
    let b = stream("sess-b");
    {
        let store = SledStore::open(dir.path()).unwrap();
        commit(
            &store,
            vec![append(&a, event(1), false), append(&b, event(2), false)],
        )
        .unwrap();
        settled(&store)
            .insert(keys::list_key(&a), &[0, 1, 2][..])
            .unwrap();
        // A `D` key in a stream whose list is not spilled is never read by lookups.
        let stray = DedupeHit {
            stream: b.clone(),
            version: Version(1),
            position: Position(2),
        };
        settled(&store)
            .insert(
                keys::dedupe_key(&b, &event(9).dedupe_key),
                keys::dedupe_value(&stray),
            )
            .unwrap();
        let error = store.find_dedupe(&a, &event(1).dedupe_key).unwrap_err();
        assert!(matches!(error, StoreError::Corrupt(_)));
        assert!(
            error.to_string().contains("head of stream `sess-a`"),
            "{error}"
        );
        let error = commit(&store, vec![append(&a, event(5), false)]).unwrap_err();
        assert!(
            matches!(error, CommitError::Store(StoreError::Corrupt(_))),
            "{error}"
        );
        let found = problems(&store);
        assert!(
            found.iter().any(|p| p.contains("head of stream `sess-a`")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("not marked spilled")),
            "{found:?}"
        );
        settled(&store)
            .insert(keys::LAYOUT_KEY, &[0, 0, 0, 12][..])
            .unwrap();
        store.sync().unwrap();
    }
    let error = SledStore::open(dir.path())
        .err()
        .expect("an unknown layout is refused");
    assert!(
        error
            .to_string()
            .contains("layout 12; this linkflow reads layout 11 only"),
        "{error}"
    );
}

/// A store of an older layout (1 to 5: refused events kept apart as parked events; 6: no
/// version in a stream's head; 7: fixed-width values; 8: length-prefixed head keys; 9: no
/// index entries or counters; 10: one key per index entry) is refused
/// at open with its layout named, and left as it was.
#[test]
fn a_store_of_an_older_layout_is_refused_naming_its_layout() {
    for (old, named) in [
        (Some(10u32), "layout 10"),
        (Some(9), "layout 9"),
        (Some(8), "layout 8"),
        (Some(7), "layout 7"),
        (Some(6), "layout 6"),
        (Some(5), "layout 5"),
        (Some(2), "layout 2"),
        (None, "layout 1"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            commit(&store, appends(&stream("a"), 1..=2)).unwrap();
            store.sync().unwrap();
            let db = settled(&store);
            match old {
                Some(layout) => db.insert(keys::LAYOUT_KEY, &layout.to_be_bytes()).unwrap(),
                None => db.remove(keys::LAYOUT_KEY).unwrap(),
            };
        }
        let error = SledStore::open(dir.path()).err().expect("refused");
        assert!(
            matches!(error, StoreError::UpgradeRequired { supported: 11, .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(text.contains(named) && text.contains("parked"), "{text}");
    }
}

#[test]
fn a_full_scan_names_a_record_that_is_damaged_or_under_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (a, b) = (stream("sess-a"), stream("sess-b"));
    commit(
        &store,
        vec![append(&a, event(1), false), append(&b, event(2), false)],
    )
    .unwrap();
    let scan = |store: &SledStore| {
        store.for_each_event_by_stream(&mut |_| std::ops::ControlFlow::Continue(()))
    };
    scan(&store).unwrap();

    // `a`'s record copied under `b`'s second version: it decodes, but not as that key.
    let record = settled(&store)
        .get(keys::event_key(&a, Version(1)))
        .unwrap()
        .unwrap();
    settled(&store)
        .insert(keys::event_key(&b, Version(2)), record)
        .unwrap();
    let error = scan(&store).unwrap_err().to_string();
    assert!(error.contains("event `sess-b` version 2"), "{error}");
    assert!(error.contains("does not match its key"), "{error}");

    // A record that does not decode is named by its key, not by its (unreadable) body.
    settled(&store)
        .insert(keys::event_key(&b, Version(2)), &[2, 1, 2, 3, 4, 9][..])
        .unwrap();
    let error = scan(&store).unwrap_err().to_string();
    assert!(error.contains("event `sess-b` version 2"), "{error}");
    assert!(error.contains("checksum"), "{error}");
}

/// The `S` values of `stream`, as (first version, events in the value).
fn event_values(store: &SledStore, stream: &SessionId) -> Vec<(u64, usize)> {
    settled(store)
        .scan_prefix(keys::session_prefix(keys::EVENT, stream))
        .map(|entry| {
            let (key, value) = entry.unwrap();
            let (_, first) = keys::parse_event_key(&key).unwrap();
            (first.0, crate::record::event_count("", &value).unwrap())
        })
        .collect()
}

/// Appends of `stream`'s events numbered `numbers`, in one commit's ops.
fn appends(stream: &SessionId, numbers: impl IntoIterator<Item = u64>) -> Vec<TestOp> {
    numbers
        .into_iter()
        .map(|n| append(stream, event(n), false))
        .collect()
}

fn versions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|event| event.version.0).collect()
}

#[test]
fn a_commit_packs_each_streams_run_under_one_key_and_every_read_finds_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (stream("a"), stream("b"));
    {
        let store = SledStore::open(dir.path()).unwrap();
        let mut ops = appends(&a, 1..=3);
        ops.extend(appends(&b, 4..=5));
        commit(&store, ops).unwrap();
        commit(&store, appends(&a, [6])).unwrap();
        store.sync().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(event_values(&store, &a), vec![(1, 3), (4, 1)]);
    assert_eq!(event_values(&store, &b), vec![(1, 2)]);
    assert_eq!(store.stream_start(&a).unwrap().version, Version(4));
    assert_eq!(store.stream_start(&b).unwrap().version, Version(2));
    assert_eq!(
        store.stream_start(&stream("c")).unwrap().version,
        Version::EMPTY
    );
    // From before, inside and after a packed value, with limits cutting inside one.
    for after in 0..=4 {
        let read = store.read_stream(&a, Version(after), usize::MAX).unwrap();
        assert_eq!(versions(&read), ((after + 1)..=4).collect::<Vec<_>>());
    }
    assert_eq!(
        versions(&store.read_stream(&a, Version(1), 1).unwrap()),
        [2]
    );
    assert_eq!(
        versions(&store.read_stream(&a, Version(0), 0).unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        versions(&store.read_stream(&a, Version(2), 2).unwrap()),
        [3, 4]
    );
    assert!(store
        .read_stream(&stream("c"), Version(0), 10)
        .unwrap()
        .is_empty());
    // Positions: a 1-3, b 4-5, a 6; reading from inside the commit.
    let all = store.read_all(Position(1), 3).unwrap();
    let positions: Vec<u64> = all.iter().map(|event| event.position.0).collect();
    assert_eq!(positions, [2, 3, 4]);
    assert_eq!((all[2].stream.as_str(), all[2].version), ("b", Version(1)));
    let mut scanned = Vec::new();
    store
        .for_each_event_by_stream(&mut |event| {
            scanned.push((event.stream.as_str().to_owned(), event.version.0));
            ControlFlow::Continue(())
        })
        .unwrap();
    let expected: Vec<(String, u64)> = [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("b", 2)]
        .into_iter()
        .map(|(stream, version)| (stream.to_owned(), version))
        .collect();
    assert_eq!(scanned, expected);
    assert_eq!(store.verify().unwrap().events, 6);
    assert_consistent(&store);
}

#[test]
fn a_packed_value_stays_within_its_byte_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let a = stream("a");
    let big = |n: u64| {
        let mut event = event(n);
        let text = format!("{{\"n\": {n}, \"pad\": \"{}\"}}", "x".repeat(1_500));
        event.raw = Some(RawJson::from_string(text).unwrap());
        event
    };
    commit(
        &store,
        (1..=20).map(|n| append(&a, big(n), false)).collect(),
    )
    .unwrap();
    let values = event_values(&store, &a);
    assert!(values.len() >= 5, "{values:?}");
    assert_eq!(values.iter().map(|(_, count)| count).sum::<usize>(), 20);
    for entry in settled(&store).scan_prefix(keys::session_prefix(keys::EVENT, &a)) {
        let (_, value) = entry.unwrap();
        let records: usize = event_records("", &value)
            .unwrap()
            .iter()
            .map(|r| r.len())
            .sum();
        assert!(
            records <= MAX_PACKED_BYTES,
            "{records} bytes of records in one value"
        );
    }
    assert_eq!(
        versions(&store.read_stream(&a, Version(7), usize::MAX).unwrap()),
        (8..=20).collect::<Vec<_>>()
    );
    assert_consistent(&store);
}

fn snapshot_at(version: u64, state: &[u8]) -> Snapshot {
    Snapshot {
        compacted: Version::EMPTY,
        provider: Provider::Moneykit,
        version: Version(version),
        state: state.to_vec(),
    }
}

fn snapshot_op(stream: &SessionId, version: u64, state: &[u8]) -> TestOp {
    TestOp::Snapshot(stream.clone(), snapshot_at(version, state))
}

fn layout(store: &SledStore) -> Vec<u8> {
    settled(store)
        .get(keys::LAYOUT_KEY)
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn a_new_store_keeps_each_snapshot_in_its_streams_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (a, b) = (stream("a"), stream("b"));
    let mut ops = appends(&a, 1..=2);
    ops.push(snapshot_op(&a, 2, b"two"));
    ops.push(snapshot_op(&b, 0, b"nothing yet"));
    commit(&store, ops).unwrap();
    assert_eq!(layout(&store), keys::LAYOUT.to_be_bytes());
    assert_eq!(store.snapshot(&a).unwrap().unwrap().state, b"two");
    // A stream with only a snapshot has a head, and is still empty.
    assert_eq!(store.stream_is_empty(&b).unwrap(), Some(true));
    assert_eq!(store.stream_start(&b).unwrap().version, Version::EMPTY);
    // A commit without a snapshot for the stream carries its snapshot over; one with a
    // snapshot replaces it and keeps the dedupe entries.
    commit(&store, vec![append(&a, event(3), false)]).unwrap();
    assert_eq!(store.snapshot(&a).unwrap().unwrap().state, b"two");
    commit(&store, vec![snapshot_op(&a, 3, b"three")]).unwrap();
    assert_eq!(store.snapshot(&a).unwrap().unwrap().version, Version(3));
    let duplicate = commit(&store, vec![append(&a, event(1), false)]).unwrap_err();
    assert!(matches!(duplicate, CommitError::DuplicateKey { .. }));
    // Appending to the stream that had only a snapshot starts it at version 1.
    commit(&store, vec![exact(&b, 0, event(10))]).unwrap();
    assert_eq!(store.snapshot(&b).unwrap().unwrap().state, b"nothing yet");
    let mut seen = Vec::new();
    store
        .for_each_snapshot(None, &mut |session, snapshot| {
            seen.push((session.to_string(), snapshot.version.0));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, [("a".to_string(), 3), ("b".to_string(), 0)]);
    let report = store.verify().unwrap();
    assert_eq!(report.snapshots, 2);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_damaged_packed_value_is_a_clear_error_naming_its_event_and_a_verify_problem() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (a, b) = (stream("sess-a"), stream("sess-b"));
    let mut ops = appends(&a, 1..=2);
    ops.extend(appends(&b, 3..=4));
    commit(&store, ops).unwrap();
    let packed = |stream: &SessionId| {
        settled(&store)
            .get(keys::event_key(stream, Version(1)))
            .unwrap()
            .unwrap()
            .to_vec()
    };
    let (good_a, good_b) = (packed(&a), packed(&b));
    let key = keys::event_key(&b, Version(1));
    let scan =
        |store: &SledStore| store.for_each_event_by_stream(&mut |_| ControlFlow::Continue(()));
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
    // A count of one, a count beyond the value, a length past the end, a byte left over.
    cases.push((vec![PACKED, 1, 3, 1, 2, 3], "fewer than 2"));
    cases.push((vec![PACKED, 0x7f, 1, 1], "exceeds the 2 bytes left"));
    let mut long = vec![PACKED, 2, 0x7f];
    long.extend_from_slice(&[0; 20]);
    cases.push((long, "length 127 exceeds the 20 bytes left"));
    let mut trailing = good_b.clone();
    trailing.push(0);
    cases.push((trailing, "1 bytes left over"));
    // `a`'s records under `b`'s key: they decode, but not as that key.
    cases.push((good_a.clone(), "does not match its key"));
    // A damaged record inside: named by its own version.
    let mut flipped = good_b.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    cases.push((flipped, "version 2: checksum"));
    for (value, expected) in cases {
        settled(&store).insert(&key, value.clone()).unwrap();
        let error = scan(&store).unwrap_err().to_string();
        assert!(error.contains("event `sess-b` version"), "{error}");
        assert!(error.contains(expected), "{expected}: {error}");
        let read = store
            .read_stream(&b, Version(0), 10)
            .unwrap_err()
            .to_string();
        assert!(read.contains(expected), "{expected}: {read}");
        assert!(
            problems(&store)
                .iter()
                .any(|problem| problem.contains(expected)),
            "{expected}: {:?}",
            problems(&store)
        );
    }
    settled(&store).insert(&key, good_b.clone()).unwrap();
    assert_consistent(&store);

    // A packed value under the last possible version: an error, not an overflow.
    let c = stream("sess-c");
    settled(&store)
        .insert(keys::event_key(&c, Version(u64::MAX)), good_b)
        .unwrap();
    let error = store
        .read_stream(&c, Version(u64::MAX - 1), 10)
        .unwrap_err()
        .to_string();
    assert!(error.contains("event `sess-c`"), "{error}");
    assert!(scan(&store).is_err());
    assert!(!problems(&store).is_empty());
}

/// A store that does nothing in the background: sled's files change only at checkpoints,
/// and staged frames are applied only by commits, `after_sync` and closing.
fn quiet_store(path: &Path) -> SledStore {
    let mut options = SledOptions::new(path);
    options.flush_every_ms = None;
    SledStore::open_with(options).unwrap()
}

/// Copies a store's files (not its log) as they are on disk now.
fn copy_sled_files(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if path.is_file() {
            std::fs::copy(&path, to.join(name)).unwrap();
        } else if name != wal::DIR {
            std::fs::create_dir_all(to.join(name)).unwrap();
            copy_sled_files(&path, &to.join(name));
        }
    }
}

fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join(wal::DIR)).unwrap();
    for entry in std::fs::read_dir(from.join(wal::DIR)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(wal::DIR).join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn a_panic_of_sled_while_opening_is_a_corrupt_record_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let error =
        guard_sled::<()>(dir.path(), || panic!("tried to serialize Uninitialized")).unwrap_err();
    let StoreError::Corrupt(corrupt) = error else {
        panic!("{error:?}")
    };
    assert!(corrupt.key.ends_with("db"), "{corrupt:?}");
    assert!(corrupt.reason.contains("Uninitialized"), "{corrupt:?}");
    assert_eq!(guard_sled(dir.path(), || 7).unwrap(), 7);
    // On an open store, a panic of sled's in any operation fails the store for writes.
    let store = quiet_store(dir.path());
    let error = store
        .guarded::<(), StoreError>(|| panic!("tried to serialize Uninitialized"))
        .unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    assert!(matches!(store.health(), Err(StoreError::Failed { .. })));
    assert!(commit(&store, appends(&stream("a"), 1..=1)).is_err());
    assert_eq!(store.head().unwrap(), Position::START, "reads still answer");
}

/// A process killed while sled writes a snapshot leaves `snap.<lsn>.generating`, partial;
/// sled 0.34.7 alone then refuses every open. The store sets the unfinished snapshot aside
/// and opens with everything committed; any other corruption stays an error.
#[test]
fn a_snapshot_sled_never_finished_does_not_stop_the_store_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let a = stream("a");
    {
        let store = SledStore::open(dir.path()).unwrap();
        commit(&store, appends(&a, 1..=5)).unwrap();
        store.sync().unwrap();
    }
    let unfinished = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
    std::fs::write(&unfinished, b"half of a snapshot").unwrap();
    let bare = open_sled_once(dir.path(), &SledOptions::new(dir.path()));
    assert!(
        matches!(bare, Err(StoreError::Corrupt(_))),
        "sled alone refuses it"
    );
    drop(bare);

    let store = SledStore::open(dir.path()).unwrap();
    assert!(!unfinished.exists());
    assert_eq!(store.stream_start(&a).unwrap().version, Version(5));
    assert_consistent(&store);
    commit(&store, appends(&a, 6..=6)).unwrap();
    drop(store);

    // A damaged finished snapshot is sled's data: still an error.
    let snapshots: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .collect();
    assert!(!snapshots.is_empty(), "a closed store has a snapshot");
    for snapshot in &snapshots {
        std::fs::write(snapshot, b"damaged").unwrap();
    }
    assert!(matches!(
        SledStore::open(dir.path()),
        Err(StoreError::Corrupt(_))
    ));
}

/// Finding 2 of issue 25: damaged bytes in sled's own file are an error naming the store,
/// never a panic (sled 0.34 panics on some damaged pages): every one of many single-byte
/// changes either opens and reads, or fails to open with an error.
#[test]
fn a_damaged_sled_file_is_an_error_not_a_panic() {
    // A crash image: sled's files and the log copied while the store is open, as a kill
    // would leave them.
    let live = tempfile::tempdir().unwrap();
    let pristine = tempfile::tempdir().unwrap();
    let store = quiet_store(live.path());
    for n in 0..40u64 {
        commit(
            &store,
            appends(&stream(&format!("s{n}")), n * 10..=n * 10 + 5),
        )
        .unwrap();
        store.sync().unwrap();
    }
    store.durable().sync().unwrap();
    copy_sled_files(live.path(), pristine.path());
    copy_log(live.path(), pristine.path());
    drop(store);
    let db = pristine.path().join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    let mut errors = 0;
    for trial in 0..48usize {
        let copy = tempfile::tempdir().unwrap();
        copy_sled_files(pristine.path(), copy.path());
        copy_log(pristine.path(), copy.path());
        let path = copy.path().join("db");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (trial * 2477 + trial / 3) % len;
        bytes[at] ^= if trial % 2 == 0 { 0xff } else { 0x01 };
        std::fs::write(&path, &bytes).unwrap();
        let opened = std::panic::catch_unwind(|| match SledStore::open(copy.path()) {
            Ok(store) => {
                // Reading every stream may meet the damage too: an error, not a panic;
                // so may writing and checkpointing.
                let _ = store.verify();
                let _ = store.read_all(Position::START, 1_000);
                let _ = commit(&store, appends(&stream("after"), 1..=3));
                let _ = store.sync();
                let _ = store.durable().sync();
                true
            }
            Err(_) => false,
        });
        match opened {
            Ok(true) => {}
            Ok(false) => errors += 1,
            Err(_) => panic!("a byte changed at {at} of {len} made the store panic"),
        }
    }
    assert!(errors < 48, "some damage is in space nothing reads");
}

/// Finding 3 of issue 25: once the log broke (a failed write or fsync, a failed checkpoint or
/// apply on the maintenance thread), the store takes no more commits or syncs, says why,
/// and keeps serving reads.
#[test]
fn a_store_whose_log_broke_takes_no_more_writes_and_keeps_serving_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = quiet_store(dir.path());
    let a = stream("a");
    commit(&store, appends(&a, 1..=2)).unwrap();
    store.sync().unwrap();
    assert!(store.health().is_ok());
    store.wal.fail("EIO on fdatasync");
    store.wal.fail("a later failure");
    let CommitError::Store(refused) = commit(&store, appends(&a, 3..=3)).unwrap_err() else {
        panic!("a store error")
    };
    for error in [
        refused,
        store.sync().unwrap_err(),
        store.health().unwrap_err(),
    ] {
        assert!(
            matches!(&error, StoreError::Failed { reason } if reason.contains("EIO on fdatasync")),
            "{error:?}"
        );
    }
    assert_eq!(store.stream_start(&a).unwrap().version, Version(2));
    assert_eq!(store.read_stream(&a, Version::EMPTY, 10).unwrap().len(), 2);
    drop(store);
    // Reopened, the store takes writes again with every synced commit there.
    let reopened = quiet_store(dir.path());
    assert!(reopened.health().is_ok());
    commit(&reopened, appends(&a, 3..=3)).unwrap();
    assert_eq!(reopened.stream_start(&a).unwrap().version, Version(3));
}

/// Finding 1 of issue 25: five acknowledged commits, then one flipped bit inside the second
/// of their five frames. Opening is `CorruptLog` naming the segment, the offset and the
/// frame, not a store cut short after the first commit; the log is left as it was; a
/// repair keeps a copy, applies the first frame, and names the four it lost with the
/// events they held; the store then opens with the first commit alone.
#[test]
fn a_damaged_frame_before_intact_ones_is_corruption_and_a_repair_says_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = quiet_store(dir.path());
    // A crash image: sled's files as the open made them durable (no commits)...
    let image = tempfile::tempdir().unwrap();
    copy_sled_files(dir.path(), image.path());
    let a = stream("a");
    for n in 1..=5 {
        commit(&store, appends(&a, n..=n)).unwrap();
        store.sync().unwrap();
    }
    // ...and the log with its five frames, the second one damaged.
    copy_log(dir.path(), image.path());
    drop(store);
    let (_, segment) = wal::tests_last_segment(&image.path().join(wal::DIR));
    let mut bytes = std::fs::read(&segment).unwrap();
    let frames = wal::read_log(&image.path().join(wal::DIR), 0)
        .unwrap()
        .frames;
    assert_eq!(frames.len(), 5);
    let first_len = 16 + frames[0].payload.len();
    bytes[first_len + 20] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let log_before: Vec<_> = wal::files_in(&image.path().join(wal::DIR)).unwrap();

    let error = SledStore::open(image.path())
        .err()
        .expect("a damaged log is refused");
    assert!(
        matches!(&error, StoreError::CorruptLog { frame: 2, offset: Some(offset), segment: named }
            if *offset == first_len as u64 && named.ends_with(".wal")),
        "{error:?}"
    );
    assert_eq!(
        wal::files_in(&image.path().join(wal::DIR)).unwrap(),
        log_before,
        "nothing is deleted"
    );
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nor changed");

    let report = SledStore::repair(image.path()).unwrap();
    assert_eq!(report.damaged_frame, Some(2));
    assert_eq!(report.replayed, 1);
    let lost: Vec<(u64, Option<Vec<u64>>)> = report
        .lost
        .iter()
        .map(|frame| {
            (
                frame.frame,
                frame
                    .events
                    .as_ref()
                    .map(|events| events.iter().map(|e| e.version.0).collect()),
            )
        })
        .collect();
    assert_eq!(
        lost,
        [
            (2, None),
            (3, Some(vec![3])),
            (4, Some(vec![4])),
            (5, Some(vec![5])),
        ]
    );
    let copy = report.copy.unwrap();
    assert!(copy.ends_with("wal.damaged-1"));
    let copied = std::fs::read(copy.join(segment.file_name().unwrap())).unwrap();
    assert_eq!(copied, bytes, "the damaged log is kept");
    let repaired = SledStore::open(image.path()).unwrap();
    assert_eq!(
        versions(&repaired.read_stream(&a, Version::EMPTY, 10).unwrap()),
        [1]
    );
    assert_eq!(repaired.head().unwrap(), Position(1));
    assert_consistent(&repaired);
    // Writing goes on from there; a second repair finds nothing to do.
    commit(&repaired, appends(&a, 6..=6)).unwrap();
    repaired.sync().unwrap();
    drop(repaired);
    let again = SledStore::repair(image.path()).unwrap();
    assert_eq!(again.copy, None);
    assert!(again.lost.is_empty());
}

#[test]
fn acknowledged_commits_that_sled_never_wrote_are_replayed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = quiet_store(dir.path());
    // A crash image: sled's files as the open made them durable (the layout, no commits)...
    let image = tempfile::tempdir().unwrap();
    copy_sled_files(dir.path(), image.path());
    let bare = tempfile::tempdir().unwrap();
    copy_sled_files(dir.path(), bare.path());
    let (a, b) = (stream("a"), stream("b"));
    commit(&store, appends(&a, 1..=3)).unwrap();
    let mut second = appends(&b, 4..=5);
    second.push(append(&a, event(6), true));
    second.push(snapshot_op(&a, 4, b"a at 4"));
    commit(&store, second).unwrap();
    commit(&store, appends(&a, 7..=7)).unwrap();
    // A refused commit (a duplicate key): no frame.
    commit(&store, appends(&a, 7..=7)).unwrap_err();
    store.sync().unwrap();
    // ...and the log as the syncs left it.
    copy_log(dir.path(), image.path());
    let torn = tempfile::tempdir().unwrap();
    copy_sled_files(image.path(), torn.path());
    copy_log(dir.path(), torn.path());
    drop(store);

    let recovered = SledStore::open(image.path()).unwrap();
    assert_eq!(
        versions(
            &recovered
                .read_stream(&a, Version::EMPTY, usize::MAX)
                .unwrap()
        ),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        versions(
            &recovered
                .read_stream(&b, Version::EMPTY, usize::MAX)
                .unwrap()
        ),
        [1, 2]
    );
    assert_eq!(recovered.head().unwrap(), Position(7));
    assert!(
        recovered.read_stream(&a, Version(3), 1).unwrap()[0].rejected,
        "the rejected flag is replayed"
    );
    assert_eq!(recovered.snapshot(&a).unwrap().unwrap().state, b"a at 4");
    assert_consistent(&recovered);
    // The replayed store goes on from there, and its frames are numbered after them.
    commit(&recovered, appends(&b, 8..=8)).unwrap();
    assert_eq!(applied_frame(settled(&recovered)).unwrap(), 4);
    drop(recovered);

    // Without the log the same image has none of it: the replay did the work.
    let lost = SledStore::open(bare.path()).unwrap();
    assert_eq!(lost.head().unwrap(), Position::START);
    drop(lost);

    // A last frame cut short (a crash inside its write, never acknowledged) is dropped;
    // the frames before it are replayed.
    let (_, segment) = wal::tests_last_segment(&torn.path().join(wal::DIR));
    let bytes = std::fs::read(&segment).unwrap();
    std::fs::write(&segment, &bytes[..bytes.len() - 5]).unwrap();
    let cut = SledStore::open(torn.path()).unwrap();
    assert_eq!(
        versions(&cut.read_stream(&a, Version::EMPTY, usize::MAX).unwrap()),
        [1, 2, 3, 4]
    );
    assert_eq!(cut.head().unwrap(), Position(6));
    assert_consistent(&cut);
}

#[test]
fn commits_are_read_from_staging_until_a_sync_lets_them_into_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store = quiet_store(dir.path());
    let (a, b) = (stream("a"), stream("b"));
    commit(&store, appends(&a, 1..=3)).unwrap();
    let mut second = appends(&b, 4..=5);
    second.push(append(&a, event(6), true));
    second.push(snapshot_op(&a, 4, b"a at 4"));
    commit(&store, second).unwrap();
    // Not synced: sled holds none of it, every read sees all of it.
    assert!(store.db.get(keys::list_key(&a)).unwrap().is_none());
    assert!(store.db.get(keys::WAL_KEY).unwrap().is_none());
    let seen = |store: &SledStore| {
        assert_eq!(
            versions(&store.read_stream(&a, Version::EMPTY, usize::MAX).unwrap()),
            [1, 2, 3, 4]
        );
        assert_eq!(store.stream_start(&b).unwrap().version, Version(2));
        assert_eq!(store.read_all(Position(2), 10).unwrap().len(), 4);
        assert_eq!(store.snapshot(&a).unwrap().unwrap().state, b"a at 4");
        assert!(store
            .find_dedupe(&b, &event(5).dedupe_key)
            .unwrap()
            .is_some());
        assert_eq!(store.stream_is_empty(&b).unwrap(), Some(false));
        assert_consistent(store);
    };
    seen(&store);
    // Another commit, in staging only.
    commit(&store, appends(&a, 9..=9)).unwrap();
    assert_eq!(store.stream_start(&a).unwrap().version, Version(5));
    assert!(store
        .db
        .scan_prefix(keys::session_prefix(keys::EVENT, &a))
        .next()
        .is_none());
    // A sync makes the frames durable; the next commit applies them first.
    store.sync().unwrap();
    assert!(store.db.get(keys::list_key(&a)).unwrap().is_none());
    commit(&store, appends(&b, 7..=7)).unwrap();
    assert_eq!(applied_frame(&store.db).unwrap(), 3);
    assert!(store.db.get(keys::list_key(&a)).unwrap().is_some());
    assert_eq!(
        store
            .db
            .scan_prefix(keys::session_prefix(keys::EVENT, &a))
            .count(),
        3,
        "a's runs of three commits, each under one key"
    );
    assert_eq!(store.stream_start(&a).unwrap().version, Version(5));
    assert_eq!(store.stream_start(&b).unwrap().version, Version(3));
    // The engine's sync threads apply what a sync made durable once they have answered.
    commit(&store, appends(&a, 8..=8)).unwrap();
    store.sync().unwrap();
    assert!(!store.staged.is_empty());
    store.after_sync().unwrap();
    assert!(store.staged.is_empty());
    assert_eq!(applied_frame(&store.db).unwrap(), 5);
    drop(store);
    // Closing applies and checkpoints everything: sled alone holds it.
    let reopened = SledStore::open(dir.path()).unwrap();
    assert_eq!(applied_frame(&reopened.db).unwrap(), 5);
    assert_eq!(reopened.head().unwrap(), Position(9));
    assert_consistent(&reopened);
}

#[test]
fn a_frame_sled_holds_only_part_of_is_replayed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = quiet_store(dir.path());
    let image = tempfile::tempdir().unwrap();
    copy_sled_files(dir.path(), image.path());
    let (a, b) = (stream("a"), stream("b"));
    commit(&store, appends(&a, 1..=3)).unwrap();
    let mut second = appends(&b, 4..=5);
    second.extend(appends(&a, 6..=6));
    second.push(append(&a, event(7), true));
    commit(&store, second).unwrap();
    store.sync().unwrap();
    copy_log(dir.path(), image.path());
    drop(store);
    // A crash image in which sled got frame 1 and then the first half of frame 2's writes
    // (sled recovers a prefix of its writes, which may end inside a frame).
    {
        let db = open_sled(image.path(), &SledOptions::new(image.path())).unwrap();
        let frames = wal::recover(&image.path().join(wal::DIR), 0).unwrap();
        assert_eq!(frames.len(), 2);
        for write in wal::decode_payload(&frames[0].payload).unwrap() {
            if let wal::Write1::Insert(key, value) = write {
                db.insert(key, value).unwrap();
            }
        }
        db.insert(keys::WAL_KEY, &1u64.to_be_bytes()).unwrap();
        let writes = wal::decode_payload(&frames[1].payload).unwrap();
        assert!(writes.len() >= 4, "{writes:?}");
        for write in &writes[..writes.len() / 2] {
            if let wal::Write1::Insert(key, value) = write {
                db.insert(key, *value).unwrap();
            }
        }
        db.flush().unwrap();
    }
    let recovered = SledStore::open(image.path()).unwrap();
    assert_eq!(recovered.head().unwrap(), Position(7));
    let a_events = recovered
        .read_stream(&a, Version::EMPTY, usize::MAX)
        .unwrap();
    assert_eq!(versions(&a_events), [1, 2, 3, 4, 5]);
    assert!(a_events[4].rejected);
    assert_eq!(recovered.stream_start(&b).unwrap().version, Version(2));
    assert_consistent(&recovered);
}

#[test]
fn commits_nobody_syncs_reach_the_log_within_the_background_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = SledOptions::new(dir.path());
    options.flush_every_ms = Some(20);
    let store = SledStore::open_with(options).unwrap();
    let image = tempfile::tempdir().unwrap();
    copy_sled_files(dir.path(), image.path());
    let a = stream("a");
    commit(&store, appends(&a, 1..=3)).unwrap();
    // No sync: the maintenance thread writes and syncs the frames on its own.
    let wal = &store.wal;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while wal.pending_bytes() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was never written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The frames' `fdatasync` follows their write: wait for the log to hold them.
    while wal::recover(&dir.path().join(wal::DIR), 0)
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log holds no frame"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    copy_log(dir.path(), image.path());
    // And the maintenance thread applies them to sled after its sync.
    while !store.staged.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the frames were never applied"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(applied_frame(&store.db).unwrap(), 1);
    drop(store);
    let recovered = SledStore::open(image.path()).unwrap();
    assert_eq!(recovered.head().unwrap(), Position(3));
    assert_consistent(&recovered);
}

#[test]
fn a_damaged_log_position_is_a_clear_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        commit(&store, appends(&stream("a"), 1..=1)).unwrap();
        store
            .raw_insert_for_tests(keys::WAL_KEY, &[1, 2, 3])
            .unwrap();
    }
    let error = SledStore::open(dir.path()).err().unwrap().to_string();
    assert!(
        error.contains("write-ahead log position (Mwal)") && error.contains("3 bytes, not 8"),
        "{error}"
    );
}

#[test]
fn a_closed_store_leaves_no_log_and_sled_holds_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let a = stream("a");
    {
        let store = SledStore::open(dir.path()).unwrap();
        commit(&store, appends(&a, 1..=2)).unwrap();
        store.sync().unwrap();
        assert!(store.size_on_disk().unwrap() > 0);
        assert!(
            std::fs::read_dir(dir.path().join(wal::DIR))
                .unwrap()
                .count()
                > 0
        );
        store.close().unwrap();
        // Closed: no more writes, reads go on, a second close does nothing.
        assert!(matches!(
            commit(&store, appends(&a, 3..=3)),
            Err(CommitError::Store(StoreError::Closed))
        ));
        assert!(matches!(store.sync(), Err(StoreError::Closed)));
        assert_eq!(store.stream_start(&a).unwrap().version, Version(2));
        store.close().unwrap();
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join(wal::DIR))
            .unwrap()
            .count(),
        0
    );
    // The log is gone, so what the reopened store holds came from sled alone.
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(layout(&store), keys::LAYOUT.to_be_bytes());
    assert_eq!(store.head().unwrap(), Position(2));
    assert_eq!(applied_frame(settled(&store)).unwrap(), 1);
}

/// Dropping a store only stops its background work: its log stays, and the next open
/// replays it.
#[test]
fn a_dropped_store_keeps_its_log_for_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let a = stream("a");
    {
        let store = SledStore::open(dir.path()).unwrap();
        commit(&store, appends(&a, 1..=2)).unwrap();
        store.sync().unwrap();
    }
    assert!(
        std::fs::read_dir(dir.path().join(wal::DIR))
            .unwrap()
            .count()
            > 0
    );
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.head().unwrap(), Position(2));
    assert_eq!(store.stream_start(&a).unwrap().version, Version(2));
    assert_consistent(&store);
}

#[test]
fn a_log_that_fills_its_segments_is_checkpointed_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = SledOptions::new(dir.path());
    options.wal_segment_bytes = 4 * 1024;
    let store = SledStore::open_with(options).unwrap();
    for n in 0..200 {
        let session = stream(&format!("s{}", n % 7));
        commit(&store, appends(&session, [n])).unwrap();
        store.sync().unwrap();
    }
    // Checkpoints keep up: the log holds a few small segments, not every frame.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(dir.path().join(wal::DIR))
        .unwrap()
        .count()
        > 4
    {
        assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(problems(&store).is_empty());
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.head().unwrap(), Position(200));
    assert!(problems(&store).is_empty());
}

/// Reads the tests of this module ask for by themselves.
impl SledStore {
    /// Every commit that appends an event of a stream writes the stream's head, with its
    /// version: no head, or version 0, means nothing stored.
    pub(crate) fn stream_is_empty(&self, stream: &SessionId) -> Result<Option<bool>, StoreError> {
        self.guarded(|| match self.staged.get(keys::list_key(stream))? {
            Some(value) => Ok(Some(
                DedupeList::version_encoded(stream, &value)? == Version::EMPTY,
            )),
            None => Ok(Some(true)),
        })
    }

    /// The stream's snapshot, if one was stored (an empty stream's too).
    pub(crate) fn snapshot(&self, stream: &SessionId) -> Result<Option<Snapshot>, StoreError> {
        self.guarded(|| match self.staged.get(keys::list_key(stream))? {
            Some(value) => snapshot_in_head(stream, &value),
            None => Ok(None),
        })
    }
}

/// One seeded point of the whole store on the simulated disk: events committed to a few
/// streams and synced at random, until the disk fails a write or a sync of the log (EIO,
/// ENOSPC) or the process dies; then the crash image (sled's files as they are, the log cut
/// to what its syncs made durable) is opened. Checked against the model (the events whose
/// sync returned `Ok`): every acknowledged event is there exactly once, every event there is
/// one that was committed (nothing half there), `verify` is clean, and the reopened store
/// takes writes again.
fn store_fault_point(seed: u64) -> Result<String, String> {
    use crate::wal::sim::{DiskFault, Seeded, SimDisk};
    let mut rng = Seeded(seed ^ 0x5_70_2E);
    let fault = DiskFault::pick(&mut rng);
    let disk = SimDisk::new(rng.next(), fault, 1 + rng.below(40));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut options = SledOptions::new(dir.path());
    options.flush_every_ms = None;
    options.wal_segment_bytes = 4_096;
    options.wal_io = WalIo(SimDisk::io(&disk));
    let store = SledStore::open_with(options).map_err(|e| e.to_string())?;
    let streams: Vec<SessionId> = (0..3).map(|n| stream(&format!("s{n}"))).collect();
    let (mut committed, mut unsynced, mut acked) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = false;
    for n in 1..=60u64 {
        let target = &streams[rng.below(3) as usize];
        match commit(&store, vec![append(target, event(n), false)]) {
            Ok(_) => {
                committed.push(n);
                unsynced.push(n);
            }
            Err(_) => failed = true,
        }
        if !failed && rng.below(3) == 0 {
            match store.sync() {
                Ok(()) => acked.append(&mut unsynced),
                Err(_) => failed = true,
            }
        }
        if failed || maintenance::lock(&disk).struck {
            break;
        }
    }
    if failed && store.sync().is_ok() {
        return Err("a sync succeeded after the log failed".into());
    }
    // The crash image once the maintenance thread stopped (a checkpoint in progress would
    // move segments while they are copied): sled's files hold only frames the log made
    // durable, whatever sled flushed meanwhile, and the log is cut to what its syncs made
    // durable.
    drop(store);
    let image = tempfile::tempdir().map_err(|e| e.to_string())?;
    copy_sled_files(dir.path(), image.path());
    maintenance::lock(&disk)
        .crash_image(&dir.path().join(wal::DIR), &image.path().join(wal::DIR))
        .map_err(|e| e.to_string())?;
    let reopened = SledStore::open(image.path()).map_err(|e| format!("{fault:?}: {e}"))?;
    let mut stored: Vec<u64> = Vec::new();
    for target in &streams {
        for event in reopened
            .read_stream(target, Version::EMPTY, usize::MAX)
            .map_err(|e| e.to_string())?
        {
            let n = (1..=60u64)
                .find(|n| {
                    crate::record::DedupeKey::derive(&[b"sled", &n.to_be_bytes()])
                        == event.data.dedupe_key
                })
                .ok_or_else(|| format!("{fault:?}: an event nobody committed"))?;
            stored.push(n);
        }
    }
    stored.sort_unstable();
    if stored.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(format!("{fault:?}: an event stored twice: {stored:?}"));
    }
    if let Some(lost) = acked.iter().find(|n| !stored.contains(n)) {
        return Err(format!("{fault:?}: acknowledged event {lost} is gone"));
    }
    if let Some(extra) = stored.iter().find(|n| !committed.contains(n)) {
        return Err(format!("{fault:?}: event {extra} was never committed"));
    }
    let report = reopened.verify().map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("{fault:?}: verify: {:?}", report.problems));
    }
    // Reopened (the disk's fault gone, as after space was freed), the store takes writes again.
    commit(&reopened, vec![append(&streams[0], event(1_000), false)])
        .and_then(|_| Ok(reopened.sync()?))
        .map_err(|e| format!("{fault:?}: writing after the reopen: {e}"))?;
    Ok(format!("{fault:?}"))
}

/// Seeded points of the whole store on the simulated disk (`LINKFLOW_FAULT_SEEDS` points from
/// `LINKFLOW_FAULT_SEED_BASE`, 300 by default: each opens a store). A failing seed prints how
/// to replay it.
#[test]
fn the_store_on_a_failing_disk_keeps_every_acknowledged_event_and_verifies() {
    let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
    for seed in crate::wal::sim::fault_seeds(300) {
        match store_fault_point(seed) {
            Ok(kind) => *seen.entry(kind).or_default() += 1,
            Err(what) => panic!(
                "seed {seed}: {what} (replay: LINKFLOW_FAULT_SEED_BASE={seed} LINKFLOW_FAULT_SEEDS=1)"
            ),
        }
    }
    eprintln!("store fault points: {seen:?}");
}

/// A counter cell whose bytes do not decode (cut short, a counter at zero, names out of
/// order) is a clear error naming the cell when walked, fails a commit that would add to it
/// (nothing written), and is a verify problem; other cells are unaffected.
#[test]
fn a_damaged_counter_cell_is_a_clear_error_and_a_verify_problem() {
    use crate::store::CounterDelta;
    use std::ops::ControlFlow;
    let bad_values: [&[u8]; 3] = [
        &[2, 1, b'a'],
        // One counter, named "a", at zero (zigzag 0).
        &[1, 1, b'a', 0],
        // "b" then "a": out of name order.
        &[2, 1, b'b', 2, 1, b'a', 2],
    ];
    for bad in bad_values {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let deltas = |cell: &[u8]| Commit {
            counters: vec![CounterDelta::new(cell, &b"n"[..], 1)],
            ..Commit::default()
        };
        store.commit(deltas(b"good")).unwrap();
        store.commit(deltas(b"hurt")).unwrap();
        store.sync().unwrap();
        store.after_sync().unwrap();
        settled(&store)
            .insert(keys::tagged(keys::COUNTER, b"hurt"), bad)
            .unwrap();
        let error = store
            .for_each_counter(b"hurt", b"huru", &mut |_, _, _| ControlFlow::Continue(()))
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt(corrupt) if corrupt.key.contains("counter cell \"hurt\"")),
            "{error}"
        );
        let error = store.commit(deltas(b"hurt")).unwrap_err();
        assert!(
            matches!(error, CommitError::Store(StoreError::Corrupt(_))),
            "{error}"
        );
        let mut good = Vec::new();
        store
            .for_each_counter(b"good", b"goodz", &mut |_, name, value| {
                good.push((name.to_vec(), value));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(good, vec![(b"n".to_vec(), 1)]);
        let found = problems(&store);
        assert!(
            found.iter().any(|p| p.contains("counter cell \"hurt\"")),
            "{found:?}"
        );
    }
}

/// An index run whose bytes do not decode (its count cut short, a key cut short, its keys out
/// of order, bytes left over) is a clear error naming the run when walked, fails a commit
/// that would change it (nothing written), and is a verify problem; other runs are unaffected.
#[test]
fn a_damaged_index_run_is_a_clear_error_and_a_verify_problem() {
    use crate::store::IndexChange::Put;
    use std::ops::ControlFlow;
    let bad_values: [&[u8]; 4] = [
        &[0x80],
        &[1, 0, 9, b'x'],
        // One key after "hurt" sharing all 4 of its bytes and adding none: not after it.
        &[1, 4, 0],
        &[0, 7],
    ];
    for bad in bad_values {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let put = |key: &[u8]| Commit {
            index: vec![Put(key.to_vec())],
            ..Commit::default()
        };
        store.commit(put(b"good")).unwrap();
        store.commit(put(b"hurt")).unwrap();
        store.sync().unwrap();
        store.after_sync().unwrap();
        let runs: Vec<Vec<u8>> = settled(&store)
            .scan_prefix([keys::INDEX])
            .keys()
            .map(|key| key.unwrap().to_vec())
            .collect();
        assert_eq!(
            runs,
            vec![keys::tagged(keys::INDEX, b"good")],
            "two keys, one run"
        );
        // The damaged run holds "hurt" alone, and "good" its own run before it.
        let db = settled(&store);
        db.insert(keys::tagged(keys::INDEX, b"good"), &[0u8][..])
            .unwrap();
        db.insert(keys::tagged(keys::INDEX, b"hurt"), bad).unwrap();
        let walk = |from: &[u8], to: &[u8]| {
            let mut keys = Vec::new();
            store
                .for_each_index_key(from, to, &mut |key| {
                    keys.push(key.to_vec());
                    ControlFlow::Continue(())
                })
                .map(|()| keys)
        };
        let error = walk(b"hurt", b"huru").unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt(corrupt) if corrupt.key.contains("index run \"hurt\"")),
            "{error}"
        );
        let error = store.commit(put(b"hurz")).unwrap_err();
        assert!(
            matches!(error, CommitError::Store(StoreError::Corrupt(_))),
            "{error}"
        );
        assert_eq!(walk(b"good", b"goodz").unwrap(), vec![b"good".to_vec()]);
        let found = problems(&store);
        assert!(
            found.iter().any(|p| p.contains("index run \"hurt\"")),
            "{found:?}"
        );
    }
}

/// A compacted record is checked like an event's (its place, its dedupe entry, its checksum);
/// one after an event of its stream (compaction compacts a stream through its version) or one
/// where the global index expects an event elsewhere is damage verify names, and a damaged one
/// is an error of the reads that meet it, not a record they skip.
#[test]
fn verify_checks_compacted_records_and_names_the_misplaced_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let a = stream("a");
    let placed = commit(&store, vec![append(&a, event(1), false)]).unwrap();
    commit(&store, vec![append(&a, event(2), false)]).unwrap();
    assert_consistent(&store);
    let stub = |version: u64, n: u64, position: u64| {
        crate::record::encode_compacted(&crate::record::CompactedEvent {
            stream: a.clone(),
            version: Version(version),
            position: Position(position),
            dedupe_key: event(n).dedupe_key,
            stored_at: event(n).received_at,
            rejected: false,
        })
    };
    // Version 2 compacted while version 1 is not.
    store
        .raw_insert_for_tests(&keys::event_key(&a, Version(2)), &stub(2, 2, 2))
        .unwrap();
    let found = problems(&store);
    assert!(
        found
            .iter()
            .any(|problem| problem.contains("is compacted, but an event before it is not")),
        "{found:?}"
    );
    // Both compacted, in place: consistent again, and reads skip them.
    store
        .raw_insert_for_tests(
            &keys::event_key(&a, Version(1)),
            &stub(1, 1, placed[0].position.0),
        )
        .unwrap();
    assert_consistent(&store);
    assert!(store
        .read_stream(&a, Version::EMPTY, 10)
        .unwrap()
        .is_empty());
    assert!(store.read_all(Position::START, 10).unwrap().is_empty());
    // A compacted record at another position than the global index's: named.
    store
        .raw_insert_for_tests(&keys::event_key(&a, Version(1)), &stub(1, 1, 2))
        .unwrap();
    let found = problems(&store);
    assert!(
        found
            .iter()
            .any(|problem| problem.contains("the global index says 1")),
        "{found:?}"
    );
    assert!(store.read_all(Position::START, 10).is_err());
    // A damaged compacted record is an error for reads, not a record to skip.
    let mut damaged = stub(1, 1, 1);
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    store
        .raw_insert_for_tests(&keys::event_key(&a, Version(1)), &damaged)
        .unwrap();
    assert!(store.read_stream(&a, Version::EMPTY, 10).is_err());
    assert!(problems(&store)
        .iter()
        .any(|problem| problem.contains("checksum mismatch")));
}

//! The store conformance suite against the sled backend, plus sled-specific failure cases.

use linkflow_core::{Position, Version};
use linkflow_store::conformance::{event, stream, Harness, SledHarness};
use linkflow_store::{Append, Commit, EventStore, SledStore, StoreError};

linkflow_store::conformance_tests!(SledHarness);

#[test]
fn a_corrupted_event_record_is_a_clear_error_and_a_verify_problem() {
    let harness = SledHarness::fresh();
    let store = harness.open();
    let a = stream("sess-1");
    let new = event(1);
    store
        .commit(Commit {
            appends: vec![Append {
                stream: a.clone(),
                expected: Version::EMPTY,
                stored_at: new.received_at,
                event: new,
                rejected: false,
            }],
            snapshots: Vec::new(),
            ..Commit::default()
        })
        .unwrap();
    let key = SledStore::raw_event_key_for_tests(&a, Version(1));
    let mut bytes = store.raw_get_for_tests(&key).unwrap().unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    store.raw_insert_for_tests(&key, &bytes).unwrap();

    let error = store.read_stream(&a, Version(0), 10).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)));
    let message = error.to_string();
    assert!(message.contains("event `sess-1` version 1"), "{message}");
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(store.read_all(Position(0), 10).is_err());

    let report = store.verify().unwrap();
    assert!(!report.is_clean());
    assert!(report.problems.iter().any(|p| p.record.contains("sess-1")));
}

#[test]
fn a_data_dir_in_use_is_refused_with_a_clear_error() {
    let harness = SledHarness::fresh();
    let _first = harness.open();
    let dir = _first.path().to_path_buf();
    match SledStore::open(&dir) {
        Err(StoreError::Locked { path }) => assert_eq!(path, dir.display().to_string()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open of a data dir in use succeeded"),
    }
}

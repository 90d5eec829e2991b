//! The sled backend's consistency walk.

use std::collections::HashMap;

use linkflow_core::{Position, SessionId, Version};

use crate::keys;
use crate::record::{upcast_event, upcast_parked, upcast_snapshot};
use crate::store::{DedupeHit, VerifyReport};
use crate::StoreError;

/// Walks every key family and cross-checks them:
/// - the global index's commits tile positions 1..=head with no gap or overlap, and every
///   position they name holds an event record that names the same position;
/// - every stream holds versions 1..=n with no gap; every record decodes (checksum included),
///   matches its key, and has a dedupe entry pointing back at it;
/// - every dedupe entry points at an existing event or parked record;
/// - every parked record decodes and its dedupe entry points back at it;
/// - every snapshot decodes and is not ahead of its stream.
pub(crate) fn verify_sled(db: &sled::Db, head: Position) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();

    // Global index.
    let mut next = Position(1);
    for entry in db.scan_prefix([keys::GLOBAL]) {
        let (key, value) = entry?;
        let first = match keys::parse_global_key(&key) {
            Ok(first) => first,
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        let what = format!("global index entry at position {first}");
        if first != next {
            report.problem(
                &what,
                format!("expected the next commit to start at position {next}"),
            );
        }
        let runs = match keys::parse_runs(first, &value) {
            Ok(runs) => runs,
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        let mut position = first;
        for run in runs {
            for offset in 0..u64::from(run.events) {
                let version = Version(run.first_version.0 + offset);
                let record = keys::describe_event(&run.stream, version);
                match db.get(keys::event_key(&run.stream, version))? {
                    None => report.problem(&what, format!("names {record}, which does not exist")),
                    Some(bytes) => {
                        if let Ok(event) = upcast_event(&record, &bytes) {
                            if event.position != position {
                                report.problem(
                                    &record,
                                    format!(
                                        "has position {}, the global index says {position}",
                                        event.position
                                    ),
                                );
                            }
                        }
                    }
                }
                position = position.next();
            }
        }
        next = position;
    }
    if next != head.next() {
        report.problem(
            "global index",
            format!(
                "covers positions up to {}, the store's head is {head}",
                next.0 - 1
            ),
        );
    }

    // Streams.
    let mut stream_versions: HashMap<SessionId, Version> = HashMap::new();
    let mut current: Option<(SessionId, Version)> = None;
    for entry in db.scan_prefix([keys::EVENT]) {
        let (key, bytes) = entry?;
        report.events += 1;
        let (session, version) = match keys::parse_event_key(&key) {
            Ok(parsed) => parsed,
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        let what = keys::describe_event(&session, version);
        let previous = match &current {
            Some((stream, last)) if *stream == session => *last,
            _ => {
                report.streams += 1;
                Version::EMPTY
            }
        };
        if version != previous.next() {
            report.problem(&what, format!("gap: expected version {}", previous.next()));
        }
        current = Some((session.clone(), version));
        stream_versions.insert(session.clone(), version);
        let event = match upcast_event(&what, &bytes) {
            Ok(event) => event,
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        if event.stream != session || event.version != version {
            report.problem(&what, "record does not match its key");
        }
        if event.position > head || event.position == Position::START {
            report.problem(
                &what,
                format!("position {} is outside 1..={head}", event.position),
            );
        }
        let key = event.data.dedupe_key;
        match db.get(keys::dedupe_key(&session, &key))? {
            Some(value) => match keys::parse_dedupe_value(&session, &key, &value) {
                Ok(DedupeHit::Accepted { position, .. }) if position == event.position => {}
                Ok(other) => report.problem(
                    &what,
                    format!("its dedupe entry points elsewhere: {other:?}"),
                ),
                Err(error) => report.problems.push(error.into()),
            },
            None => report.problem(&what, format!("no dedupe entry for key {key}")),
        }
    }
    if report.events != head.0 {
        report.problem(
            "streams",
            format!(
                "{} event records, but the head position is {head}",
                report.events
            ),
        );
    }

    // Dedupe entries.
    for entry in db.scan_prefix([keys::DEDUPE]) {
        let (key, value) = entry?;
        let (session, dedupe) = match keys::parse_dedupe_key(&key) {
            Ok(parsed) => parsed,
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        let what = format!("dedupe entry {dedupe} of `{session}`");
        match keys::parse_dedupe_value(&session, &dedupe, &value) {
            Ok(DedupeHit::Accepted { version, .. }) => {
                if db.get(keys::event_key(&session, version))?.is_none() {
                    report.problem(
                        &what,
                        format!(
                            "points at {} which does not exist",
                            keys::describe_event(&session, version)
                        ),
                    );
                }
            }
            Ok(DedupeHit::Parked { event_id, .. }) => {
                if db.get(keys::parked_key(&session, event_id))?.is_none() {
                    report.problem(
                        &what,
                        format!("points at parked event {event_id}, which does not exist"),
                    );
                }
            }
            Err(error) => report.problems.push(error.into()),
        }
    }

    // Parked events.
    for entry in db.scan_prefix([keys::PARKED]) {
        let (key, bytes) = entry?;
        report.parked += 1;
        let (session, event_id) = match keys::parse_parked_key(&key) {
            Ok(parsed) => parsed,
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        let what = format!("parked event {event_id} of `{session}`");
        match upcast_parked(&what, &bytes) {
            Ok(parked) => {
                let key = parked.data.dedupe_key;
                let points_back = match db.get(keys::dedupe_key(&session, &key))? {
                    Some(value) => matches!(
                        keys::parse_dedupe_value(&session, &key, &value),
                        Ok(DedupeHit::Parked { event_id: id, .. }) if id == event_id
                    ),
                    None => false,
                };
                if !points_back {
                    report.problem(&what, "its dedupe entry does not point back at it");
                }
            }
            Err(error) => report.problems.push(error.into()),
        }
    }

    // Snapshots.
    for entry in db.scan_prefix([keys::SNAPSHOT]) {
        let (key, bytes) = entry?;
        report.snapshots += 1;
        let session = match keys::parse_snapshot_key(&key) {
            Ok(session) => session,
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        let what = format!("snapshot of `{session}`");
        match upcast_snapshot(&what, &bytes) {
            Ok(snapshot) => {
                let stream = stream_versions.get(&session).copied().unwrap_or_default();
                if snapshot.version > stream {
                    report.problem(
                        &what,
                        format!(
                            "is at version {}, ahead of its stream at {stream}",
                            snapshot.version
                        ),
                    );
                }
            }
            Err(error) => report.problems.push(error.into()),
        }
    }
    Ok(report)
}

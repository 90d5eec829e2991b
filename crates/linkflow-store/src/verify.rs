//! The sled backend's consistency walk.

use std::collections::HashMap;

use linkflow_core::{Position, SessionId, Version};

use crate::keys;
use crate::record::{upcast_event, upcast_parked, upcast_snapshot, DedupeKey};
use crate::store::{DedupeHit, VerifyReport};
use crate::StoreError;

/// Walks every key family and cross-checks them:
/// - the global index holds positions 1..=head with no gap, each pointing at an event record
///   that names the same position;
/// - every stream holds versions 1..=n with no gap; every record decodes (checksum included),
///   matches its key, and is pointed at by the global index and by its dedupe entry;
/// - every dedupe entry points at an existing event or parked record;
/// - every parked record decodes and its dedupe entry points back at it;
/// - every snapshot decodes and is not ahead of its stream.
pub(crate) fn verify_sled(db: &sled::Db, head: Position) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();

    // Global index.
    let mut expected = Position::START;
    for entry in db.scan_prefix([keys::GLOBAL]) {
        let (key, value) = entry?;
        let position = match keys::parse_global_key(&key) {
            Ok(position) => position,
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        if position != expected.next() {
            report.problem(
                format!("global index at position {position}"),
                format!("gap: expected position {}", expected.next()),
            );
        }
        expected = position;
        match keys::parse_global_value(position, &value) {
            Ok((session, version)) => match db.get(keys::event_key(&session, version))? {
                None => report.problem(
                    format!("global index at position {position}"),
                    format!(
                        "points at {} which does not exist",
                        keys::describe_event(&session, version)
                    ),
                ),
                Some(bytes) => {
                    if let Ok(event) =
                        upcast_event(&keys::describe_event(&session, version), &bytes)
                    {
                        if event.position != position {
                            report.problem(
                                keys::describe_event(&session, version),
                                format!(
                                    "has position {}, the global index says {position}",
                                    event.position
                                ),
                            );
                        }
                    }
                }
            },
            Err(error) => report.problems.push(error.into()),
        }
    }
    if expected != head {
        report.problem(
            "global index",
            format!("last position is {expected}, the store's head is {head}"),
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
        match db.get(keys::global_key(event.position))? {
            Some(value)
                if keys::parse_global_value(event.position, &value).ok()
                    == Some((session.clone(), version)) => {}
            _ => report.problem(
                &what,
                format!(
                    "the global index at position {} does not point back",
                    event.position
                ),
            ),
        }
        let key = event.data.dedupe_key;
        match db.get(keys::dedupe_key(&key))? {
            Some(value) => match keys::parse_dedupe_value(&key, &value) {
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
        let Some(dedupe) = key
            .get(1..)
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
        else {
            report.problem("dedupe index", "malformed key");
            continue;
        };
        let dedupe = DedupeKey::from_bytes(dedupe);
        match keys::parse_dedupe_value(&dedupe, &value) {
            Ok(DedupeHit::Accepted {
                stream, version, ..
            }) => {
                if db.get(keys::event_key(&stream, version))?.is_none() {
                    report.problem(
                        format!("dedupe entry {dedupe}"),
                        format!(
                            "points at {} which does not exist",
                            keys::describe_event(&stream, version)
                        ),
                    );
                }
            }
            Ok(DedupeHit::Parked { stream, event_id }) => {
                if db.get(keys::parked_key(&stream, event_id))?.is_none() {
                    report.problem(
                        format!("dedupe entry {dedupe}"),
                        format!(
                            "points at parked event {event_id} of `{stream}` which does not exist"
                        ),
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
                let points_back = match db.get(keys::dedupe_key(&key))? {
                    Some(value) => matches!(
                        keys::parse_dedupe_value(&key, &value),
                        Ok(DedupeHit::Parked { stream, event_id: id }) if stream == session && id == event_id
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

//! The sled backend's consistency walk.

use std::collections::HashMap;
use std::ops::Bound;

use linkflow_core::{Position, SessionId, Version};

use crate::dedupe_list::DedupeList;
use crate::keys;
use crate::record::{decode_log_record, decode_snapshot_record, event_records, LogRecord};
use crate::staged::Staged;
use crate::store::{DedupeHit, VerifyReport};
use crate::{CorruptRecord, DedupeKey, StoreError};

/// Dedupe lookups as the store does them, reading each stream's list once.
struct Lookup<'a> {
    db: &'a Staged,
    list: Option<(SessionId, Option<DedupeList>)>,
}

impl Lookup<'_> {
    fn find(
        &mut self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Result<Option<DedupeHit>, CorruptRecord>, StoreError> {
        if self.list.as_ref().is_none_or(|(known, _)| known != stream) {
            let list = match self.db.get(keys::list_key(stream))? {
                Some(value) => match DedupeList::decode(stream, &value) {
                    Ok((list, _)) => Some(list),
                    Err(error) => return Ok(Err(error)),
                },
                None => None,
            };
            self.list = Some((stream.clone(), list));
        }
        let list = self.list.as_ref().and_then(|(_, list)| list.as_ref());
        if let Some(target) = list.and_then(|list| list.find(key)) {
            return Ok(Ok(Some(target.hit(stream))));
        }
        if !list.is_some_and(|list| list.spilled) {
            return Ok(Ok(None));
        }
        Ok(match self.db.get(keys::dedupe_key(stream, key))? {
            Some(value) => keys::parse_dedupe_value(stream, key, &value).map(Some),
            None => Ok(None),
        })
    }
}

/// Walks every key family and cross-checks them:
/// - the global index's commits tile positions 1..=head with no gap or overlap, and every
///   position they name holds an event record that names the same position;
/// - every stream holds versions 1..=n with no gap; every record decodes (checksum included),
///   matches its key, and has a dedupe entry pointing back at it; a stream's compacted records
///   come before its events;
/// - every dedupe entry (in a stream's list or under a `D` key) points at an existing event,
///   and `D` entries belong to spilled lists;
/// - every stream head's version is its stream's last event's (the version commits check
///   expected versions against);
/// - every snapshot (in its stream's head) decodes and is not ahead of its stream.
pub(crate) fn verify_sled(db: &Staged, head: Position) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    check_global_index(db, head, &mut report)?;
    let stream_versions = check_streams(db, head, &mut report)?;
    let spilled = check_heads(db, &stream_versions, &mut report)?;
    check_spilled_entries(db, &spilled, &mut report)?;
    check_counters(db, &mut report)?;
    report.problems.extend(
        crate::sled_store::runs::check(db)?
            .into_iter()
            .map(Into::into),
    );
    Ok(report)
}

/// Every counter cell decodes, holds at least one counter, none at zero, in name order (what
/// the counters and index entries mean, the engine's verify checks against a fold of the log).
fn check_counters(db: &Staged, report: &mut VerifyReport) -> Result<(), StoreError> {
    for entry in db.scan_prefix([keys::COUNTER]) {
        let (key, value) = entry?;
        match keys::parse_cell(&key[1..], &value) {
            Ok(counters) if counters.is_empty() => report.problem(
                format!("counter cell {:?}", String::from_utf8_lossy(&key[1..])),
                "holds no counter",
            ),
            Ok(_) => {}
            Err(error) => report.problems.push(error.into()),
        }
    }
    Ok(())
}

/// The global index's commits tile positions 1..=head, and every position they name holds an
/// event record naming that position.
fn check_global_index(
    db: &Staged,
    head: Position,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
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
                match event_at(db, &run.stream, version)? {
                    None => report.problem(&what, format!("names {record}, which does not exist")),
                    Some(Ok(event)) if event.position() != position => report.problem(
                        &record,
                        format!(
                            "has position {}, the global index says {position}",
                            event.position()
                        ),
                    ),
                    // A damaged record is reported by the walk of the streams.
                    Some(_) => {}
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
    Ok(())
}

/// Every stream's versions run 1..=n; every record decodes, matches its key, lies within the
/// head and has a dedupe entry pointing back at it. Returns each stream's last version.
fn check_streams(
    db: &Staged,
    head: Position,
    report: &mut VerifyReport,
) -> Result<HashMap<SessionId, Version>, StoreError> {
    let mut lookup = Lookup { db, list: None };
    let mut stream_versions: HashMap<SessionId, Version> = HashMap::new();
    // The stream being walked, its last version, and whether an event (not compacted) came.
    let mut current: Option<(SessionId, Version, bool)> = None;
    for entry in db.scan_prefix([keys::EVENT]) {
        let (key, value) = entry?;
        let (session, first) = match keys::parse_event_key(&key) {
            Ok(parsed) => parsed,
            Err(error) => {
                report.events += 1;
                report.problems.push(error.into());
                continue;
            }
        };
        let first_what = keys::describe_event(&session, first);
        let records = match event_records(&first_what, &value) {
            Ok(records) => records,
            Err(error) => {
                report.events += 1;
                report.problems.push(error.into());
                continue;
            }
        };
        for (index, record) in records.into_iter().enumerate() {
            report.events += 1;
            let version = Version(first.0.saturating_add(index as u64));
            let what = keys::describe_event(&session, version);
            let (previous, events_before) = match &current {
                Some((stream, last, events)) if *stream == session => (*last, *events),
                _ => {
                    report.streams += 1;
                    (Version::EMPTY, false)
                }
            };
            if version != previous.next() {
                report.problem(&what, format!("gap: expected version {}", previous.next()));
            }
            current = Some((session.clone(), version, events_before));
            stream_versions.insert(session.clone(), version);
            let event = match decode_log_record(&what, record) {
                Ok(event) => event,
                Err(error) => {
                    report.problems.push(error.into());
                    continue;
                }
            };
            match (&event, events_before) {
                (LogRecord::Event(_), _) => {
                    current = Some((session.clone(), version, true));
                }
                // Compaction compacts a stream through its version: its compacted records
                // come first.
                (LogRecord::Compacted(_), true) => {
                    report.problem(&what, "is compacted, but an event before it is not")
                }
                (LogRecord::Compacted(_), false) => {}
            }
            if *event.stream() != session || event.version() != version {
                report.problem(&what, "record does not match its key");
            }
            let event_position = event.position();
            if event_position > head || event_position == Position::START {
                report.problem(
                    &what,
                    format!("position {event_position} is outside 1..={head}"),
                );
            }
            let key = event.dedupe_key();
            match lookup.find(&session, &key)? {
                Ok(Some(DedupeHit { position, .. })) if position == event_position => {}
                Ok(Some(other)) => report.problem(
                    &what,
                    format!("its dedupe entry points elsewhere: {other:?}"),
                ),
                Ok(None) => report.problem(&what, format!("no dedupe entry for key {key}")),
                // Reported once, by the walk of the lists below.
                Err(_) => {}
            }
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
    Ok(stream_versions)
}

/// Every stream head decodes, holds its stream's version, points its dedupe entries at
/// existing events, and holds a snapshot that decodes and is not ahead of its stream. Returns
/// which heads are spilled.
fn check_heads(
    db: &Staged,
    stream_versions: &HashMap<SessionId, Version>,
    report: &mut VerifyReport,
) -> Result<HashMap<SessionId, bool>, StoreError> {
    let check_snapshot = |report: &mut VerifyReport,
                          session: &SessionId,
                          bytes: &[u8],
                          compacted: Version| {
        report.snapshots += 1;
        let what = format!("snapshot of `{session}`");
        match decode_snapshot_record(&what, bytes) {
            Ok(snapshot) => {
                if snapshot.compacted != compacted {
                    report.problem(
                        &what,
                        format!(
                            "says the stream was compacted at version {}, its head says {compacted}",
                            snapshot.compacted
                        ),
                    );
                }
                let stream = stream_versions.get(session).copied().unwrap_or_default();
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
    };

    let mut spilled: HashMap<SessionId, bool> = HashMap::new();
    for entry in db.scan_prefix([keys::LIST]) {
        let (key, value) = entry?;
        let session = match keys::parse_list_key(&key) {
            Ok(session) => session,
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        let list = match DedupeList::decode(&session, &value) {
            Ok((list, snapshot)) => {
                if let Some(bytes) = snapshot {
                    check_snapshot(report, &session, bytes, list.compacted);
                }
                list
            }
            Err(error) => {
                report.problems.push(error.into());
                continue;
            }
        };
        let stored = stream_versions.get(&session).copied().unwrap_or_default();
        if list.version != stored {
            report.problem(
                format!("head of stream `{session}`"),
                format!(
                    "says the stream is at version {}, its last event is at {stored}",
                    list.version
                ),
            );
        }
        spilled.insert(session.clone(), list.spilled);
        for (dedupe, target) in list.entries {
            let what = format!("dedupe entry {dedupe} of `{session}` (in its list)");
            check_target(db, report, &what, &target.hit(&session))?;
        }
    }
    Ok(spilled)
}

/// Every `D` key belongs to a spilled head and points at an existing event.
fn check_spilled_entries(
    db: &Staged,
    spilled: &HashMap<SessionId, bool>,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
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
        if spilled.get(&session) != Some(&true) {
            report.problem(
                &what,
                "is a `D` key, but the stream's dedupe list is not marked spilled: lookups never read it",
            );
        }
        match keys::parse_dedupe_value(&session, &dedupe, &value) {
            Ok(hit) => check_target(db, report, &what, &hit)?,
            Err(error) => report.problems.push(error.into()),
        }
    }
    Ok(())
}

/// Reports a dedupe entry that points at nothing, or at an event with another position.
fn check_target(
    db: &Staged,
    report: &mut VerifyReport,
    what: &str,
    hit: &DedupeHit,
) -> Result<(), StoreError> {
    let DedupeHit {
        stream,
        version,
        position,
    } = hit;
    let record = keys::describe_event(stream, *version);
    match event_at(db, stream, *version)? {
        None => report.problem(what, format!("points at {record}, which does not exist")),
        Some(Ok(event)) if event.position() != *position => report.problem(
            what,
            format!(
                "says position {position}, {record} is at {}",
                event.position()
            ),
        ),
        // A damaged record is reported by the walk of the streams.
        Some(_) => {}
    }
    Ok(())
}

/// The record at `version` of `stream` (whole or compacted): in the last value whose key is at
/// or before it (a packed value holds the versions from its key's on). `Some(Err)`: the value
/// or the record is damaged.
fn event_at(
    db: &Staged,
    stream: &SessionId,
    version: Version,
) -> Result<Option<Result<LogRecord, CorruptRecord>>, StoreError> {
    let Some((key, value)) = db.last((
        Bound::Included(keys::event_key(stream, Version::EMPTY)),
        Bound::Included(keys::event_key(stream, version)),
    ))?
    else {
        return Ok(None);
    };
    let first = match keys::parse_event_key(&key) {
        Ok((_, first)) => first,
        Err(error) => return Ok(Some(Err(error))),
    };
    let what = keys::describe_event(stream, version);
    let records = match event_records(&what, &value) {
        Ok(records) => records,
        Err(error) => return Ok(Some(Err(error))),
    };
    let index = usize::try_from(version.0.saturating_sub(first.0)).unwrap_or(usize::MAX);
    Ok(records
        .get(index)
        .map(|record| decode_log_record(&what, record)))
}

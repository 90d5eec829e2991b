//! The backend-independent half of a commit: checking a [`Commit`]'s constraints against the
//! stored log and handing out positions. It decides nothing (the engine did): it refuses a
//! commit that breaks a constraint, and numbers and encodes one that does not. A backend
//! answers what its log holds ([`StoredLog`]) and writes the [`Checked`] commit atomically;
//! checking in one place is what makes every backend refuse the same commits.

use std::collections::{BTreeMap, HashMap, HashSet};

use linkflow_core::{Position, SessionId, Version};

use crate::error::{CommitError, StoreError};
use crate::record::{
    decode_event_record, decode_snapshot_record, encode_event, encode_snapshot, DedupeKey,
    StoredEvent, MAX_RECORD_BYTES,
};
use crate::store::{
    Append, Commit, CounterDelta, IndexChange, Placed, Receipt, MAX_INDEX_KEY_BYTES,
};

/// What the log held before the commit, as far as its constraints ask.
pub trait StoredLog {
    /// The stream's stored version.
    fn stream_version(&mut self, stream: &SessionId) -> Result<Version, StoreError>;
    /// Whether the stream holds the dedupe key.
    fn holds_key(&mut self, stream: &SessionId, key: &DedupeKey) -> Result<bool, StoreError>;
    /// The version the stream was compacted at ([`Version::EMPTY`]: never).
    fn stream_compacted(&mut self, stream: &SessionId) -> Result<Version, StoreError>;
}

/// An event, ready to write.
#[derive(Debug)]
pub struct CheckedEvent {
    /// Its stream.
    pub stream: SessionId,
    /// Its stream version.
    pub version: Version,
    /// Its global position.
    pub position: Position,
    /// Its dedupe key.
    pub dedupe_key: DedupeKey,
    /// The encoded [`StoredEvent`] record.
    pub record: Vec<u8>,
}

/// A snapshot, ready to write.
#[derive(Debug)]
pub struct CheckedSnapshot {
    /// Its stream.
    pub stream: SessionId,
    /// The version it includes.
    pub version: Version,
    /// The encoded [`crate::Snapshot`] record.
    pub record: Vec<u8>,
}

/// Everything one commit writes, and its receipt.
#[derive(Debug)]
pub struct Checked {
    /// Events in position order (stream by stream, each stream in version order).
    pub events: Vec<CheckedEvent>,
    /// New snapshots, the last of each stream only.
    pub snapshots: Vec<CheckedSnapshot>,
    /// What the commit answers once written.
    pub receipt: Receipt,
    /// Its index and counter writes.
    pub index: IndexWrites,
}

/// A commit's index and counter writes, each key once, in key order.
#[derive(Debug, Default)]
pub struct IndexWrites {
    /// Every index key the commit changes, and whether it is present after it.
    pub entries: Vec<(Vec<u8>, bool)>,
    /// Every cell the commit changes, with the sum of the deltas of each of its counters
    /// (never zero), in name order.
    pub cells: Vec<Cell>,
}

/// A counter cell and the summed deltas of its counters, in name order.
pub type Cell = (Vec<u8>, Vec<(Vec<u8>, i64)>);

/// Checks a commit's index and counter keys and merges its changes: the last change of an
/// index key wins, the deltas of a counter are summed, and a counter summing to zero is left
/// out.
fn check_index(
    index: Vec<IndexChange>,
    counters: Vec<CounterDelta>,
) -> Result<IndexWrites, CommitError> {
    let check_len = |key: &[u8], empty_ok: bool| {
        if (key.is_empty() && !empty_ok) || key.len() > MAX_INDEX_KEY_BYTES {
            Err(CommitError::InvalidIndexKey {
                bytes: key.len(),
                start: key[..key.len().min(16)].to_vec(),
                limit: MAX_INDEX_KEY_BYTES,
            })
        } else {
            Ok(())
        }
    };
    let check = |key: &[u8]| check_len(key, false);
    let mut entries: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
    for change in index {
        let (key, present) = match change {
            IndexChange::Put(key) => (key, true),
            IndexChange::Delete(key) => (key, false),
        };
        check(&key)?;
        entries.insert(key, present);
    }
    let mut sums: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, i64>> = BTreeMap::new();
    for CounterDelta { cell, name, delta } in counters {
        check(&cell)?;
        check_len(&name, true)?;
        let sum = sums.entry(cell).or_default().entry(name).or_default();
        *sum = sum.checked_add(delta).ok_or_else(|| {
            StoreError::Internal("a commit's counter deltas overflow 64 bits".into())
        })?;
    }
    let cells = sums
        .into_iter()
        .map(|(cell, names)| {
            let names: Vec<(Vec<u8>, i64)> =
                names.into_iter().filter(|(_, sum)| *sum != 0).collect();
            (cell, names)
        })
        .filter(|(_, names)| !names.is_empty())
        .collect();
    Ok(IndexWrites {
        entries: entries.into_iter().collect(),
        cells,
    })
}

/// Checks `commit` against the log described by `log`, whose last position is `head`, and
/// numbers its events: positions are handed out stream by stream, in the order of each
/// stream's first append, so that a stream's events of one commit are one run.
///
/// Fails, and nothing may be written, on any broken constraint of [`Commit`].
pub fn check_commit(
    commit: Commit,
    head: Position,
    log: &mut dyn StoredLog,
) -> Result<Checked, CommitError> {
    check(commit, Some(head), log)
}

/// [`check_commit`] for a log that numbers its events after they commit (PostgreSQL's
/// sequencer): every event's position, in its record and in the receipt, is
/// [`Position::PENDING`], and so is the receipt's head.
pub fn check_commit_unnumbered(
    commit: Commit,
    log: &mut dyn StoredLog,
) -> Result<Checked, CommitError> {
    check(commit, None, log)
}

fn check(
    commit: Commit,
    head: Option<Position>,
    log: &mut dyn StoredLog,
) -> Result<Checked, CommitError> {
    let index = check_index(commit.index, commit.counters)?;
    let versions = check_appends(&commit.appends, log)?;
    let snapshots = check_snapshots(commit.snapshots, &versions, log)?;
    let (events, appended) = number(commit.appends, head)?;
    let head = events
        .last()
        .map_or(head.unwrap_or(Position::PENDING), |event| event.position);
    Ok(Checked {
        events,
        snapshots,
        receipt: Receipt { head, appended },
        index,
    })
}

/// Checks every append's expected version and dedupe key; returns each appended stream's
/// version after the commit.
fn check_appends(
    appends: &[Append],
    log: &mut dyn StoredLog,
) -> Result<HashMap<SessionId, Version>, CommitError> {
    let mut versions: HashMap<SessionId, Version> = HashMap::new();
    let mut keys: HashSet<(&SessionId, DedupeKey)> = HashSet::new();
    for append in appends {
        let stream = &append.stream;
        let key = append.event.dedupe_key;
        if !keys.insert((stream, key)) || log.holds_key(stream, &key)? {
            return Err(CommitError::DuplicateKey {
                stream: stream.clone(),
                key,
            });
        }
        let actual = match versions.get(stream) {
            Some(version) => *version,
            None => log.stream_version(stream)?,
        };
        if append.expected != actual {
            return Err(CommitError::Conflict {
                stream: stream.clone(),
                expected: append.expected,
                actual,
            });
        }
        versions.insert(stream.clone(), actual.next());
    }
    Ok(versions)
}

/// Checks that every snapshot is of its stream's version after the commit; keeps the last of
/// each stream, encoded.
fn check_snapshots(
    snapshots: Vec<(SessionId, crate::Snapshot)>,
    versions: &HashMap<SessionId, Version>,
    log: &mut dyn StoredLog,
) -> Result<Vec<CheckedSnapshot>, CommitError> {
    let mut last: HashMap<SessionId, usize> = HashMap::new();
    let mut checked: Vec<CheckedSnapshot> = Vec::with_capacity(snapshots.len());
    for (stream, snapshot) in snapshots {
        let actual = match versions.get(&stream) {
            Some(version) => *version,
            None => log.stream_version(&stream)?,
        };
        if snapshot.version != actual {
            return Err(CommitError::Conflict {
                stream,
                expected: snapshot.version,
                actual,
            });
        }
        let compacted = log.stream_compacted(&stream)?;
        if snapshot.compacted != compacted {
            return Err(CommitError::CompactionConflict {
                stream,
                expected: snapshot.compacted,
                actual: compacted,
            });
        }
        let record = encode_snapshot(&snapshot);
        if record.len() > MAX_RECORD_BYTES {
            return Err(too_large(stream, record.len()));
        }
        debug_assert_eq!(
            decode_snapshot_record("a snapshot about to be written", &record).as_ref(),
            Ok(&snapshot)
        );
        let entry = CheckedSnapshot {
            version: snapshot.version,
            stream: stream.clone(),
            record,
        };
        match last.get(&stream) {
            Some(&index) => checked[index] = entry,
            None => {
                last.insert(stream, checked.len());
                checked.push(entry);
            }
        }
    }
    Ok(checked)
}

/// Hands out versions and positions (after `head`, or [`Position::PENDING`] without one),
/// stream by stream, and encodes the records.
fn number(
    appends: Vec<Append>,
    head: Option<Position>,
) -> Result<(Vec<CheckedEvent>, Vec<Placed>), CommitError> {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut run_of: HashMap<&SessionId, usize> = HashMap::new();
    for (index, append) in appends.iter().enumerate() {
        let run = *run_of.entry(&append.stream).or_insert_with(|| {
            runs.push(Vec::new());
            runs.len() - 1
        });
        runs[run].push(index);
    }
    let order: Vec<usize> = runs.into_iter().flatten().collect();
    let mut slots: Vec<Option<Append>> = appends.into_iter().map(Some).collect();
    let mut placed = vec![
        Placed {
            version: Version::EMPTY,
            position: Position::START,
        };
        slots.len()
    ];
    let mut events = Vec::with_capacity(slots.len());
    let mut position = head.unwrap_or(Position::PENDING);
    for index in order {
        let Some(append) = slots[index].take() else {
            continue;
        };
        if head.is_some() {
            position = position.next();
        }
        let record = StoredEvent {
            stream: append.stream,
            version: append.expected.next(),
            position,
            stored_at: append.stored_at,
            rejected: append.rejected,
            data: append.event,
        };
        let bytes = encode_event(&record);
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(too_large(record.stream, bytes.len()));
        }
        // Asserted right before writing (in debug builds and tests): the bytes read back as the
        // record. Reads check every record's checksum and its key right after reading.
        debug_assert_eq!(
            decode_event_record("a record about to be written", &bytes).as_ref(),
            Ok(&record)
        );
        placed[index] = Placed {
            version: record.version,
            position,
        };
        events.push(CheckedEvent {
            dedupe_key: record.data.dedupe_key,
            stream: record.stream,
            version: record.version,
            position,
            record: bytes,
        });
    }
    Ok((events, placed))
}

fn too_large(stream: SessionId, bytes: usize) -> CommitError {
    CommitError::TooLarge {
        stream,
        bytes,
        limit: MAX_RECORD_BYTES,
    }
}

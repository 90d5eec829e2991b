//! The backend-independent half of a commit: deciding every [`Op`] against the stored log and
//! handing out versions and positions. A backend supplies what the log already holds
//! ([`CommitReads`]) and writes the resulting [`CommitPlan`] atomically; deciding in one place is
//! what makes every backend give the same outcomes for the same ops.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use linkflow_core::{Position, SessionId, Version};
use uuid::Uuid;

use crate::error::StoreError;
use crate::record::{
    encode_event, encode_snapshot, DedupeKey, NewEvent, StoredEvent, MAX_RECORD_BYTES,
};
use crate::store::{DedupeHit, ExpectedVersion, Op, OpOutcome};

/// What a commit needs to know of the log as stored before it.
pub trait CommitReads {
    /// The stream's stored version.
    fn stream_version(&mut self, stream: &SessionId) -> Result<Version, StoreError>;
    /// Where a stored dedupe key of the stream went.
    fn find_dedupe(
        &mut self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError>;
}

/// An event, ready to write.
#[derive(Debug)]
pub struct PlannedEvent {
    /// Its stream.
    pub stream: SessionId,
    /// Its stream version.
    pub version: Version,
    /// Its global position.
    pub position: Position,
    /// Its dedupe key.
    pub dedupe_key: DedupeKey,
    /// Its event id.
    pub event_id: Uuid,
    /// The encoded [`StoredEvent`] record.
    pub record: Vec<u8>,
}

/// A snapshot, ready to write.
#[derive(Debug)]
pub struct PlannedSnapshot {
    /// Its stream.
    pub stream: SessionId,
    /// The version it includes.
    pub version: Version,
    /// The encoded [`crate::Snapshot`] record.
    pub record: Vec<u8>,
}

/// Everything one commit writes, and what each op did.
#[derive(Debug)]
pub struct CommitPlan {
    /// One outcome per op, in op order.
    pub outcomes: Vec<OpOutcome>,
    /// Events in position order (stream by stream, each stream in version order).
    pub events: Vec<PlannedEvent>,
    /// New snapshots, in op order (a later one for the same stream replaces an earlier one).
    pub snapshots: Vec<PlannedSnapshot>,
    /// The head after the commit.
    pub head: Position,
}

/// Where a dedupe key went, as far as a commit in progress knows.
#[derive(Clone)]
enum PendingHit {
    Stored(DedupeHit),
    /// Appended by this commit: the index in `Planner::appends`.
    Appended(usize),
}

struct Appended {
    op: usize,
    stream: SessionId,
    version: Version,
    event: NewEvent,
    stored_at: DateTime<Utc>,
    rejected: bool,
}

struct Planner<'r> {
    reads: &'r mut dyn CommitReads,
    versions: HashMap<SessionId, Version>,
    dedupe: HashMap<(SessionId, DedupeKey), PendingHit>,
    appends: Vec<Appended>,
}

impl Planner<'_> {
    fn version(&mut self, stream: &SessionId) -> Result<Version, StoreError> {
        if let Some(version) = self.versions.get(stream) {
            return Ok(*version);
        }
        let version = self.reads.stream_version(stream)?;
        self.versions.insert(stream.clone(), version);
        Ok(version)
    }

    fn dedupe(
        &mut self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<PendingHit>, StoreError> {
        match self.dedupe.get(&(stream.clone(), *key)) {
            Some(hit) => Ok(Some(hit.clone())),
            None => Ok(self.reads.find_dedupe(stream, key)?.map(PendingHit::Stored)),
        }
    }
}

fn too_large(stream: SessionId, bytes: usize) -> StoreError {
    StoreError::TooLarge {
        stream,
        bytes,
        limit: MAX_RECORD_BYTES,
    }
}

/// Decides `ops` against the log described by `reads`, whose last position is `head`.
///
/// Fails (and nothing may be written) on a version conflict and on an oversized record. The rules are the [`crate::EventStore`] contract: dedupe before version checks, a
/// key repeated within the commit stored once, positions handed out stream by stream.
pub fn plan_commit(
    ops: Vec<Op>,
    head: Position,
    reads: &mut dyn CommitReads,
) -> Result<CommitPlan, StoreError> {
    let mut planner = Planner {
        reads,
        versions: HashMap::new(),
        dedupe: HashMap::new(),
        appends: Vec::new(),
    };
    let mut outcomes: Vec<Option<OpOutcome>> = Vec::with_capacity(ops.len());
    let mut duplicates_of_appends: Vec<(usize, usize)> = Vec::new();
    let mut snapshots = Vec::new();
    for (index, op) in ops.into_iter().enumerate() {
        match op {
            Op::Expect { stream, version } => {
                let actual = planner.version(&stream)?;
                if actual != version {
                    return Err(StoreError::Conflict {
                        stream,
                        expected: version,
                        actual,
                    });
                }
                outcomes.push(Some(OpOutcome::Checked));
            }
            Op::Append {
                stream,
                expected,
                event,
                stored_at,
                rejected,
            } => {
                let key = event.dedupe_key;
                match planner.dedupe(&stream, &key)? {
                    Some(PendingHit::Appended(append)) => {
                        duplicates_of_appends.push((index, append));
                        outcomes.push(None);
                        continue;
                    }
                    Some(PendingHit::Stored(original)) => {
                        outcomes.push(Some(OpOutcome::Duplicate { original }));
                        continue;
                    }
                    None => {}
                }
                let actual = planner.version(&stream)?;
                if let ExpectedVersion::Exact(expected) = expected {
                    if expected != actual {
                        return Err(StoreError::Conflict {
                            stream,
                            expected,
                            actual,
                        });
                    }
                }
                let version = actual.next();
                planner.versions.insert(stream.clone(), version);
                planner.dedupe.insert(
                    (stream.clone(), key),
                    PendingHit::Appended(planner.appends.len()),
                );
                planner.appends.push(Appended {
                    op: index,
                    stream,
                    version,
                    event,
                    stored_at,
                    rejected,
                });
                outcomes.push(None);
            }
            Op::PutSnapshot { stream, snapshot } => {
                snapshots.push(PlannedSnapshot {
                    stream,
                    version: snapshot.version,
                    record: encode_snapshot(&snapshot),
                });
                outcomes.push(Some(OpOutcome::SnapshotSaved));
            }
        }
    }

    // Positions, stream by stream in order of first appearance, so that each stream's events of
    // one commit are one run.
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut run_of: HashMap<&SessionId, usize> = HashMap::new();
    for (index, append) in planner.appends.iter().enumerate() {
        let run = *run_of.entry(&append.stream).or_insert_with(|| {
            runs.push(Vec::new());
            runs.len() - 1
        });
        runs[run].push(index);
    }
    let sequence: Vec<usize> = runs.into_iter().flatten().collect();
    let mut slots: Vec<Option<Appended>> = planner.appends.into_iter().map(Some).collect();
    let mut hits: Vec<Option<DedupeHit>> = vec![None; slots.len()];
    let mut events = Vec::with_capacity(slots.len());
    let mut position = head;
    for index in sequence {
        let append = slots[index].take().expect("each append is placed once");
        position = position.next();
        let record = StoredEvent {
            stream: append.stream,
            version: append.version,
            position,
            stored_at: append.stored_at,
            rejected: append.rejected,
            data: append.event,
        };
        let bytes = encode_event(&record);
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(too_large(record.stream, bytes.len()));
        }
        outcomes[append.op] = Some(OpOutcome::Appended {
            version: record.version,
            position,
        });
        hits[index] = Some(DedupeHit {
            stream: record.stream.clone(),
            version: record.version,
            position,
        });
        events.push(PlannedEvent {
            dedupe_key: record.data.dedupe_key,
            event_id: record.data.event_id,
            stream: record.stream,
            version: record.version,
            position,
            record: bytes,
        });
    }
    for (index, append) in duplicates_of_appends {
        outcomes[index] = Some(OpOutcome::Duplicate {
            original: hits[append].clone().expect("every append has a position"),
        });
    }
    Ok(CommitPlan {
        outcomes: outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every op has an outcome once positions are known"))
            .collect(),
        events,
        snapshots,
        head: position,
    })
}

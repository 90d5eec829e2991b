//! The storage trait every backend implements, and the operations a commit is made of.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use crate::error::{CommitError, CorruptRecord, StoreError};
use crate::record::{DedupeKey, NewEvent, Snapshot, StoredEvent};
use chrono::{DateTime, Utc};
use linkflow_core::{Position, SessionId, Version};
use serde::Serialize;

/// One event a [`Commit`] appends, as the engine decided it.
#[derive(Debug, Clone)]
pub struct Append {
    /// The stream.
    pub stream: SessionId,
    /// The stream's version before this event, as the engine read it (after the commit's
    /// earlier appends to the stream). Any other version is a [`CommitError::Conflict`] and
    /// nothing of the commit is written.
    pub expected: Version,
    /// The event.
    pub event: NewEvent,
    /// When the log stores it.
    pub stored_at: DateTime<Utc>,
    /// The stream's fold rejected it when it was stored (kept in the record, as the ingest
    /// outcome said it; a later arrival may change the verdict).
    pub rejected: bool,
}

/// What one atomic commit writes: everything the engine decided for a group of events. The
/// store decides nothing: it checks the constraints below, writes all of it or nothing, and
/// answers with a [`Receipt`].
///
/// Constraints (a violation is a typed error and nothing is written):
/// - every append's `expected` is its stream's version as the commit has left it so far
///   ([`CommitError::Conflict`]);
/// - a dedupe key is stored once per stream: a key the stream holds, or one appended earlier
///   in the same commit, is [`CommitError::DuplicateKey`] (the engine answers duplicates before
///   committing; on a store other processes write, a key one of them stored meanwhile lands
///   here, and the engine reads again and retries);
/// - every snapshot is of its stream's version as the commit leaves it
///   ([`CommitError::Conflict`]: on a shared store, another process appended since the state
///   the snapshot folds was read);
/// - every record fits [`crate::MAX_RECORD_BYTES`] ([`CommitError::TooLarge`]);
/// - every index key and counter cell is 1 to [`MAX_INDEX_KEY_BYTES`] bytes, and every
///   counter name at most that ([`CommitError::InvalidIndexKey`]).
///
/// The index entries and counters are the engine's (the store reads no meaning into their
/// keys): written in the same commit as the events and snapshots they derive from, they are
/// never stale.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Events, in the order the engine decided them.
    pub appends: Vec<Append>,
    /// New snapshots (a later one of a stream replaces an earlier one).
    pub snapshots: Vec<(SessionId, Snapshot)>,
    /// Index entries added and removed (a later change of a key replaces an earlier one).
    pub index: Vec<IndexChange>,
    /// Counter deltas: each added to its counter (one that reaches zero is not stored).
    pub counters: Vec<CounterDelta>,
}

/// A change to one counter. Counters live in cells: the counters of one cell are stored
/// together (on sled, one value), so a commit that changes many counters of a few cells writes
/// a few values; cells are walked in key order, and a cell's counters in name order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterDelta {
    /// The cell.
    pub cell: Vec<u8>,
    /// The counter's name within its cell (may be empty).
    pub name: Vec<u8>,
    /// What is added to it.
    pub delta: i64,
}

impl CounterDelta {
    /// A delta of `delta` to counter `name` of `cell`.
    pub fn new(cell: impl Into<Vec<u8>>, name: impl Into<Vec<u8>>, delta: i64) -> Self {
        CounterDelta {
            cell: cell.into(),
            name: name.into(),
            delta,
        }
    }
}

impl Commit {
    /// True when the commit writes nothing.
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.snapshots.is_empty()
            && self.index.is_empty()
            && self.counters.is_empty()
    }
}

/// What [`EventStore::for_each_counter`] calls: cell, name, value.
pub type CounterVisitor<'a> = dyn FnMut(&[u8], &[u8], i64) -> ControlFlow<()> + 'a;

/// The longest index key, counter cell or counter name a commit may write.
pub const MAX_INDEX_KEY_BYTES: usize = 1_024;

/// A change to one index entry: a key present or not, with no value (what it indexes is in the
/// key, in an order [`EventStore::for_each_index_key`] walks).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexChange {
    /// The key is present after the commit.
    Put(Vec<u8>),
    /// The key is absent after the commit.
    Delete(Vec<u8>),
}

/// Where one appended event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Placed {
    /// Its stream version.
    pub version: Version,
    /// Its global position.
    pub position: Position,
}

/// What a commit wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The log's head after the commit.
    pub head: Position,
    /// One per [`Commit::appends`], in order.
    pub appended: Vec<Placed>,
}

/// Where the first delivery of a dedupe key was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DedupeHit {
    /// The stream.
    pub stream: SessionId,
    /// Its version.
    pub version: Version,
    /// Its global position ([`Position::PENDING`], and left out of JSON, until a store that
    /// numbers after commit has numbered it).
    #[serde(skip_serializing_if = "Position::pending")]
    pub position: Position,
}

/// Where reading a stream starts, as [`EventStore::stream_start`] found it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStart {
    /// The stream's version ([`Version::EMPTY`] when it has no event).
    pub version: Version,
    /// Its snapshot, if one was stored (always `None` for an empty stream).
    pub snapshot: Option<Snapshot>,
}

/// One stream as [`EventStore::read_streams`] found it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamRead {
    /// Its snapshot, if one was stored.
    pub snapshot: Option<Snapshot>,
    /// Its events after the snapshot's version (all of them without a snapshot), in order.
    pub tail: Vec<StoredEvent>,
}

/// What a writer needs to decide a group of events, read at one point in time by
/// [`EventStore::read_streams`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamsRead {
    /// Every requested stream (empty ones included).
    pub streams: HashMap<SessionId, StreamRead>,
    /// The requested dedupe keys.
    pub keys: HashSet<(SessionId, DedupeKey)>,
    /// Those of them the log holds, with where their first delivery went.
    pub dedupe: HashMap<(SessionId, DedupeKey), DedupeHit>,
}

impl StreamsRead {
    /// `Some(hit or none)` when the key was requested, `None` when this read cannot say.
    pub fn dedupe(&self, stream: &SessionId, key: &DedupeKey) -> Option<Option<&DedupeHit>> {
        let entry = (stream.clone(), *key);
        self.keys.contains(&entry).then(|| self.dedupe.get(&entry))
    }
}

/// What [`EventStore::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events walked.
    pub events: u64,
    /// Streams walked.
    pub streams: u64,
    /// Snapshots walked.
    pub snapshots: u64,
    /// Every inconsistency found.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub(crate) fn problem(&mut self, record: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            record: record.into(),
            message: message.into(),
        });
    }
}

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The record it concerns.
    pub record: String,
    /// What is wrong.
    pub message: String,
}

impl From<CorruptRecord> for Problem {
    fn from(error: CorruptRecord) -> Self {
        Problem {
            record: error.key,
            message: error.reason,
        }
    }
}

/// Events per `read_stream` call in the default [`EventStore::read_streams`].
const READ_STREAMS_PAGE: usize = 1_024;

/// An append-only event log of session streams with a global order.
///
/// Contract (checked by the conformance suite in [`crate::conformance`] for every backend):
/// - a commit is atomic: after any crash, all of its operations are present or none;
/// - versions per stream and positions over all streams start at 1 and have no gaps;
/// - a stored event is never rewritten or deleted, except by [`EventStore::compact`], which
///   replaces what a stream's events said by compacted records (their place in the log and
///   their dedupe keys stay: versions and positions keep no gap, a redelivery is still a
///   duplicate) and which reads skip;
/// - a dedupe key is stored once per stream (see [`Commit`] for every constraint);
/// - within one commit, positions are handed out stream by stream (in the order of each
///   stream's first append), keeping each stream's events in commit order;
/// - [`EventStore::sync`] returns once every committed operation is on stable storage.
pub trait EventStore: Send + Sync + 'static {
    /// Writes `commit` atomically after checking its constraints. On an error nothing is
    /// written.
    fn commit(&self, commit: Commit) -> Result<Receipt, CommitError>;

    /// Makes every committed operation durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// Compacts `stream` to `snapshot`, atomically: the records of its events through
    /// `snapshot.version`, which must be the stream's version ([`CommitError::Conflict`]
    /// otherwise, nothing written), become compacted records
    /// ([`crate::record::COMPACTED`]: each event's place in the log, its dedupe key, when it
    /// was stored and whether it was rejected; not what it said), and `snapshot` becomes the
    /// stream's snapshot. Reads ([`EventStore::read_stream`], [`EventStore::read_all`],
    /// [`EventStore::for_each_event_by_stream`]) skip compacted events; events appended later
    /// are stored whole. Durable at the next [`EventStore::sync`], like a commit. Returns how
    /// many records it compacted (0 when every one already was).
    fn compact(&self, stream: &SessionId, snapshot: Snapshot) -> Result<u64, CommitError>;

    /// Work that may follow a sync, off its callers' path: the engine's sync threads call it
    /// after answering the callers a sync covered. The sled store applies the log frames the
    /// sync made durable to sled here (which its next commit or its maintenance thread would
    /// do otherwise). Nothing by default.
    fn after_sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether [`Receipt`]s carry the events' positions. A store that numbers events after
    /// they commit (PostgreSQL, where commits from many nodes run concurrently) answers
    /// `false`: its receipts hold [`Position::PENDING`], and [`EventStore::settle`] waits for
    /// the numbering.
    fn numbers_at_commit(&self) -> bool {
        true
    }

    /// Waits until every event committed before the call has its position, and returns the
    /// head. A store that numbers at commit answers its head at once.
    fn settle(&self) -> Result<Position, StoreError> {
        self.head()
    }

    /// For how long events committed to this store have been waiting to be numbered because a
    /// transaction older than them is still running (PostgreSQL's sequencer, on the node that
    /// holds its lease); `None` when nothing waits, or the store numbers at commit.
    fn numbering_held_back(&self) -> Option<std::time::Duration> {
        None
    }

    /// The position of the last stored event ([`Position::START`] when empty; on a store that
    /// numbers after commit, the last numbered one).
    fn head(&self) -> Result<Position, StoreError>;

    /// Up to `limit` events of `stream` with versions after `after`, in version order
    /// (compacted events skipped).
    fn read_stream(
        &self,
        stream: &SessionId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Up to `limit` events of all streams with positions after `after`, in position order
    /// (compacted events skipped: a page may end past positions it does not return).
    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// Where a dedupe key's first delivery to `stream` went, if it was stored. Dedupe keys are
    /// scoped to their stream: a redelivery always names the same session.
    fn find_dedupe(
        &self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError>;

    /// What reading a stream's state starts with: the stream's version ([`Version::EMPTY`]
    /// when it has no event) and, unless it is empty, its snapshot, if one was stored. A
    /// backend that keeps both in one place answers with one read.
    fn stream_start(&self, stream: &SessionId) -> Result<StreamStart, StoreError>;

    /// Calls `visit` with every stream's snapshot in stream id order (the bytes of the id on
    /// sled, the column's order on PostgreSQL), from the first stream after `after` (from the
    /// first when `None`), until it breaks: a page of streams starts where the last ended.
    fn for_each_snapshot(
        &self,
        after: Option<&SessionId>,
        visit: &mut dyn FnMut(SessionId, Snapshot) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// Calls `visit` with every index key in `[from, to)`, in byte order, until it breaks.
    fn for_each_index_key(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// Calls `visit` with every index key in `[from, to)`, in descending byte order (the last
    /// first: a listing newest first), until it breaks. A page resumes with its last key as
    /// `to`.
    fn for_each_index_key_descending(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// Calls `visit` with the cell, name and value of every counter whose cell is in
    /// `[from, to)`, cells in key order and each cell's counters in name order, until it
    /// breaks. A counter at zero is not stored, so it is not visited.
    fn for_each_counter(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut crate::store::CounterVisitor<'_>,
    ) -> Result<(), StoreError>;

    /// Calls `visit` with every stored event (compacted ones skipped), stream by stream in
    /// version order, until it breaks. This is the order a rebuild of every session state wants.
    fn for_each_event_by_stream(
        &self,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// Walks the log, the indexes and the snapshots and reports every inconsistency.
    fn verify(&self) -> Result<VerifyReport, StoreError>;

    /// Reads, as of one point in time, what a writer needs to decide events on `streams` with
    /// the dedupe `keys`: each stream's snapshot and the events after it, and where each key's
    /// first delivery went. A backend with network round trips answers in
    /// one; the default reads stream by stream, then key by key (streams first, so that on a
    /// shared store a key stored after the stream was read moves the stream past the version
    /// the writer guards).
    fn read_streams(
        &self,
        streams: &[SessionId],
        keys: &[(SessionId, DedupeKey)],
    ) -> Result<StreamsRead, StoreError> {
        let mut read = StreamsRead::default();
        for stream in streams {
            let snapshot = self.stream_start(stream)?.snapshot;
            let mut after = snapshot.as_ref().map_or(Version::EMPTY, |s| s.version);
            let mut tail = Vec::new();
            loop {
                let page = self.read_stream(stream, after, READ_STREAMS_PAGE)?;
                let full = page.len() == READ_STREAMS_PAGE;
                if let Some(last) = page.last() {
                    after = last.version;
                }
                tail.extend(page);
                if !full {
                    break;
                }
            }
            read.streams
                .insert(stream.clone(), StreamRead { snapshot, tail });
        }
        for (stream, key) in keys {
            read.keys.insert((stream.clone(), *key));
            if let Some(hit) = self.find_dedupe(stream, key)? {
                read.dedupe.insert((stream.clone(), *key), hit);
            }
        }
        Ok(read)
    }

    /// Closes the store: makes everything committed durable and leaves the store at rest
    /// (the sled store applies its log to sled, makes sled durable and deletes the log). After
    /// it, commits and syncs fail with [`StoreError::Closed`]. Closing work and its errors
    /// belong here: dropping a store only stops its background work, and the next open
    /// recovers from what is on disk, as after a crash. Nothing by default.
    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the store takes writes: `Err` (typically [`StoreError::Failed`]) once its disk
    /// failed, after which every commit and sync fails too. Reads keep working. The default is
    /// always healthy.
    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The version of the rules the engine last recorded every snapshot of this store as folded
    /// with ([`EventStore::set_folded_with`]); `None` when none was recorded (a new store, or a
    /// backend that keeps no such marker: the engine then checks the snapshots themselves).
    fn folded_with(&self) -> Result<Option<u32>, StoreError> {
        Ok(None)
    }

    /// Records, durably, that every snapshot of the store was folded with rules `rules`. The
    /// engine calls it once its pass over the snapshots of other rules is done and synced. The
    /// default records nothing.
    fn set_folded_with(&self, rules: u32) -> Result<(), StoreError> {
        let _ = rules;
        Ok(())
    }

    /// Asks the store to call `wake` with the newest head whenever another process may have
    /// committed, for as long as the store lives (only a wake-up: readers read the log itself),
    /// and answers whether other processes may write to the same log (a database shared by
    /// several nodes): a writer then must not trust anything it remembers about a stream, and
    /// re-reads before deciding and retries on a conflict or a duplicate key. The default, a
    /// log only this process writes, never calls `wake` and answers `false`.
    fn watch_remote_commits(
        &self,
        wake: Box<dyn Fn(Position) + Send + Sync>,
    ) -> Result<bool, StoreError> {
        drop(wake);
        Ok(false)
    }
}

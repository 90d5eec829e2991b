//! The embedded default backend: one sled tree behind the store's write-ahead log (`wal.rs`).
//! A commit is one frame of the log, staged in memory where reads see it (`staged.rs`) and
//! applied to sled once a sync made it durable; sled's own log is made durable at checkpoints.
//!
//! Modules: `open` (opening sled, the layout check, the log's replay, the guard against
//! sled's panics), `maintenance` (making sled durable, the maintenance thread), `commit` (a
//! commit's checks and its frame); reads, `close` and the rest of the trait are here.

use std::fs::File;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use linkflow_core::{Position, SessionId, Version};

use crate::dedupe_list::DedupeList;
use crate::error::{io_error, CommitError, CorruptRecord, StoreError};
use crate::keys::{self};
use crate::record::{
    decode_log_record, decode_snapshot_record, event_records, DedupeKey, LogRecord, Snapshot,
    StoredEvent,
};
use crate::staged::{Staged, Wait};
use crate::store::{Commit, DedupeHit, EventStore, Receipt, StreamStart, VerifyReport};
use crate::wal::{self, sync_dir, Wal};

mod commit;
mod maintenance;
mod open;
pub(crate) mod runs;
#[cfg(test)]
mod tests;

use commit::Head;
pub(crate) use maintenance::Durable;
use maintenance::{raise, Maintenance};
pub(crate) use open::{applied_frame, check_layout, open_sled, replay_frames};
use open::{guard_sled, replay, LOCK_WAIT};

/// Tuning for [`SledStore`].
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// The data directory.
    pub path: PathBuf,
    /// sled's page cache size. This, not the log size, bounds the store's memory.
    pub cache_capacity_bytes: u64,
    /// How often sled writes its buffers, and the store its write-ahead log, in the background
    /// (`None`: only on `sync`, and when 4 MiB of the log wait). Nothing is acknowledged as
    /// durable before [`EventStore::sync`] returns.
    pub flush_every_ms: Option<u64>,
    /// The size at which a write-ahead log segment is retired and sled's log checkpointed
    /// (sled flush and fsync): larger means fewer checkpoints and more disk in use between them
    /// (up to about three segments).
    pub wal_segment_bytes: u64,
    /// Zero-fill the first log segment when the store opens (`wal_segment_bytes` of zeros, a
    /// fraction of a second), so that syncs are the short kind from the first commit on.
    /// Without it the log's segments grow as they are written (a sync about twice as long)
    /// until the first checkpoint gives one back to be written over, after about
    /// `wal_segment_bytes` of log. For a long-running server.
    pub wal_preallocate: bool,
    /// How the log's segments are written: the real files, or in this crate's tests a
    /// simulated disk.
    pub(crate) wal_io: WalIo,
}

/// How the log's segments are written (see [`wal::SegmentIo`]).
#[derive(Clone)]
pub(crate) struct WalIo(pub(crate) wal::OpenIo);

impl std::fmt::Debug for WalIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WalIo")
    }
}

impl SledOptions {
    /// Defaults for `path`: a 64 MiB page cache, sled's 500 ms background flush, 32 MiB
    /// log segments.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledOptions {
            path: path.into(),
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_every_ms: Some(500),
            wal_segment_bytes: wal::SEGMENT_BYTES,
            wal_preallocate: false,
            wal_io: WalIo(wal::real_io()),
        }
    }
}

/// The sled backend of [`EventStore`].
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
    /// sled's log file, kept open for the fsync that sled's own flush does not do.
    db_file: Arc<File>,
    /// The write-ahead log every commit writes a frame to.
    wal: Arc<Wal>,
    /// sled with the commits not yet applied to it in front: every read goes through it.
    staged: Arc<Staged>,
    /// The thread that checkpoints sled's log and writes the log when nobody syncs.
    maintenance: Maintenance,
    /// Set by `close`: no more writes.
    closed: AtomicBool,
    /// Serializes commits: versions and positions are assigned and applied in one critical
    /// section, so the global order on disk is the order positions were handed out.
    writer: Mutex<WriterState>,
}

struct WriterState {
    head: Position,
}

/// The records of one `S` value from its `skip`-th on (the ones before are not decoded),
/// whole or compacted, checked against its key: the first at the key's stream and version
/// plus `skip`, each next one at the version after. Records are named from the key only when
/// something is wrong: a full scan does not format a description per event.
pub(crate) fn decode_log_value(
    key: &[u8],
    value: &[u8],
    skip: usize,
) -> Result<Vec<LogRecord>, StoreError> {
    let describe = |index: usize| -> Result<String, StoreError> {
        let (session, first) = keys::parse_event_key(key)?;
        Ok(keys::describe_event(
            &session,
            Version(first.0.saturating_add(index as u64)),
        ))
    };
    let records = match event_records("", value) {
        Ok(records) => records,
        Err(mut error) => {
            error.key = describe(0)?;
            return Err(error.into());
        }
    };
    let mut decoded: Vec<LogRecord> = Vec::with_capacity(records.len().saturating_sub(skip));
    for (index, record) in records.into_iter().enumerate().skip(skip) {
        let record = match decode_log_record("", record) {
            Ok(record) => record,
            Err(mut error) => {
                error.key = describe(index)?;
                return Err(error.into());
            }
        };
        let in_place = match decoded.last() {
            None => record
                .version()
                .0
                .checked_sub(skip as u64)
                .is_some_and(|first| keys::is_event_key(key, record.stream(), Version(first))),
            Some(previous) => {
                record.stream() == previous.stream()
                    && record.version() == previous.version().next()
            }
        };
        if !in_place {
            return Err(
                CorruptRecord::new(describe(index)?, "record does not match its key").into(),
            );
        }
        decoded.push(record);
    }
    Ok(decoded)
}

/// The events of one `S` value from its `skip`-th record on, compacted ones left out (see
/// [`decode_log_value`]).
pub(crate) fn decode_event_value(
    key: &[u8],
    value: &[u8],
    skip: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(decode_log_value(key, value, skip)?
        .into_iter()
        .filter_map(LogRecord::into_event)
        .collect())
}

/// The snapshot a head value of `stream` holds, decoded.
fn snapshot_in_head(stream: &SessionId, value: &[u8]) -> Result<Option<Snapshot>, StoreError> {
    match DedupeList::snapshot_encoded(stream, value)? {
        Some(bytes) => Ok(Some(decode_snapshot_record(
            &format!("snapshot of `{stream}`"),
            bytes,
        )?)),
        None => Ok(None),
    }
}

impl SledStore {
    /// Opens (or creates) a store in `path` with default options.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        SledStore::open_with(SledOptions::new(path))
    }

    /// Opens (or creates) a store with `options`. sled 0.34 can panic on damaged pages of its
    /// own files: such a panic while opening (recovery, the layout check, the log's replay) is
    /// caught here and becomes a `CorruptRecord` naming the store's file, never a process exit.
    pub fn open_with(options: SledOptions) -> Result<Self, StoreError> {
        let path = options.path.clone();
        guard_sled(&path, || SledStore::open_unguarded(options))?
    }

    fn open_unguarded(options: SledOptions) -> Result<Self, StoreError> {
        let path = options.path.clone();
        std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        // A store closed a moment ago in this process can still hold its lock while sled's
        // background I/O jobs finish: wait for it a little before calling it locked.
        let started = std::time::Instant::now();
        let db = loop {
            match open_sled(&path, &options) {
                Err(StoreError::Locked { .. }) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                result => break result?,
            }
        };
        let db_path = path.join("db");
        let db_file = Arc::new(File::open(&db_path).map_err(io_error(&db_path))?);
        // The directory entry of a new log file must itself reach the disk.
        sync_dir(&path)?;
        let wal_dir = path.join(wal::DIR);
        check_layout(&db, &path)?;
        // What the last run acknowledged and sled had not yet made durable.
        replay(&db, &wal_dir)?;
        let durable = Durable {
            db: db.clone(),
            db_file: Arc::clone(&db_file),
            path: path.clone(),
        };
        let every = options.flush_every_ms.map(Duration::from_millis);
        let staged = Arc::new(Staged::new(db.clone()));
        // sled made durable up to the last frame (replayed or not) before the log's segments
        // are reused: from here on only the log's new frames are needed.
        durable.sync()?;
        let wal = Arc::new(Wal::start_on(
            &wal_dir,
            applied_frame(&db)? + 1,
            options.wal_segment_bytes.max(1),
            options.wal_preallocate,
            options.wal_io.0.clone(),
        )?);
        let maintenance =
            Maintenance::start(durable, Arc::clone(&wal), Arc::clone(&staged), every)?;
        let head = match db.scan_prefix([keys::GLOBAL]).next_back() {
            Some(entry) => {
                let (key, value) = entry?;
                let first = keys::parse_global_key(&key)?;
                let events: u64 = keys::parse_runs(first, &value)?
                    .iter()
                    .map(|run| u64::from(run.events))
                    .sum();
                Position(first.0 + events - 1)
            }
            None => Position::START,
        };
        Ok(SledStore {
            db,
            path,
            db_file,
            wal,
            staged,
            maintenance,
            closed: AtomicBool::new(false),
            writer: Mutex::new(WriterState { head }),
        })
    }

    /// Repairs the closed store in `path` whose write-ahead log is damaged (opening it fails
    /// with [`StoreError::CorruptLog`]): keeps a copy of the log's files beside it
    /// (`wal.damaged-<n>`), applies the frames before the damage, reports every frame it could
    /// not apply with the events it held, and empties the log so that the store opens again.
    /// A store whose log is not damaged is left as it is.
    pub fn repair(path: impl AsRef<Path>) -> Result<crate::RepairReport, StoreError> {
        crate::repair::repair(path.as_ref())
    }

    /// Runs a store operation behind the guard against sled panics ([`guard_sled`]); a panic
    /// also fails the store (sled's state is unknown after it), so that no more is written.
    fn guarded<T, E: From<StoreError>>(
        &self,
        operation: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        guard_sled(&self.path, operation).unwrap_or_else(|panicked| {
            self.wal.fail(&panicked.to_string());
            Err(panicked.into())
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes sled and the write-ahead log use on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()? + self.wal.size_on_disk()?)
    }

    fn durable(&self) -> Durable {
        Durable {
            db: self.db.clone(),
            db_file: Arc::clone(&self.db_file),
            path: self.path.clone(),
        }
    }

    fn writer(&self) -> MutexGuard<'_, WriterState> {
        // A panic while holding the lock cannot leave a half-made commit (its frame is staged,
        // or its batch applied, in one call at the end), so the state behind a poisoned lock is
        // still good.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes raw bytes under a raw key, bypassing every check. Only for tests that need to
    /// corrupt the store on purpose.
    #[doc(hidden)]
    pub fn raw_insert_for_tests(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let _writer = self.writer();
        self.settle()?;
        self.db.insert(key, value)?;
        Ok(())
    }

    /// Makes every commit durable and applies it to sled, so that sled alone holds them.
    fn settle(&self) -> Result<(), StoreError> {
        self.wal.sync()?;
        self.staged.apply(self.wal.durable_seq(), Wait::Yes)
    }

    /// The raw key of an event record, for tests that corrupt it.
    #[doc(hidden)]
    pub fn raw_event_key_for_tests(session: &SessionId, version: Version) -> Vec<u8> {
        keys::event_key(session, version)
    }

    /// Raw access to one key, for tests.
    #[doc(hidden)]
    pub fn raw_get_for_tests(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.staged.get(key)?.map(|value| value.to_vec()))
    }

    /// The stream's head (dedupe list and, from layout 4, snapshot), if it has one: decoded
    /// list and raw value.
    fn head_value(&self, stream: &SessionId) -> Result<Option<Head>, StoreError> {
        match self.staged.get(keys::list_key(stream))? {
            Some(value) => Ok(Some(Head {
                list: DedupeList::decode(stream, &value)?.0,
                value,
            })),
            None => Ok(None),
        }
    }

    /// True when a key missing from the stream's list may be a `D` key.
    fn may_have_d_entries(&self, list: Option<&DedupeList>) -> bool {
        list.is_some_and(|list| list.spilled)
    }

    /// Where `key` of `stream` went, given the stream's list.
    fn lookup(
        &self,
        stream: &SessionId,
        list: Option<&DedupeList>,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError> {
        if let Some(target) = list.and_then(|list| list.find(key)) {
            return Ok(Some(target.hit(stream)));
        }
        if !self.may_have_d_entries(list) {
            return Ok(None);
        }
        self.d_entry(stream, key)
    }

    /// The `D` key of `key`, if there is one.
    fn d_entry(
        &self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError> {
        match self.staged.get(keys::dedupe_key(stream, key))? {
            Some(value) => Ok(Some(keys::parse_dedupe_value(stream, key, &value)?)),
            None => Ok(None),
        }
    }
}

/// Which records [`SledStore::read_records`] returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Records {
    /// Events only: compacted records are skipped.
    Events,
    /// Every record, at most this many (the records of a run that a read by position must
    /// place, compacted ones included).
    All(usize),
}

impl SledStore {
    /// Calls `visit` with the index keys in `[from, to)`, in byte order or (`descending`) the
    /// last first, until it breaks.
    fn walk_index(
        &self,
        from: &[u8],
        to: &[u8],
        descending: bool,
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.guarded(|| runs::walk(&self.staged, from, to, descending, visit))
    }

    /// Up to `limit` events of `stream` after `after`, in version order, with the compacted
    /// records among them when `records` is [`Records::All`] (and then no more records than
    /// it says).
    fn read_records(
        &self,
        stream: &SessionId,
        after: Version,
        limit: usize,
        records: Records,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let mut read = Vec::new();
        if limit == 0 {
            return Ok(read);
        }
        let mut events = 0usize;
        // The first wanted event is in the last value whose key is at or before it. A stream's
        // versions start at 1, so a stream with no such key has no events.
        let wanted = keys::event_key(stream, after.next());
        let Some((first_key, first_value)) = self.staged.last((
            Bound::Included(keys::event_key(stream, Version::EMPTY)),
            Bound::Included(wanted),
        ))?
        else {
            return Ok(read);
        };
        // The value before the wanted version usually ends at it (a snapshot is taken at the
        // end of a commit's run): its records up to `after` are not decoded.
        let mut take = |key: &[u8], value: &[u8]| -> Result<bool, StoreError> {
            let (_, first) = keys::parse_event_key(key)?;
            let skip =
                usize::try_from(after.next().0.saturating_sub(first.0)).unwrap_or(usize::MAX);
            for record in decode_log_value(key, value, skip)? {
                match record {
                    LogRecord::Event(_) => events += 1,
                    LogRecord::Compacted(_) if records == Records::Events => continue,
                    LogRecord::Compacted(_) => {}
                }
                read.push(record);
                if events == limit || matches!(records, Records::All(most) if read.len() == most) {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        if !take(&first_key, &first_value)? {
            let end = keys::event_key(stream, Version(u64::MAX));
            for entry in self
                .staged
                .scan((Bound::Excluded(first_key.to_vec()), Bound::Included(end)))
            {
                let (key, value) = entry?;
                if take(&key, &value)? {
                    break;
                }
            }
        }
        Ok(read)
    }
}

impl Drop for SledStore {
    /// Only stops the maintenance thread (signals it, and waits for it to finish what it is
    /// doing, so that sled is released when the store is gone): no I/O of its own, no error to
    /// lose. Closing work, and its errors, belong to [`EventStore::close`]; a store dropped
    /// without closing keeps its log, which the next open replays (as after a crash).
    fn drop(&mut self) {
        self.maintenance.stop();
    }
}

impl EventStore for SledStore {
    /// Behind the guard against sled's panics, as every operation that reads sled.
    fn commit(&self, commit: Commit) -> Result<Receipt, CommitError> {
        self.guarded(|| self.commit_unguarded(commit))
    }

    fn compact(&self, stream: &SessionId, snapshot: Snapshot) -> Result<u64, CommitError> {
        self.guarded(|| self.compact_unguarded(stream, snapshot))
    }

    /// One write and one `fdatasync` of the log; a filled segment asks for a checkpoint.
    fn sync(&self) -> Result<(), StoreError> {
        self.health()?;
        if self.wal.sync()? {
            raise(&self.maintenance.signal, |signal| signal.checkpoint = true);
        }
        Ok(())
    }

    /// Applies the frames the sync made durable, unless another thread is applying already.
    fn after_sync(&self) -> Result<(), StoreError> {
        self.staged.apply(self.wal.durable_seq(), Wait::No)
    }

    /// Stops the maintenance thread, makes every commit durable, applies it to sled, makes
    /// sled durable and deletes the log, which the store then no longer needs; the store takes
    /// no more writes. On an error the log stays for the next open to replay.
    fn close(&self) -> Result<(), StoreError> {
        self.maintenance.stop();
        let _writer = self.writer();
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.wal.sync()?;
        self.staged.apply(self.wal.durable_seq(), Wait::Yes)?;
        if !self.staged.is_empty() {
            return Err(StoreError::Failed {
                reason: "frames stayed staged after every durable one was applied".into(),
            });
        }
        self.durable().sync()?;
        self.wal.remove_all()
    }

    fn head(&self) -> Result<Position, StoreError> {
        Ok(self.writer().head)
    }

    fn read_stream(
        &self,
        stream: &SessionId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.guarded(|| {
            Ok(self
                .read_records(stream, after, limit, Records::Events)?
                .into_iter()
                .filter_map(LogRecord::into_event)
                .collect())
        })
    }

    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.guarded(|| {
            let wanted = after.next();
            // The commit holding `wanted` starts at the last index key at or before it.
            let Some((start_key, _)) = self.staged.last((
                Bound::Included(keys::global_key(Position::START).to_vec()),
                Bound::Included(keys::global_key(wanted).to_vec()),
            ))?
            else {
                return Ok(Vec::new());
            };
            let mut events = Vec::new();
            for entry in self.staged.scan((
                Bound::Included(start_key.to_vec()),
                Bound::Included(keys::global_key(Position(u64::MAX)).to_vec()),
            )) {
                let (key, value) = entry?;
                let mut position = keys::parse_global_key(&key)?;
                for run in keys::parse_runs(position, &value)? {
                    let run_end = Position(position.0 + u64::from(run.events));
                    if run_end <= wanted {
                        position = run_end;
                        continue;
                    }
                    let skip = wanted.0.saturating_sub(position.0);
                    let take = (u64::from(run.events) - skip).min((limit - events.len()) as u64);
                    let after_version = Version(run.first_version.0 - 1 + skip);
                    // Compacted records too (skipped below), so that each is checked against
                    // its place: `take` events, at most the run's records.
                    let read = self.read_records(
                        &run.stream,
                        after_version,
                        take as usize,
                        Records::All((u64::from(run.events) - skip) as usize),
                    )?;
                    for (offset, record) in read.into_iter().enumerate() {
                        let expected = Position(position.0 + skip + offset as u64);
                        if record.position() != expected
                            || record.version().0 != after_version.0 + 1 + offset as u64
                        {
                            return Err(CorruptRecord::new(
                                keys::describe_event(record.stream(), record.version()),
                                format!("the global index places it at position {expected}, the record says {}", record.position()),
                            )
                            .into());
                        }
                        if let LogRecord::Event(event) = record {
                            events.push(event);
                        }
                    }
                    if events.len() >= limit {
                        return Ok(events);
                    }
                    position = run_end;
                }
            }
            Ok(events)
        })
    }

    fn find_dedupe(
        &self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError> {
        self.guarded(|| {
            let spilled = match self.staged.get(keys::list_key(stream))? {
                Some(value) => match DedupeList::find_encoded(stream, &value, key)? {
                    (Some(target), _) => return Ok(Some(target.hit(stream))),
                    (None, spilled) => spilled,
                },
                None => false,
            };
            // The list is read without decoding it whole: the engine asks once per event.
            if !spilled {
                return Ok(None);
            }
            self.d_entry(stream, key)
        })
    }

    fn health(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        match self.wal.failure() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    fn folded_with(&self) -> Result<Option<u32>, StoreError> {
        self.guarded(|| match self.db.get(keys::FOLDED_WITH_KEY)? {
            None => Ok(None),
            Some(value) => <[u8; 4]>::try_from(&value[..])
                .map(|bytes| Some(u32::from_be_bytes(bytes)))
                .map_err(|_| {
                    CorruptRecord::new("rules marker", format!("{} bytes, not 4", value.len()))
                        .into()
                }),
        })
    }

    /// Written to sled directly (no commit writes this key) and made durable at once.
    fn set_folded_with(&self, rules: u32) -> Result<(), StoreError> {
        self.db
            .insert(keys::FOLDED_WITH_KEY, &rules.to_be_bytes())?;
        self.durable().sync()
    }

    fn stream_start(&self, stream: &SessionId) -> Result<StreamStart, StoreError> {
        self.guarded(|| {
            // One read: the head holds both; no head, no event.
            let Some(value) = self.staged.get(keys::list_key(stream))? else {
                return Ok(StreamStart::default());
            };
            let version = DedupeList::version_encoded(stream, &value)?;
            let snapshot = match version {
                Version::EMPTY => None,
                _ => snapshot_in_head(stream, &value)?,
            };
            Ok(StreamStart { version, snapshot })
        })
    }

    fn for_each_snapshot(
        &self,
        after: Option<&SessionId>,
        visit: &mut dyn FnMut(SessionId, Snapshot) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.guarded(|| {
            let (start, end) = crate::staged::prefix_bounds(&[keys::LIST]);
            let start = match after {
                Some(stream) => std::ops::Bound::Excluded(keys::list_key(stream)),
                None => start,
            };
            for entry in self.staged.scan((start, end)) {
                let (key, value) = entry?;
                let session = keys::parse_list_key(&key)?;
                let Some(bytes) = DedupeList::snapshot_encoded(&session, &value)? else {
                    continue;
                };
                let snapshot = decode_snapshot_record(&format!("snapshot of `{session}`"), bytes)?;
                if visit(session, snapshot).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn for_each_index_key(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.walk_index(from, to, false, visit)
    }

    fn for_each_index_key_descending(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.walk_index(from, to, true, visit)
    }

    fn for_each_counter(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut crate::store::CounterVisitor<'_>,
    ) -> Result<(), StoreError> {
        self.guarded(|| {
            if from >= to {
                return Ok(());
            }
            let bounds = (
                std::ops::Bound::Included(keys::tagged(keys::COUNTER, from)),
                std::ops::Bound::Excluded(keys::tagged(keys::COUNTER, to)),
            );
            for entry in self.staged.scan(bounds) {
                let (key, value) = entry?;
                let cell = &key[1..];
                for (name, count) in keys::parse_cell(cell, &value)? {
                    if visit(cell, &name, count).is_break() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }

    fn for_each_event_by_stream(
        &self,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.guarded(|| {
            for entry in self.staged.scan_prefix([keys::EVENT]) {
                let (key, value) = entry?;
                for event in decode_event_value(&key, &value, 0)? {
                    if visit(event).is_break() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }

    /// Walks the store as reads see it, with commits held off while it runs (a commit in the
    /// middle of the walk would look like a gap).
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.guarded(|| {
            let writer = self.writer();
            crate::verify::verify_sled(&self.staged, writer.head)
        })
    }
}

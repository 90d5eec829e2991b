//! The embedded default backend: one sled tree, one `sled::Batch` per commit, and a real fsync.

use std::collections::HashMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use linkflow_core::{Position, SessionId, Version};
use uuid::Uuid;

use crate::error::{CorruptRecord, StoreError};
use crate::keys::{self, Run};
use crate::record::{
    encode, upcast_event, upcast_parked, upcast_snapshot, DedupeKey, NewEvent, ParkedEvent,
    Snapshot, StoredEvent, MAX_RECORD_BYTES,
};
use crate::store::{DedupeHit, EventStore, ExpectedVersion, Op, OpOutcome, VerifyReport};

/// Tuning for [`SledStore`].
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// The data directory.
    pub path: PathBuf,
    /// sled's page cache size. This, not the log size, bounds the store's memory.
    pub cache_capacity_bytes: u64,
    /// How often sled writes its buffers in the background (`None`: only on `sync`). Background
    /// writes do not make anything durable: only [`EventStore::sync`] does.
    pub flush_every_ms: Option<u64>,
}

impl SledOptions {
    /// Defaults for `path`: a 64 MiB page cache, sled's 500 ms background flush.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledOptions {
            path: path.into(),
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_every_ms: Some(500),
        }
    }
}

/// The sled backend of [`EventStore`].
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
    /// sled's log file, kept open for the fsync that sled's own flush does not do.
    db_file: File,
    /// Serializes commits: versions and positions are assigned and applied in one critical
    /// section, so the global order on disk is the order positions were handed out.
    writer: Mutex<WriterState>,
}

struct WriterState {
    head: Position,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl SledStore {
    /// Opens (or creates) a store in `path` with default options.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        SledStore::open_with(SledOptions::new(path))
    }

    /// Opens (or creates) a store with `options`.
    pub fn open_with(options: SledOptions) -> Result<Self, StoreError> {
        let path = options.path;
        std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(options.flush_every_ms)
            .open()
            .map_err(|error| match error {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked {
                        path: path.display().to_string(),
                    }
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::Locked {
                    path: path.display().to_string(),
                },
                other => StoreError::from(other),
            })?;
        let db_path = path.join("db");
        let db_file = File::open(&db_path).map_err(io_error(&db_path))?;
        // The directory entry of a new log file must itself reach the disk.
        File::open(&path)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&path))?;
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
            writer: Mutex::new(WriterState { head }),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn writer(&self) -> MutexGuard<'_, WriterState> {
        // A panic while holding the lock cannot leave a half-applied batch (the batch is applied
        // in one call at the end), so the state behind a poisoned lock is still good.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes raw bytes under a raw key, bypassing every check. Only for tests that need to
    /// corrupt the store on purpose.
    #[doc(hidden)]
    pub fn raw_insert_for_tests(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(key, value)?;
        Ok(())
    }

    /// The raw key of an event record, for tests that corrupt it.
    #[doc(hidden)]
    pub fn raw_event_key_for_tests(session: &SessionId, version: Version) -> Vec<u8> {
        keys::event_key(session, version)
    }

    /// Raw access to one key, for tests.
    #[doc(hidden)]
    pub fn raw_get_for_tests(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key)?.map(|value| value.to_vec()))
    }

    fn sync_blobs(&self) -> Result<(), StoreError> {
        let blobs = self.path.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error(&blobs)(error)),
        };
        let mut any = false;
        for entry in entries {
            let path = entry.map_err(io_error(&blobs))?.path();
            // A blob garbage-collected between listing and opening needs no sync.
            match File::open(&path) {
                Ok(file) => file.sync_all().map_err(io_error(&path))?,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(&path)(error)),
            }
            any = true;
        }
        if any {
            File::open(&blobs)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error(&blobs))?;
        }
        Ok(())
    }
}

/// Where a dedupe key went, as far as a commit in progress knows.
#[derive(Clone)]
enum PendingHit {
    /// Stored before this commit.
    Stored(DedupeHit),
    /// Appended by this commit: the index in `Commit::appends`.
    Appended(usize),
    /// Parked by this commit.
    Parked(Uuid),
}

/// An append this commit accepted, before positions are handed out.
struct Accepted {
    op: usize,
    stream: SessionId,
    version: Version,
    event: NewEvent,
    accepted_at: chrono::DateTime<chrono::Utc>,
    from_parked: bool,
}

/// The dedupe and version state a commit builds up before its batch is applied.
struct Commit<'a> {
    store: &'a SledStore,
    versions: HashMap<SessionId, Version>,
    dedupe: HashMap<(SessionId, DedupeKey), PendingHit>,
    appends: Vec<Accepted>,
}

impl Commit<'_> {
    fn version(&mut self, stream: &SessionId) -> Result<Version, StoreError> {
        if let Some(version) = self.versions.get(stream) {
            return Ok(*version);
        }
        let version = self.store.stream_version(stream)?;
        self.versions.insert(stream.clone(), version);
        Ok(version)
    }

    fn dedupe(
        &self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<PendingHit>, StoreError> {
        match self.dedupe.get(&(stream.clone(), *key)) {
            Some(hit) => Ok(Some(hit.clone())),
            None => Ok(self.store.find_dedupe(stream, key)?.map(PendingHit::Stored)),
        }
    }
}

impl EventStore for SledStore {
    fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpOutcome>, StoreError> {
        let mut writer = self.writer();
        let mut batch = sled::Batch::default();
        let mut commit = Commit {
            store: self,
            versions: HashMap::new(),
            dedupe: HashMap::new(),
            appends: Vec::new(),
        };
        // Pass 1: decide every op; duplicates of appends made by this commit are resolved
        // once positions are known.
        let mut outcomes: Vec<Option<OpOutcome>> = Vec::with_capacity(ops.len());
        let mut duplicates_of_appends: Vec<(usize, usize)> = Vec::new();
        for (index, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append {
                    stream,
                    expected,
                    event,
                    accepted_at,
                    from_parked,
                } => {
                    let key = event.dedupe_key;
                    match commit.dedupe(&stream, &key)? {
                        Some(PendingHit::Stored(DedupeHit::Parked { event_id, .. }))
                        | Some(PendingHit::Parked(event_id))
                            if from_parked && event_id == event.event_id => {}
                        Some(PendingHit::Appended(append)) => {
                            duplicates_of_appends.push((index, append));
                            outcomes.push(None);
                            continue;
                        }
                        Some(PendingHit::Stored(original)) => {
                            outcomes.push(Some(OpOutcome::Duplicate { original }));
                            continue;
                        }
                        Some(PendingHit::Parked(event_id)) => {
                            outcomes.push(Some(OpOutcome::Duplicate {
                                original: DedupeHit::Parked { stream, event_id },
                            }));
                            continue;
                        }
                        None => {}
                    }
                    let actual = commit.version(&stream)?;
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
                    commit.versions.insert(stream.clone(), version);
                    commit.dedupe.insert(
                        (stream.clone(), key),
                        PendingHit::Appended(commit.appends.len()),
                    );
                    commit.appends.push(Accepted {
                        op: index,
                        stream,
                        version,
                        event,
                        accepted_at,
                        from_parked,
                    });
                    outcomes.push(None);
                }
                Op::Park(parked) => {
                    let key = parked.data.dedupe_key;
                    match commit.dedupe(&parked.stream, &key)? {
                        Some(PendingHit::Stored(original)) => {
                            outcomes.push(Some(OpOutcome::Duplicate { original }));
                            continue;
                        }
                        Some(PendingHit::Parked(event_id)) => {
                            outcomes.push(Some(OpOutcome::Duplicate {
                                original: DedupeHit::Parked {
                                    stream: parked.stream,
                                    event_id,
                                },
                            }));
                            continue;
                        }
                        Some(PendingHit::Appended(append)) => {
                            duplicates_of_appends.push((index, append));
                            outcomes.push(None);
                            continue;
                        }
                        None => {}
                    }
                    let bytes = encode(&parked);
                    if bytes.len() > MAX_RECORD_BYTES {
                        return Err(StoreError::TooLarge {
                            stream: parked.stream,
                            bytes: bytes.len(),
                            limit: MAX_RECORD_BYTES,
                        });
                    }
                    let event_id = parked.data.event_id;
                    let hit = DedupeHit::Parked {
                        stream: parked.stream.clone(),
                        event_id,
                    };
                    batch.insert(keys::parked_key(&parked.stream, event_id), bytes);
                    batch.insert(
                        keys::dedupe_key(&parked.stream, &key),
                        keys::dedupe_value(&hit),
                    );
                    commit
                        .dedupe
                        .insert((parked.stream, key), PendingHit::Parked(event_id));
                    outcomes.push(Some(OpOutcome::Parked));
                }
                Op::PutSnapshot { stream, snapshot } => {
                    batch.insert(keys::snapshot_key(&stream), encode(&snapshot));
                    outcomes.push(Some(OpOutcome::SnapshotSaved));
                }
            }
        }

        // Pass 2: positions, stream by stream in order of first appearance, so that the commit
        // is one run per stream and needs one global index key.
        let mut order: Vec<SessionId> = Vec::new();
        for append in &commit.appends {
            if !order.contains(&append.stream) {
                order.push(append.stream.clone());
            }
        }
        let first = writer.head.next();
        let mut head = writer.head;
        let mut runs = Vec::with_capacity(order.len());
        let mut positions = vec![Position::START; commit.appends.len()];
        for stream in &order {
            let mut run: Option<Run> = None;
            for (index, append) in commit.appends.iter().enumerate() {
                if append.stream != *stream {
                    continue;
                }
                head = head.next();
                positions[index] = head;
                match &mut run {
                    Some(run) => run.events += 1,
                    None => {
                        run = Some(Run {
                            stream: stream.clone(),
                            first_version: append.version,
                            events: 1,
                        })
                    }
                }
            }
            runs.extend(run);
        }
        let mut appended: Vec<DedupeHit> = Vec::with_capacity(positions.len());
        for (append, position) in commit.appends.into_iter().zip(&positions) {
            let key = append.event.dedupe_key;
            if append.from_parked {
                batch.remove(keys::parked_key(&append.stream, append.event.event_id));
            }
            let record = StoredEvent {
                stream: append.stream,
                version: append.version,
                position: *position,
                accepted_at: append.accepted_at,
                was_parked: append.from_parked,
                data: append.event,
            };
            let bytes = encode(&record);
            if bytes.len() > MAX_RECORD_BYTES {
                return Err(StoreError::TooLarge {
                    stream: record.stream,
                    bytes: bytes.len(),
                    limit: MAX_RECORD_BYTES,
                });
            }
            let hit = DedupeHit::Accepted {
                stream: record.stream.clone(),
                version: record.version,
                position: *position,
            };
            batch.insert(keys::event_key(&record.stream, record.version), bytes);
            batch.insert(
                keys::dedupe_key(&record.stream, &key),
                keys::dedupe_value(&hit),
            );
            outcomes[append.op] = Some(OpOutcome::Appended {
                version: record.version,
                position: *position,
            });
            appended.push(hit);
        }
        if !runs.is_empty() {
            batch.insert(&keys::global_key(first), keys::runs_value(&runs));
        }
        for (index, append) in duplicates_of_appends {
            outcomes[index] = Some(OpOutcome::Duplicate {
                original: appended[append].clone(),
            });
        }
        self.db.apply_batch(batch)?;
        writer.head = head;
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every op has an outcome after pass 2"))
            .collect())
    }

    fn sync(&self) -> Result<(), StoreError> {
        // sled 0.34's flush writes its buffers with sync_file_range, which does not reach the
        // disk (spacejam/sled#1452). The fsync of the log file (and of any blob file) does.
        self.db.flush()?;
        self.sync_blobs()?;
        self.db_file
            .sync_all()
            .map_err(io_error(&self.path.join("db")))
    }

    fn head(&self) -> Result<Position, StoreError> {
        Ok(self.writer().head)
    }

    fn stream_version(&self, stream: &SessionId) -> Result<Version, StoreError> {
        match self
            .db
            .scan_prefix(keys::session_prefix(keys::EVENT, stream))
            .next_back()
        {
            Some(entry) => Ok(keys::parse_event_key(&entry?.0)?.1),
            None => Ok(Version::EMPTY),
        }
    }

    fn read_stream(
        &self,
        stream: &SessionId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let start = keys::event_key(stream, after.next());
        let end = keys::event_key(stream, Version(u64::MAX));
        let mut events = Vec::new();
        for entry in self.db.range(start..=end).take(limit) {
            let (key, bytes) = entry?;
            let (session, version) = keys::parse_event_key(&key)?;
            let what = keys::describe_event(&session, version);
            let event = upcast_event(&what, &bytes)?;
            if event.stream != session || event.version != version {
                return Err(CorruptRecord::new(what, "record does not match its key").into());
            }
            events.push(event);
        }
        Ok(events)
    }

    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let wanted = after.next();
        // The commit holding `wanted` starts at the last index key at or before it.
        let Some(entry) = self
            .db
            .range(keys::global_key(Position::START)..=keys::global_key(wanted))
            .next_back()
        else {
            return Ok(Vec::new());
        };
        let start_key = entry?.0;
        let mut events = Vec::new();
        for entry in self
            .db
            .range(start_key.as_ref()..=keys::global_key(Position(u64::MAX)).as_ref())
        {
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
                let read = self.read_stream(&run.stream, after_version, take as usize)?;
                for (offset, event) in read.into_iter().enumerate() {
                    let expected = Position(position.0 + skip + offset as u64);
                    if event.position != expected
                        || event.version.0 != after_version.0 + 1 + offset as u64
                    {
                        return Err(CorruptRecord::new(
                            keys::describe_event(&event.stream, event.version),
                            format!("the global index places it at position {expected}, the record says {}", event.position),
                        )
                        .into());
                    }
                    events.push(event);
                }
                if events.len() >= limit {
                    return Ok(events);
                }
                position = run_end;
            }
        }
        Ok(events)
    }

    fn find_dedupe(
        &self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError> {
        match self.db.get(keys::dedupe_key(stream, key))? {
            Some(value) => Ok(Some(keys::parse_dedupe_value(stream, key, &value)?)),
            None => Ok(None),
        }
    }

    fn parked(&self, stream: Option<&SessionId>) -> Result<Vec<ParkedEvent>, StoreError> {
        let prefix = match stream {
            Some(stream) => keys::session_prefix(keys::PARKED, stream),
            None => vec![keys::PARKED],
        };
        let mut parked = Vec::new();
        for entry in self.db.scan_prefix(prefix) {
            let (key, bytes) = entry?;
            let (session, event_id) = keys::parse_parked_key(&key)?;
            let what = format!("parked event {event_id} of `{session}`");
            parked.push(upcast_parked(&what, &bytes)?);
        }
        Ok(parked)
    }

    fn snapshot(&self, stream: &SessionId) -> Result<Option<Snapshot>, StoreError> {
        match self.db.get(keys::snapshot_key(stream))? {
            Some(bytes) => Ok(Some(upcast_snapshot(
                &format!("snapshot of `{stream}`"),
                &bytes,
            )?)),
            None => Ok(None),
        }
    }

    fn for_each_snapshot(
        &self,
        visit: &mut dyn FnMut(SessionId, Snapshot) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        for entry in self.db.scan_prefix([keys::SNAPSHOT]) {
            let (key, bytes) = entry?;
            let session = keys::parse_snapshot_key(&key)?;
            let snapshot = upcast_snapshot(&format!("snapshot of `{session}`"), &bytes)?;
            if visit(session, snapshot).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn for_each_event_by_stream(
        &self,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        for entry in self.db.scan_prefix([keys::EVENT]) {
            let (key, bytes) = entry?;
            let (session, version) = keys::parse_event_key(&key)?;
            let event = upcast_event(&keys::describe_event(&session, version), &bytes)?;
            if visit(event).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn verify(&self) -> Result<VerifyReport, StoreError> {
        crate::verify::verify_sled(&self.db, self.head()?)
    }
}

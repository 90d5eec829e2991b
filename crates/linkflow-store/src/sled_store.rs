//! The embedded default backend: one sled tree, one `sled::Batch` per commit, and a real fsync.

use std::collections::HashMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use linkflow_core::{Position, SessionId, Version};

use crate::error::{CorruptRecord, StoreError};
use crate::keys;
use crate::record::{
    encode, upcast_event, upcast_parked, upcast_snapshot, DedupeKey, ParkedEvent, Snapshot,
    StoredEvent, MAX_RECORD_BYTES,
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
            Some(entry) => keys::parse_global_key(&entry?.0)?,
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

    fn read_event(&self, session: &SessionId, version: Version) -> Result<StoredEvent, StoreError> {
        let what = keys::describe_event(session, version);
        let bytes = self
            .db
            .get(keys::event_key(session, version))?
            .ok_or_else(|| CorruptRecord::new(&what, "missing"))?;
        Ok(upcast_event(&what, &bytes)?)
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

/// The dedupe and version state a commit builds up before its batch is applied.
struct Pending<'a> {
    store: &'a SledStore,
    versions: HashMap<SessionId, Version>,
    dedupe: HashMap<DedupeKey, DedupeHit>,
}

impl Pending<'_> {
    fn version(&mut self, stream: &SessionId) -> Result<Version, StoreError> {
        if let Some(version) = self.versions.get(stream) {
            return Ok(*version);
        }
        let version = self.store.stream_version(stream)?;
        self.versions.insert(stream.clone(), version);
        Ok(version)
    }

    fn dedupe(&self, key: &DedupeKey) -> Result<Option<DedupeHit>, StoreError> {
        match self.dedupe.get(key) {
            Some(hit) => Ok(Some(hit.clone())),
            None => self.store.find_dedupe(key),
        }
    }
}

impl EventStore for SledStore {
    fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpOutcome>, StoreError> {
        let mut writer = self.writer();
        let mut head = writer.head;
        let mut batch = sled::Batch::default();
        let mut pending = Pending {
            store: self,
            versions: HashMap::new(),
            dedupe: HashMap::new(),
        };
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Append {
                    stream,
                    expected,
                    event,
                    accepted_at,
                    from_parked,
                } => {
                    let key = event.dedupe_key;
                    match pending.dedupe(&key)? {
                        Some(DedupeHit::Parked {
                            stream: parked_stream,
                            event_id,
                        }) if from_parked
                            && parked_stream == stream
                            && event_id == event.event_id => {}
                        Some(original) => {
                            outcomes.push(OpOutcome::Duplicate { original });
                            continue;
                        }
                        None => {}
                    }
                    let actual = pending.version(&stream)?;
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
                    head = head.next();
                    if from_parked {
                        batch.remove(keys::parked_key(&stream, event.event_id));
                    }
                    let record = StoredEvent {
                        stream,
                        version,
                        position: head,
                        accepted_at,
                        was_parked: from_parked,
                        data: event,
                    };
                    let bytes = encode(&record);
                    if bytes.len() > MAX_RECORD_BYTES {
                        return Err(StoreError::TooLarge {
                            stream: record.stream,
                            bytes: bytes.len(),
                            limit: MAX_RECORD_BYTES,
                        });
                    }
                    let stream = record.stream;
                    let hit = DedupeHit::Accepted {
                        stream: stream.clone(),
                        version,
                        position: head,
                    };
                    batch.insert(keys::event_key(&stream, version), bytes);
                    batch.insert(
                        &keys::global_key(head),
                        keys::global_value(&stream, version),
                    );
                    batch.insert(&keys::dedupe_key(&key), keys::dedupe_value(&hit));
                    pending.dedupe.insert(key, hit);
                    pending.versions.insert(stream, version);
                    outcomes.push(OpOutcome::Appended {
                        version,
                        position: head,
                    });
                }
                Op::Park(parked) => {
                    let key = parked.data.dedupe_key;
                    if let Some(original) = pending.dedupe(&key)? {
                        outcomes.push(OpOutcome::Duplicate { original });
                        continue;
                    }
                    let bytes = encode(&parked);
                    if bytes.len() > MAX_RECORD_BYTES {
                        return Err(StoreError::TooLarge {
                            stream: parked.stream,
                            bytes: bytes.len(),
                            limit: MAX_RECORD_BYTES,
                        });
                    }
                    let hit = DedupeHit::Parked {
                        stream: parked.stream.clone(),
                        event_id: parked.data.event_id,
                    };
                    batch.insert(
                        keys::parked_key(&parked.stream, parked.data.event_id),
                        bytes,
                    );
                    batch.insert(&keys::dedupe_key(&key), keys::dedupe_value(&hit));
                    pending.dedupe.insert(key, hit);
                    outcomes.push(OpOutcome::Parked);
                }
                Op::PutSnapshot { stream, snapshot } => {
                    batch.insert(keys::snapshot_key(&stream), encode(&snapshot));
                    outcomes.push(OpOutcome::SnapshotSaved);
                }
            }
        }
        self.db.apply_batch(batch)?;
        writer.head = head;
        Ok(outcomes)
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
        let start = keys::global_key(after.next());
        let end = keys::global_key(Position(u64::MAX));
        let mut events = Vec::new();
        for entry in self.db.range(start..=end).take(limit) {
            let (key, value) = entry?;
            let position = keys::parse_global_key(&key)?;
            let (session, version) = keys::parse_global_value(position, &value)?;
            let event = self.read_event(&session, version)?;
            if event.position != position {
                return Err(CorruptRecord::new(
                    keys::describe_event(&session, version),
                    format!(
                        "record has position {}, the global index says {position}",
                        event.position
                    ),
                )
                .into());
            }
            events.push(event);
        }
        Ok(events)
    }

    fn find_dedupe(&self, key: &DedupeKey) -> Result<Option<DedupeHit>, StoreError> {
        match self.db.get(keys::dedupe_key(key))? {
            Some(value) => Ok(Some(keys::parse_dedupe_value(key, &value)?)),
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

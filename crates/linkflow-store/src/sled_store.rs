//! The embedded default backend: one sled tree, one `sled::Batch` per commit, and a real fsync.

use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use linkflow_core::{Position, SessionId, Version};

use crate::error::{CorruptRecord, StoreError};
use crate::keys::{self, Run};
use crate::plan::{plan_commit, CommitReads};
use crate::record::{
    upcast_event, upcast_parked, upcast_snapshot, DedupeKey, ParkedEvent, Snapshot, StoredEvent,
};
use crate::store::{DedupeHit, EventStore, Op, OpOutcome, VerifyReport};

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

/// The stored log as a commit in progress reads it.
struct SledReads<'a> {
    store: &'a SledStore,
}

impl CommitReads for SledReads<'_> {
    fn stream_version(&mut self, stream: &SessionId) -> Result<Version, StoreError> {
        self.store.stream_version(stream)
    }

    fn find_dedupe(
        &mut self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError> {
        self.store.find_dedupe(stream, key)
    }

    fn parked_count(&mut self, stream: &SessionId) -> Result<usize, StoreError> {
        Ok(self
            .store
            .db
            .scan_prefix(keys::session_prefix(keys::PARKED, stream))
            .keys()
            .count())
    }
}

impl EventStore for SledStore {
    fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpOutcome>, StoreError> {
        let mut writer = self.writer();
        let plan = plan_commit(ops, writer.head, &mut SledReads { store: self })?;
        let mut batch = sled::Batch::default();
        for park in &plan.parked {
            let hit = DedupeHit::Parked {
                stream: park.stream.clone(),
                event_id: park.event_id,
            };
            batch.insert(keys::parked_key(&park.stream, park.event_id), &*park.record);
            batch.insert(
                keys::dedupe_key(&park.stream, &park.dedupe_key),
                keys::dedupe_value(&hit),
            );
        }
        // One run per stream of consecutive positions, one global index key per commit.
        let mut runs: Vec<Run> = Vec::new();
        for event in &plan.events {
            if event.from_parked {
                batch.remove(keys::parked_key(&event.stream, event.event_id));
            }
            let hit = DedupeHit::Accepted {
                stream: event.stream.clone(),
                version: event.version,
                position: event.position,
            };
            batch.insert(
                keys::event_key(&event.stream, event.version),
                &*event.record,
            );
            batch.insert(
                keys::dedupe_key(&event.stream, &event.dedupe_key),
                keys::dedupe_value(&hit),
            );
            match runs.last_mut() {
                Some(run) if run.stream == event.stream => run.events += 1,
                _ => runs.push(Run {
                    stream: event.stream.clone(),
                    first_version: event.version,
                    events: 1,
                }),
            }
        }
        if let Some(first) = plan.events.first() {
            batch.insert(&keys::global_key(first.position), keys::runs_value(&runs));
        }
        for snapshot in &plan.snapshots {
            batch.insert(keys::snapshot_key(&snapshot.stream), &*snapshot.record);
        }
        self.db.apply_batch(batch)?;
        writer.head = plan.head;
        Ok(plan.outcomes)
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

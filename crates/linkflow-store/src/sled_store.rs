//! The embedded default backend: one sled tree, one `sled::Batch` per commit, and a real fsync.

use std::collections::HashMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use linkflow_core::{Position, SessionId, Version};

use crate::dedupe_list::{DedupeList, Target, LIST_MAX};
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
    /// A store written before dedupe lists: every stream may have `D` entries.
    legacy_dedupe: bool,
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

/// How long opening waits for a lock held by a store this process is closing (sled's
/// background jobs finishing), before the store is reported as locked by another process.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn open_sled(path: &Path, options: &SledOptions) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
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
        })
}

impl SledStore {
    /// Opens (or creates) a store in `path` with default options.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        SledStore::open_with(SledOptions::new(path))
    }

    /// Opens (or creates) a store with `options`.
    pub fn open_with(options: SledOptions) -> Result<Self, StoreError> {
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
        let legacy_dedupe = match db.get(keys::LAYOUT_KEY)? {
            Some(value) if *value == keys::LAYOUT_LISTS.to_be_bytes() => false,
            Some(value) => {
                return Err(StoreError::Corrupt(CorruptRecord::new(
                    "layout key",
                    format!(
                        "unknown layout {value:?}; this linkflow reads layout {} (a newer linkflow wrote this store?)",
                        keys::LAYOUT_LISTS
                    ),
                )))
            }
            None if db.is_empty() => {
                // A new store: dedupe lists from the start. The marker is the first write in
                // sled's log, so any later commit that survives a crash implies it did.
                db.insert(keys::LAYOUT_KEY, &keys::LAYOUT_LISTS.to_be_bytes())?;
                false
            }
            None => true,
        };
        Ok(SledStore {
            db,
            path,
            db_file,
            writer: Mutex::new(WriterState { head }),
            legacy_dedupe,
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

    /// The stream's dedupe list, if it has one.
    fn dedupe_list(&self, stream: &SessionId) -> Result<Option<DedupeList>, StoreError> {
        match self.db.get(keys::list_key(stream))? {
            Some(value) => Ok(Some(DedupeList::decode(stream, &value)?)),
            None => Ok(None),
        }
    }

    /// True when a key missing from the stream's list may be a `D` key.
    fn may_have_d_entries(&self, list: Option<&DedupeList>) -> bool {
        self.legacy_dedupe || list.is_some_and(|list| list.spilled)
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
        match self.db.get(keys::dedupe_key(stream, key))? {
            Some(value) => Ok(Some(keys::parse_dedupe_value(stream, key, &value)?)),
            None => Ok(None),
        }
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

/// A dedupe entry a commit adds (or moves from parked to accepted).
struct NewEntry {
    key: DedupeKey,
    target: Target,
    from_parked: bool,
}

/// The stored log as a commit in progress reads it. Each stream's dedupe list is read once
/// and kept for the commit's writes.
struct SledReads<'a> {
    store: &'a SledStore,
    lists: HashMap<SessionId, Option<DedupeList>>,
}

impl SledReads<'_> {
    fn list(&mut self, stream: &SessionId) -> Result<Option<&DedupeList>, StoreError> {
        if !self.lists.contains_key(stream) {
            let list = self.store.dedupe_list(stream)?;
            self.lists.insert(stream.clone(), list);
        }
        Ok(self.lists.get(stream).and_then(Option::as_ref))
    }
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
        let store = self.store;
        let list = self.list(stream)?;
        store.lookup(stream, list, key)
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
        let mut reads = SledReads {
            store: self,
            lists: HashMap::new(),
        };
        let plan = plan_commit(ops, writer.head, &mut reads)?;
        let mut batch = sled::Batch::default();
        // New dedupe entries, stream by stream in order of first appearance.
        let mut entries: Vec<(SessionId, Vec<NewEntry>)> = Vec::new();
        let mut add_entry = |stream: &SessionId, entry: NewEntry| match entries
            .iter_mut()
            .find(|(known, _)| known == stream)
        {
            Some((_, list)) => list.push(entry),
            None => entries.push((stream.clone(), vec![entry])),
        };
        for park in &plan.parked {
            batch.insert(keys::parked_key(&park.stream, park.event_id), &*park.record);
            let target = Target::Parked {
                event_id: park.event_id,
            };
            add_entry(
                &park.stream,
                NewEntry {
                    key: park.dedupe_key,
                    target,
                    from_parked: false,
                },
            );
        }
        // One run per stream of consecutive positions, one global index key per commit.
        let mut runs: Vec<Run> = Vec::new();
        for event in &plan.events {
            if event.from_parked {
                batch.remove(keys::parked_key(&event.stream, event.event_id));
            }
            batch.insert(
                keys::event_key(&event.stream, event.version),
                &*event.record,
            );
            let target = Target::Accepted {
                version: event.version,
                position: event.position,
            };
            add_entry(
                &event.stream,
                NewEntry {
                    key: event.dedupe_key,
                    target,
                    from_parked: event.from_parked,
                },
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
        for (stream, new_entries) in entries {
            let mut list = reads.list(&stream)?.cloned().unwrap_or_default();
            for NewEntry {
                key,
                target,
                from_parked,
            } in new_entries
            {
                // An accepted parked event replaces its parked entry where that lives.
                if from_parked && !list.holds(&key) && self.may_have_d_entries(Some(&list)) {
                    batch.insert(
                        keys::dedupe_key(&stream, &key),
                        keys::dedupe_value(&target.hit(&stream)),
                    );
                } else {
                    list.set(key, target);
                }
            }
            if list.entries.len() > LIST_MAX {
                for (key, target) in list.entries.drain(..) {
                    batch.insert(
                        keys::dedupe_key(&stream, &key),
                        keys::dedupe_value(&target.hit(&stream)),
                    );
                }
                list.spilled = true;
            }
            batch.insert(keys::list_key(&stream), list.encode());
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
        let spilled = match self.db.get(keys::list_key(stream))? {
            Some(value) => match DedupeList::find_encoded(stream, &value, key)? {
                (Some(target), _) => return Ok(Some(target.hit(stream))),
                (None, spilled) => spilled,
            },
            None => false,
        };
        // The list is read without decoding it whole: the engine asks once per event.
        if !(spilled || self.legacy_dedupe) {
            return Ok(None);
        }
        self.d_entry(stream, key)
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
        // Records are named from their key only when something is wrong: a full scan does
        // not format a description per event.
        let describe = |key: &[u8]| -> Result<String, StoreError> {
            let (session, version) = keys::parse_event_key(key)?;
            Ok(keys::describe_event(&session, version))
        };
        for entry in self.db.scan_prefix([keys::EVENT]) {
            let (key, bytes) = entry?;
            let event = match upcast_event("", &bytes) {
                Ok(event) => event,
                Err(mut error) => {
                    error.key = describe(&key)?;
                    return Err(error.into());
                }
            };
            if !keys::is_event_key(&key, &event.stream, event.version) {
                let what = describe(&key)?;
                return Err(CorruptRecord::new(what, "record does not match its key").into());
            }
            if visit(event).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn verify(&self) -> Result<VerifyReport, StoreError> {
        crate::verify::verify_sled(&self.db, self.head()?, self.legacy_dedupe)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use linkflow_core::{Event, EventBody, EventKind, Provider};
    use uuid::Uuid;

    use super::*;
    use crate::record::{NewEvent, RawJson};
    use crate::store::ExpectedVersion;

    fn stream(id: &str) -> SessionId {
        SessionId::new(id).unwrap()
    }

    fn event(n: u64) -> NewEvent {
        NewEvent {
            event_id: Uuid::now_v7(),
            dedupe_key: DedupeKey::derive(&[b"sled", &n.to_be_bytes()]),
            provider: Provider::Moneykit,
            body: EventBody::Session(Event::new(EventKind::ScreenChanged)),
            raw_name: Some("change_screen".into()),
            raw: Some(RawJson::from_string(format!("{{\"n\": {n}}}")).unwrap()),
            received_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
        }
    }

    fn append(stream: &SessionId, event: NewEvent, from_parked: bool) -> Op {
        Op::Append {
            stream: stream.clone(),
            expected: ExpectedVersion::Any,
            accepted_at: event.received_at,
            event,
            from_parked,
        }
    }

    fn park(stream: &SessionId, event: NewEvent) -> Op {
        Op::Park(ParkedEvent {
            stream: stream.clone(),
            reason: "test".into(),
            parked_at: event.received_at,
            data: event,
        })
    }

    fn d_keys(store: &SledStore, stream: &SessionId) -> usize {
        store
            .db
            .scan_prefix(keys::session_prefix(keys::DEDUPE, stream))
            .count()
    }

    fn problems(store: &SledStore) -> Vec<String> {
        let report = store.verify().unwrap();
        report
            .problems
            .iter()
            .map(|problem| format!("{}: {}", problem.record, problem.message))
            .collect()
    }

    #[test]
    fn a_short_stream_keeps_its_entries_in_one_list_and_a_long_one_spills_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let a = stream("a");
        let ops = (1..=LIST_MAX as u64)
            .map(|n| append(&a, event(n), false))
            .collect();
        store.commit(ops).unwrap();
        assert_eq!(d_keys(&store, &a), 0);
        let list = store.dedupe_list(&a).unwrap().unwrap();
        assert_eq!((list.entries.len(), list.spilled), (LIST_MAX, false));

        store.commit(vec![append(&a, event(1_000), false)]).unwrap();
        assert_eq!(d_keys(&store, &a), LIST_MAX + 1);
        let list = store.dedupe_list(&a).unwrap().unwrap();
        assert_eq!((list.entries.len(), list.spilled), (0, true));
        store.commit(vec![append(&a, event(1_001), false)]).unwrap();
        assert_eq!(store.dedupe_list(&a).unwrap().unwrap().entries.len(), 1);
        for n in (1..=LIST_MAX as u64).chain([1_000, 1_001]) {
            assert!(store
                .find_dedupe(&a, &event(n).dedupe_key)
                .unwrap()
                .is_some());
        }
        assert!(problems(&store).is_empty(), "{:?}", problems(&store));
    }

    #[test]
    fn a_parked_entry_spilled_before_its_event_is_accepted_moves_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let a = stream("a");
        let late = event(0);
        store.commit(vec![park(&a, late.clone())]).unwrap();
        let ops = (1..=LIST_MAX as u64)
            .map(|n| append(&a, event(n), false))
            .collect();
        store.commit(ops).unwrap();
        assert!(store.dedupe_list(&a).unwrap().unwrap().spilled);
        let outcomes = store.commit(vec![append(&a, late.clone(), true)]).unwrap();
        let OpOutcome::Appended { version, position } = outcomes[0] else {
            panic!("accepted: {outcomes:?}");
        };
        assert_eq!(
            store.find_dedupe(&a, &late.dedupe_key).unwrap(),
            Some(DedupeHit::Accepted {
                stream: a.clone(),
                version,
                position
            })
        );
        assert!(
            !store
                .dedupe_list(&a)
                .unwrap()
                .unwrap()
                .holds(&late.dedupe_key),
            "the entry stays where it lives: one entry per key"
        );
        assert!(problems(&store).is_empty(), "{:?}", problems(&store));
    }

    #[test]
    fn a_store_written_before_dedupe_lists_is_read_and_extended() {
        let dir = tempfile::tempdir().unwrap();
        let a = stream("a");
        let late = event(3);
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .commit(vec![
                    append(&a, event(1), false),
                    append(&a, event(2), false),
                    park(&a, late.clone()),
                ])
                .unwrap();
            // Rewrite it as the first layout stored it: one `D` key per entry, no lists, no
            // layout key.
            for entry in store.db.scan_prefix([keys::LIST]) {
                let (key, value) = entry.unwrap();
                let session = keys::parse_list_key(&key).unwrap();
                for (dedupe, target) in DedupeList::decode(&session, &value).unwrap().entries {
                    store
                        .db
                        .insert(
                            keys::dedupe_key(&session, &dedupe),
                            keys::dedupe_value(&target.hit(&session)),
                        )
                        .unwrap();
                }
                store.db.remove(key).unwrap();
            }
            store.db.remove(keys::LAYOUT_KEY).unwrap();
            store.sync().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.legacy_dedupe);
        assert!(problems(&store).is_empty(), "{:?}", problems(&store));
        let outcomes = store
            .commit(vec![
                append(&a, event(1), false),
                append(&a, late.clone(), true),
                append(&a, event(4), false),
            ])
            .unwrap();
        assert!(matches!(outcomes[0], OpOutcome::Duplicate { .. }));
        assert!(matches!(outcomes[1], OpOutcome::Appended { .. }));
        assert!(matches!(outcomes[2], OpOutcome::Appended { .. }));
        assert!(matches!(
            store.find_dedupe(&a, &late.dedupe_key).unwrap(),
            Some(DedupeHit::Accepted { .. })
        ));
        let duplicate = store.commit(vec![append(&a, event(4), false)]).unwrap();
        assert!(matches!(duplicate[0], OpOutcome::Duplicate { .. }));
        assert!(problems(&store).is_empty(), "{:?}", problems(&store));
        drop(store);
        assert!(
            SledStore::open(dir.path()).unwrap().legacy_dedupe,
            "an old store stays readable as one"
        );
    }

    #[test]
    fn damaged_dedupe_data_is_a_clear_error_and_a_verify_problem() {
        let dir = tempfile::tempdir().unwrap();
        let a = stream("sess-a");
        let b = stream("sess-b");
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .commit(vec![
                    append(&a, event(1), false),
                    append(&b, event(2), false),
                ])
                .unwrap();
            store.db.insert(keys::list_key(&a), &[0, 1, 2][..]).unwrap();
            // A `D` key in a stream whose list is not spilled is never read by lookups.
            let stray = DedupeHit::Accepted {
                stream: b.clone(),
                version: Version(1),
                position: Position(2),
            };
            store
                .db
                .insert(
                    keys::dedupe_key(&b, &event(9).dedupe_key),
                    keys::dedupe_value(&stray),
                )
                .unwrap();
            let error = store.find_dedupe(&a, &event(1).dedupe_key).unwrap_err();
            assert!(matches!(error, StoreError::Corrupt(_)));
            assert!(
                error.to_string().contains("dedupe list of `sess-a`"),
                "{error}"
            );
            let error = store.commit(vec![append(&a, event(5), false)]).unwrap_err();
            assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
            let found = problems(&store);
            assert!(
                found.iter().any(|p| p.contains("dedupe list of `sess-a`")),
                "{found:?}"
            );
            assert!(
                found.iter().any(|p| p.contains("not marked spilled")),
                "{found:?}"
            );
            store
                .db
                .insert(keys::LAYOUT_KEY, &[0, 0, 0, 9][..])
                .unwrap();
            store.sync().unwrap();
        }
        let error = SledStore::open(dir.path())
            .err()
            .expect("an unknown layout is refused");
        assert!(error.to_string().contains("unknown layout"), "{error}");
    }

    #[test]
    fn a_full_scan_names_a_record_that_is_damaged_or_under_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (a, b) = (stream("sess-a"), stream("sess-b"));
        store
            .commit(vec![
                append(&a, event(1), false),
                append(&b, event(2), false),
            ])
            .unwrap();
        let scan = |store: &SledStore| {
            store.for_each_event_by_stream(&mut |_| std::ops::ControlFlow::Continue(()))
        };
        scan(&store).unwrap();

        // `a`'s record copied under `b`'s second version: it decodes, but not as that key.
        let record = store
            .db
            .get(keys::event_key(&a, Version(1)))
            .unwrap()
            .unwrap();
        store
            .db
            .insert(keys::event_key(&b, Version(2)), record)
            .unwrap();
        let error = scan(&store).unwrap_err().to_string();
        assert!(error.contains("event `sess-b` version 2"), "{error}");
        assert!(error.contains("does not match its key"), "{error}");

        // A record that does not decode is named by its key, not by its (unreadable) body.
        store
            .db
            .insert(keys::event_key(&b, Version(2)), &[2, 1, 2, 3, 4, 9][..])
            .unwrap();
        let error = scan(&store).unwrap_err().to_string();
        assert!(error.contains("event `sess-b` version 2"), "{error}");
        assert!(error.contains("checksum"), "{error}");
    }
}

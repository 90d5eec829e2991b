//! The embedded default backend: one sled tree behind the store's write-ahead log (`wal.rs`).
//! A commit is one frame of the log, staged in memory where reads see it (`staged.rs`) and
//! applied to sled once a sync made it durable; sled's own log is made durable at checkpoints.
//! A store written before dedupe lists has no log: one `sled::Batch` per commit, sled's flush
//! and an fsync per sync.

use std::collections::HashMap;
use std::fs::File;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use linkflow_core::{Position, SessionId, Version};

use crate::check::{check_commit, CheckedEvent, StoredLog};
use crate::dedupe_list::{DedupeList, Target, LIST_MAX};
use crate::error::{io_error, CorruptRecord, StoreError};
use crate::keys::{self, Run};
use crate::record::{
    decode_event_record, decode_snapshot_record, event_records, pack_events, DedupeKey, Snapshot,
    StoredEvent, MAX_PACKED_BYTES,
};
use crate::staged::{Staged, Wait};
use crate::store::{Commit, DedupeHit, EventStore, Receipt, StreamStart, VerifyReport};
use crate::wal::{self, sync_dir, Payload, Wal};

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

/// The events of one `S` value from its `skip`-th on (the ones before are not decoded), checked
/// against its key: the first at the key's stream and version plus `skip`, each next one at
/// the version after. Records are named from the key only when something is wrong: a full
/// scan does not format a description per event.
pub(crate) fn decode_event_value(
    key: &[u8],
    value: &[u8],
    skip: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
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
    let mut events: Vec<StoredEvent> = Vec::with_capacity(records.len().saturating_sub(skip));
    for (index, record) in records.into_iter().enumerate().skip(skip) {
        let event = match decode_event_record("", record) {
            Ok(event) => event,
            Err(mut error) => {
                error.key = describe(index)?;
                return Err(error.into());
            }
        };
        let in_place = match events.last() {
            None => event
                .version
                .0
                .checked_sub(skip as u64)
                .is_some_and(|first| keys::is_event_key(key, &event.stream, Version(first))),
            Some(previous) => {
                event.stream == previous.stream && event.version == previous.version.next()
            }
        };
        if !in_place {
            return Err(
                CorruptRecord::new(describe(index)?, "record does not match its key").into(),
            );
        }
        events.push(event);
    }
    Ok(events)
}

/// How long opening waits for a lock held by a store this process is closing (sled's
/// background jobs finishing), before the store is reported as locked by another process.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens sled, setting aside a snapshot sled never finished writing when that is what stops it.
///
/// sled 0.34.7 writes a snapshot of its page table to `snap.<lsn>.generating`, syncs it and
/// renames it to `snap.<lsn>`: the rename is what makes it sled's. But its reader takes every
/// file whose name starts with `snap.` for a snapshot, the newest first, so a process killed
/// while writing one leaves a partial file that every later open reads as the newest snapshot
/// and refuses (`Corruption { at: None }`; sled issues #1527 and #1533; seen here once in 200
/// SIGKILL rounds of `crates/linkflow/tests/crash.rs`). A snapshot is sled's cache of its log,
/// not data: without the unfinished one, sled starts from the previous snapshot and replays
/// its log from there, as it does after every crash. So when opening fails with sled's
/// corruption error and unfinished snapshots are there, they are removed, under sled's own
/// lock on its `db` file (sled takes it before reading snapshots, so nobody held it when
/// the open failed), and sled is opened again. Any other corruption stays an error.
pub(crate) fn open_sled(path: &Path, options: &SledOptions) -> Result<sled::Db, StoreError> {
    match open_sled_once(path, options) {
        Err(StoreError::Corrupt(error)) => {
            let unfinished = unfinished_snapshots(path)?;
            if unfinished.is_empty() {
                return Err(StoreError::Corrupt(error));
            }
            remove_unfinished_snapshots(path, &unfinished)?;
            open_sled_once(path, options)
        }
        opened => opened,
    }
}

/// sled's snapshot files that were never renamed into place.
fn unfinished_snapshots(path: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut unfinished = Vec::new();
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(unfinished),
        Err(error) => return Err(io_error(path)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(path))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            unfinished.push(entry.path());
        }
    }
    Ok(unfinished)
}

fn remove_unfinished_snapshots(path: &Path, unfinished: &[PathBuf]) -> Result<(), StoreError> {
    let db = path.join("db");
    let lock = File::options()
        .read(true)
        .write(true)
        .open(&db)
        .map_err(io_error(&db))?;
    if fs2::FileExt::try_lock_exclusive(&lock).is_err() {
        return Err(StoreError::Locked {
            path: path.display().to_string(),
        });
    }
    for file in unfinished {
        std::fs::remove_file(file).map_err(io_error(file))?;
    }
    sync_dir(path)?;
    drop(lock);
    Ok(())
}

fn open_sled_once(path: &Path, options: &SledOptions) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(options.cache_capacity_bytes)
        // The store's maintenance thread does the background writing (see `Maintenance`).
        // Nothing relies on sled's own flusher (the write-ahead log makes commits durable,
        // checkpoints make sled durable), and each of its flushes holds sled's global lock
        // against the store's applies.
        .flush_every_ms(None)
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

/// Runs `read` (sled reading its files), turning a panic of sled's into a `CorruptRecord`
/// naming the store's file: sled 0.34 panics on some damaged pages, and no bytes on disk may
/// end the process.
fn guard_sled<T>(
    path: &Path,
    read: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(CorruptRecord::new(
                path.join("db").display().to_string(),
                format!("sled failed reading its files ({message}): the file is damaged"),
            )
            .into())
        }
    }
}

/// Makes sled's own log durable: its flush (which writes its buffers, then waits in
/// `sync_file_range`), then an fsync of its files (which the flush does not do, sled#1452).
pub(crate) struct Durable {
    pub(crate) db: sled::Db,
    pub(crate) db_file: Arc<File>,
    pub(crate) path: PathBuf,
}

impl Durable {
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        // sled frees memory through crossbeam-epoch: what `flush` retires (the log buffers it
        // seals, and with them whole segment buffers) waits in this thread's local bag, which a
        // thread that only syncs would fill only rarely, so it was freed late (+~90 MB peak
        // RSS at 1M events when a sync thread flushed sled). Hand it to the global queue now.
        crossbeam_epoch::pin().flush();
        sync_blobs(&self.path)?;
        self.db_file
            .sync_all()
            .map_err(io_error(&self.path.join("db")))
    }

    /// Makes sled durable past every frame of the segments the log retired, then reuses them.
    /// A failed checkpoint breaks the log: every later sync fails until the store is reopened.
    fn checkpoint(&self, wal: &Wal, staged: &Staged) -> Result<(), StoreError> {
        let retired = wal.take_retired();
        if retired.is_empty() {
            return Ok(());
        }
        // Every frame of a retired segment was synced before the segment was retired, so it
        // is applied now (if nothing did it already), before this flush begins.
        match staged
            .apply(wal.durable_seq(), Wait::Yes)
            .and_then(|()| self.sync())
        {
            Ok(()) => wal.recycle(retired),
            Err(error) => {
                wal.give_back(retired);
                wal.fail(&error.to_string());
                Err(error)
            }
        }
    }
}

/// What the maintenance thread is asked to do.
#[derive(Default)]
struct Signal {
    stop: bool,
    checkpoint: bool,
    write: bool,
}

type SignalPair = Arc<(Mutex<Signal>, Condvar)>;

/// The store's maintenance thread: checkpoints when the log retires a segment, and writes and
/// syncs the log every `flush_every_ms` (or when [`wal::PENDING_LIMIT`] bytes wait), so that commits nobody syncs
/// (`Durability::Buffered`) reach the disk about as soon as sled's own background flush would
/// have written them.
struct Maintenance {
    signal: SignalPair,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn raise(signal: &SignalPair, set: impl FnOnce(&mut Signal)) {
    let (lock, wake) = &**signal;
    set(&mut lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    wake.notify_one();
}

impl Maintenance {
    fn start(
        durable: Durable,
        wal: Arc<Wal>,
        staged: Arc<Staged>,
        every: Option<Duration>,
    ) -> Result<Maintenance, StoreError> {
        let signal: SignalPair = Arc::default();
        let theirs = Arc::clone(&signal);
        let thread = std::thread::Builder::new()
            .name("linkflow-sled-checkpoint".into())
            .spawn(move || maintain(&durable, &wal, &staged, &theirs, every))
            .map_err(io_error(&PathBuf::from("linkflow-sled-checkpoint thread")))?;
        Ok(Maintenance {
            signal,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread and waits for it.
    fn stop(&self) {
        raise(&self.signal, |signal| signal.stop = true);
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // A panic there has nothing left to clean up: closing checkpoints anyway.
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section of this module leaves its state whole before anything that can
    // panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn maintain(
    durable: &Durable,
    wal: &Wal,
    staged: &Staged,
    signal: &SignalPair,
    every: Option<Duration>,
) {
    let (lock, wake) = &**signal;
    loop {
        let mut raised = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while !(raised.stop || raised.checkpoint || raised.write) {
            match every {
                Some(every) => {
                    let (guard, waited) = wake
                        .wait_timeout(raised, every)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    raised = guard;
                    if waited.timed_out() {
                        raised.write = true;
                    }
                }
                None => {
                    raised = wake
                        .wait(raised)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
        let Signal {
            stop,
            mut checkpoint,
            write,
        } = std::mem::take(&mut *raised);
        drop(raised);
        if stop {
            return;
        }
        // Any error here fails the store (the log breaks: no commit or sync is taken after it),
        // so nothing more is acknowledged on a disk that failed; reads keep working.
        if write {
            if wal.pending_bytes() > 0 {
                match wal.sync() {
                    Ok(retired) => checkpoint |= retired,
                    Err(error) => wal.fail(&error.to_string()),
                }
            }
            if let Err(error) = staged.apply(wal.durable_seq(), Wait::Yes) {
                wal.fail(&format!("applying synced frames to sled: {error}"));
            }
        }
        if checkpoint {
            // A failed checkpoint breaks the log itself.
            let _ = durable.checkpoint(wal, staged);
        }
    }
}

/// Reads the frame sled's state ends at (`Mwal`; 0 before the first).
/// Refuses a store of another layout (nothing of it is read or changed) and marks a new one.
/// The marker reaches the disk with the store's first sync, before the log is used.
pub(crate) fn check_layout(db: &sled::Db, path: &Path) -> Result<(), StoreError> {
    match db.get(keys::LAYOUT_KEY)? {
        Some(value) if *value == keys::LAYOUT.to_be_bytes() => Ok(()),
        None if db.is_empty() => {
            db.insert(keys::LAYOUT_KEY, &keys::LAYOUT.to_be_bytes())?;
            Ok(())
        }
        found => {
            let found = match found {
                None => "1 (no layout key)".to_owned(),
                Some(value) => match <[u8; 4]>::try_from(&value[..]) {
                    Ok(bytes) => u32::from_be_bytes(bytes).to_string(),
                    Err(_) => format!("{:?} (not a layout number)", &value[..]),
                },
            };
            Err(StoreError::UpgradeRequired {
                store: path.display().to_string(),
                found,
                supported: keys::LAYOUT,
                detail: "layouts 1 to 5 kept refused events apart as parked events, layout 6 kept no version in a stream's head; layout 7 keeps every event of a session in its stream and the stream's version in its head",
            })
        }
    }
}

pub(crate) fn applied_frame(db: &sled::Db) -> Result<u64, StoreError> {
    match db.get(keys::WAL_KEY)? {
        None => Ok(0),
        Some(value) => match <[u8; 8]>::try_from(&*value) {
            Ok(bytes) => Ok(u64::from_be_bytes(bytes)),
            Err(_) => Err(CorruptRecord::new(
                "write-ahead log position (Mwal)",
                format!("holds {} bytes, not 8", value.len()),
            )
            .into()),
        },
    }
}

/// Applies the log's frames after the one sled's state ends at, each as one batch.
pub(crate) fn replay_frames(db: &sled::Db, frames: Vec<wal::Frame>) -> Result<(), StoreError> {
    for frame in frames {
        let mut batch = sled::Batch::default();
        let writes = wal::decode_payload(&frame.payload).map_err(|reason| {
            CorruptRecord::new(format!("write-ahead log frame {}", frame.seq), reason)
        })?;
        for write in writes {
            match write {
                wal::Write1::Insert(key, value) => batch.insert(key, value),
                wal::Write1::Remove(key) => batch.remove(key),
            }
        }
        batch.insert(keys::WAL_KEY, &frame.seq.to_be_bytes());
        db.apply_batch(batch)?;
    }
    Ok(())
}

/// Replays the log's frames after sled's state; a damaged log is [`StoreError::CorruptLog`]
/// and nothing is applied or deleted.
fn replay(db: &sled::Db, dir: &Path) -> Result<(), StoreError> {
    replay_frames(db, wal::recover(dir, applied_frame(db)?)?)
}

fn sync_blobs(path: &Path) -> Result<(), StoreError> {
    let blobs = path.join("blobs");
    let mut any = false;
    for path in wal::files_in(&blobs)? {
        // A blob garbage-collected between listing and opening needs no sync.
        match File::open(&path) {
            Ok(file) => file.sync_all().map_err(io_error(&path))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(&path)(error)),
        }
        any = true;
    }
    if any {
        sync_dir(&blobs)?;
    }
    Ok(())
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
        guard_sled(&path, || SledStore::open_unguarded(options))
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
        let wal = Arc::new(Wal::start(
            &wal_dir,
            applied_frame(&db)? + 1,
            options.wal_segment_bytes.max(1),
            options.wal_preallocate,
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
    fn guarded<T>(
        &self,
        operation: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = guard_sled(&self.path, operation);
        if let Err(StoreError::Corrupt(corrupt)) = &result {
            if corrupt.reason.starts_with("sled failed reading its files") {
                self.wal.fail(&corrupt.to_string());
            }
        }
        result
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
        self.staged.forget_heads();
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

impl Drop for SledStore {
    /// Only stops the maintenance thread (signals it, and waits for it to finish what it is
    /// doing, so that sled is released when the store is gone): no I/O of its own, no error to
    /// lose. Closing work, and its errors, belong to [`EventStore::close`]; a store dropped
    /// without closing keeps its log, which the next open replays (as after a crash).
    fn drop(&mut self) {
        self.maintenance.stop();
    }
}

/// A dedupe entry a commit adds.
struct NewEntry {
    key: DedupeKey,
    target: Target,
}

/// A stream's `K` value as read: its decoded dedupe list and the raw value (for its snapshot,
/// which a commit without a new snapshot carries over).
struct Head {
    list: DedupeList,
    value: sled::IVec,
}

/// The stored log as a commit in progress reads it. Each stream's head is read once and kept
/// for the commit's writes.
struct SledReads<'a> {
    store: &'a SledStore,
    heads: HashMap<SessionId, Option<Head>>,
}

impl SledReads<'_> {
    fn head(&mut self, stream: &SessionId) -> Result<Option<&Head>, StoreError> {
        if !self.heads.contains_key(stream) {
            let head = self.store.head_value(stream)?;
            self.heads.insert(stream.clone(), head);
        }
        Ok(self.heads.get(stream).and_then(Option::as_ref))
    }

    fn list(&mut self, stream: &SessionId) -> Result<Option<&DedupeList>, StoreError> {
        Ok(self.head(stream)?.map(|head| &head.list))
    }

    /// The stream's head, taken out for the commit's write of it (its last use): the list is
    /// moved, not copied.
    fn take_head(&mut self, stream: &SessionId) -> Result<Option<Head>, StoreError> {
        match self.heads.remove(stream) {
            Some(head) => Ok(head),
            None => self.store.head_value(stream),
        }
    }
}

impl StoredLog for SledReads<'_> {
    /// The head holds the stream's version, and the commit has read the head already for
    /// its dedupe checks: no read here.
    fn stream_version(&mut self, stream: &SessionId) -> Result<Version, StoreError> {
        Ok(self
            .list(stream)?
            .map_or(Version::EMPTY, |list| list.version))
    }

    fn holds_key(&mut self, stream: &SessionId, key: &DedupeKey) -> Result<bool, StoreError> {
        let store = self.store;
        let list = self.list(stream)?;
        Ok(store.lookup(stream, list, key)?.is_some())
    }
}

impl EventStore for SledStore {
    fn commit(&self, commit: Commit) -> Result<Receipt, StoreError> {
        self.guarded(|| {
            let mut writer = self.writer();
            // Fail-stop: after the disk failed, nothing more is committed (or acknowledged);
            // nor after the store was closed (checked under the writer lock `close` takes).
            self.health()?;
            // What earlier syncs made durable and nobody applied yet (the engine's sync threads
            // usually have, after answering) goes to sled first, unless another thread is at it:
            // a store used without `after_sync` keeps only the last commit or two staged.
            self.staged.apply(self.wal.durable_seq(), Wait::No)?;
            let mut reads = SledReads {
                store: self,
                heads: HashMap::new(),
            };
            let plan = check_commit(commit, writer.head, &mut reads)?;
            // The payload's buffer is reused from commit to commit: a commit of 1,000 events
            // writes about a megabyte, and a fresh buffer each time left the allocator holding
            // tens of megabytes it had grown into.
            let mut batch = self.staged.take_payload();
            // New dedupe entries, stream by stream in order of first appearance.
            let mut entries: Vec<(SessionId, Vec<NewEntry>)> = Vec::new();
            let mut add_entry = |stream: &SessionId, entry: NewEntry| match entries
                .iter_mut()
                .find(|(known, _)| known == stream)
            {
                Some((_, list)) => list.push(entry),
                None => entries.push((stream.clone(), vec![entry])),
            };
            // One run per stream of consecutive positions, one global index key per commit. The
            // events of a run go under as few keys as MAX_PACKED_BYTES allows.
            let mut runs: Vec<Run> = Vec::new();
            let mut pack: Vec<&CheckedEvent> = Vec::new();
            let put_pack = |batch: &mut Payload, pack: &mut Vec<&CheckedEvent>| {
                match pack.as_slice() {
                    [] => {}
                    [event] => batch.insert(
                        &keys::event_key(&event.stream, event.version),
                        &event.record,
                    ),
                    [first, ..] => {
                        let records: Vec<&[u8]> = pack.iter().map(|event| &*event.record).collect();
                        batch.insert(
                            &keys::event_key(&first.stream, first.version),
                            &pack_events(&records),
                        );
                    }
                }
                pack.clear();
            };
            for event in &plan.events {
                let extends = pack.last().is_some_and(|last| {
                    last.stream == event.stream && last.version.next() == event.version
                }) && pack.iter().map(|event| event.record.len()).sum::<usize>()
                    + event.record.len()
                    <= MAX_PACKED_BYTES;
                if !extends {
                    put_pack(&mut batch, &mut pack);
                }
                pack.push(event);
                let target = Target {
                    version: event.version,
                    position: event.position,
                };
                add_entry(
                    &event.stream,
                    NewEntry {
                        key: event.dedupe_key,
                        target,
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
            put_pack(&mut batch, &mut pack);
            if let Some(first) = plan.events.first() {
                batch.insert(&keys::global_key(first.position), &keys::runs_value(&runs));
            }
            // Each stream's new snapshot (a later one replaces an earlier one) goes into the
            // stream's head, with the dedupe entries: one key per stream touched.
            let mut snapshots: HashMap<&SessionId, &[u8]> = HashMap::new();
            for snapshot in &plan.snapshots {
                if !entries.iter().any(|(known, _)| *known == snapshot.stream) {
                    entries.push((snapshot.stream.clone(), Vec::new()));
                }
                snapshots.insert(&snapshot.stream, &snapshot.record);
            }
            for (stream, new_entries) in entries {
                let (mut list, old_value) = match reads.take_head(&stream)? {
                    Some(Head { list, value }) => (list, Some(value)),
                    None => (DedupeList::default(), None),
                };
                let snapshot = match (snapshots.get(&stream), &old_value) {
                    (Some(record), _) => Some(*record),
                    (None, Some(value)) => DedupeList::snapshot_encoded(&stream, value)?,
                    (None, None) => None,
                };
                for NewEntry { key, target } in new_entries {
                    list.version = list.version.max(target.version);
                    list.set(key, target);
                }
                if list.entries.len() > LIST_MAX {
                    for (key, target) in list.entries.drain(..) {
                        batch.insert(
                            &keys::dedupe_key(&stream, &key),
                            &keys::dedupe_value(&target.hit(&stream)),
                        );
                    }
                    list.spilled = true;
                }
                batch.insert(&keys::list_key(&stream), &list.encode(snapshot));
            }
            if batch.as_bytes().is_empty() {
                // An empty commit: nothing to write, no frame.
                self.staged.give_back(batch);
            } else {
                // Staged (where reads see it) before it is in the log: nothing applies a frame
                // before a sync of the log covers it.
                let seq = self.wal.next_seq();
                let payload = self.staged.add(seq, batch)?;
                if self.wal.append(seq, &payload) > wal::PENDING_LIMIT {
                    raise(&self.maintenance.signal, |signal| signal.write = true);
                }
            }
            writer.head = plan.receipt.head;
            Ok(plan.receipt)
        })
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

    /// The stream's head holds its version; no head, no event.
    fn stream_version(&self, stream: &SessionId) -> Result<Version, StoreError> {
        self.guarded(|| match self.staged.get(keys::list_key(stream))? {
            Some(value) => Ok(DedupeList::version_encoded(stream, &value)?),
            None => Ok(Version::EMPTY),
        })
    }

    fn read_stream(
        &self,
        stream: &SessionId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.guarded(|| {
            let mut events = Vec::new();
            if limit == 0 {
                return Ok(events);
            }
            // The first wanted event is in the last value whose key is at or before it. A stream's
            // versions start at 1, so a stream with no such key has no events.
            let wanted = keys::event_key(stream, after.next());
            let Some((first_key, first_value)) = self.staged.last((
                Bound::Included(keys::event_key(stream, Version::EMPTY)),
                Bound::Included(wanted),
            ))?
            else {
                return Ok(events);
            };
            // The value before the wanted version usually ends at it (a snapshot is taken at the
            // end of a commit's run): its records up to `after` are not decoded.
            let mut take = |key: &[u8], value: &[u8]| -> Result<bool, StoreError> {
                let (_, first) = keys::parse_event_key(key)?;
                let skip =
                    usize::try_from(after.next().0.saturating_sub(first.0)).unwrap_or(usize::MAX);
                for event in decode_event_value(key, value, skip)? {
                    events.push(event);
                    if events.len() == limit {
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
            Ok(events)
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
            // One read: the head holds both.
            let value = self.staged.get(keys::list_key(stream))?;
            let empty = match &value {
                Some(value) => DedupeList::version_encoded(stream, value)? == Version::EMPTY,
                None => true,
            };
            let snapshot = match value {
                Some(value) if !empty => snapshot_in_head(stream, &value)?,
                _ => None,
            };
            Ok(StreamStart {
                empty: Some(empty),
                snapshot,
            })
        })
    }

    fn for_each_snapshot(
        &self,
        visit: &mut dyn FnMut(SessionId, Snapshot) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.guarded(|| {
            for entry in self.staged.scan_prefix([keys::LIST]) {
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

/// Reads the tests of this module ask for by themselves.
#[cfg(test)]
impl SledStore {
    /// Every commit that appends an event of a stream writes the stream's head, with its
    /// version: no head, or version 0, means nothing stored.
    pub(crate) fn stream_is_empty(&self, stream: &SessionId) -> Result<Option<bool>, StoreError> {
        self.guarded(|| match self.staged.get(keys::list_key(stream))? {
            Some(value) => Ok(Some(
                DedupeList::version_encoded(stream, &value)? == Version::EMPTY,
            )),
            None => Ok(Some(true)),
        })
    }

    /// The stream's snapshot, if one was stored (an empty stream's too).
    pub(crate) fn snapshot(&self, stream: &SessionId) -> Result<Option<Snapshot>, StoreError> {
        self.guarded(|| match self.staged.get(keys::list_key(stream))? {
            Some(value) => snapshot_in_head(stream, &value),
            None => Ok(None),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use linkflow_core::{Event, EventBody, EventKind, Provider};
    use uuid::Uuid;

    use super::*;

    /// sled's tree with every commit applied, for tests that read or change it directly.
    fn settled(store: &SledStore) -> &sled::Db {
        store.settle().unwrap();
        store.staged.forget_heads();
        &store.db
    }
    use crate::record::{NewEvent, RawJson, PACKED};
    use crate::store::{Append, Placed};

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

    /// What these tests commit: appends numbered after what the store holds (`Next`) or at a
    /// stated version (`Exact`), and snapshots.
    #[allow(clippy::large_enum_variant)]
    enum TestOp {
        Next(Append),
        Exact(Append),
        Snapshot(SessionId, Snapshot),
    }

    /// Commits `ops`, each `Next` append expecting its stream's version as the store and the
    /// commit's earlier appends leave it.
    fn commit(store: &SledStore, ops: Vec<TestOp>) -> Result<Vec<Placed>, StoreError> {
        let mut versions: HashMap<SessionId, Version> = HashMap::new();
        let mut commit = Commit::default();
        for op in ops {
            match op {
                TestOp::Next(mut append) => {
                    let version = versions.entry(append.stream.clone()).or_insert_with(|| {
                        store.stream_version(&append.stream).unwrap_or_default()
                    });
                    append.expected = *version;
                    *version = version.next();
                    commit.appends.push(append);
                }
                TestOp::Exact(append) => {
                    versions.insert(append.stream.clone(), append.expected.next());
                    commit.appends.push(append);
                }
                TestOp::Snapshot(stream, snapshot) => commit.snapshots.push((stream, snapshot)),
            }
        }
        Ok(store.commit(commit)?.appended)
    }

    /// An append, of an event the stream's fold rejected when `rejected`.
    fn append(stream: &SessionId, event: NewEvent, rejected: bool) -> TestOp {
        TestOp::Next(Append {
            stream: stream.clone(),
            expected: Version::EMPTY,
            stored_at: event.received_at,
            event,
            rejected,
        })
    }

    fn list_of(store: &SledStore, stream: &SessionId) -> DedupeList {
        store.head_value(stream).unwrap().unwrap().list
    }

    fn d_keys(store: &SledStore, stream: &SessionId) -> usize {
        settled(store)
            .scan_prefix(keys::session_prefix(keys::DEDUPE, stream))
            .count()
    }

    fn assert_consistent(store: &SledStore) {
        let problems = problems(store);
        assert!(problems.is_empty(), "{problems:?}");
    }

    fn problems(store: &SledStore) -> Vec<String> {
        let report = store.verify().unwrap();
        report
            .problems
            .iter()
            .map(|problem| format!("{}: {}", problem.record, problem.message))
            .collect()
    }

    fn exact(stream: &SessionId, version: u64, event: NewEvent) -> TestOp {
        TestOp::Exact(Append {
            stream: stream.clone(),
            expected: Version(version),
            stored_at: event.received_at,
            event,
            rejected: false,
        })
    }

    /// Commits check expected versions against the version in the stream's head (which they
    /// read anyway for the dedupe checks), before and after a reopen and a spill of the
    /// stream's dedupe list; verify reports a head whose version is not the stream's.
    #[test]
    fn expected_versions_are_checked_against_the_version_in_the_streams_head() {
        let dir = tempfile::tempdir().unwrap();
        let a = stream("a");
        {
            let store = SledStore::open(dir.path()).unwrap();
            // A stream with no head has no events.
            assert!(matches!(
                commit(&store, vec![exact(&a, 1, event(1))]),
                Err(StoreError::Conflict {
                    actual: Version(0),
                    ..
                })
            ));
            commit(&store, vec![exact(&a, 0, event(1)), exact(&a, 1, event(2))]).unwrap();
            assert!(matches!(
                commit(&store, vec![exact(&a, 1, event(3))]),
                Err(StoreError::Conflict {
                    actual: Version(2),
                    ..
                })
            ));
            commit(&store, vec![exact(&a, 2, event(3))]).unwrap();
            store.sync().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert!(matches!(
            commit(&store, vec![exact(&a, 2, event(4))]),
            Err(StoreError::Conflict {
                actual: Version(3),
                ..
            })
        ));
        // Past a spill the head holds no entry, and still the version.
        let many = (4..=4 + LIST_MAX as u64).map(|n| append(&a, event(n), false));
        commit(&store, many.collect()).unwrap();
        let spilled = LIST_MAX as u64 + 4;
        assert!(list_of(&store, &a).spilled);
        assert_eq!(list_of(&store, &a).version, Version(spilled));
        assert_eq!(store.stream_version(&a).unwrap(), Version(spilled));
        commit(&store, vec![exact(&a, spilled, event(1_000))]).unwrap();
        assert_consistent(&store);

        // A head whose version is not its stream's last event's is damage verify names.
        let mut head = list_of(&store, &a);
        head.version = Version(3);
        store
            .raw_insert_for_tests(&keys::list_key(&a), &head.encode(None))
            .unwrap();
        let found = problems(&store);
        assert!(
            found
                .iter()
                .any(|p| p.contains("head of stream `a`") && p.contains("version 3")),
            "{found:?}"
        );
    }

    #[test]
    fn a_short_stream_keeps_its_entries_in_one_list_and_a_long_one_spills_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let a = stream("a");
        let ops = (1..=LIST_MAX as u64)
            .map(|n| append(&a, event(n), false))
            .collect();
        commit(&store, ops).unwrap();
        assert_eq!(d_keys(&store, &a), 0);
        let list = list_of(&store, &a);
        assert_eq!((list.entries.len(), list.spilled), (LIST_MAX, false));

        commit(&store, vec![append(&a, event(1_000), false)]).unwrap();
        assert_eq!(d_keys(&store, &a), LIST_MAX + 1);
        let list = list_of(&store, &a);
        assert_eq!((list.entries.len(), list.spilled), (0, true));
        commit(&store, vec![append(&a, event(1_001), false)]).unwrap();
        assert_eq!(list_of(&store, &a).entries.len(), 1);
        for n in (1..=LIST_MAX as u64).chain([1_000, 1_001]) {
            assert!(store
                .find_dedupe(&a, &event(n).dedupe_key)
                .unwrap()
                .is_some());
        }
        assert_consistent(&store);
    }

    #[test]
    fn a_stream_is_empty_until_an_event_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (a, b, c) = (stream("a"), stream("b"), stream("c"));
        for id in [&a, &b, &c] {
            assert_eq!(store.stream_is_empty(id).unwrap(), Some(true));
        }
        commit(
            &store,
            vec![append(&a, event(1), false), append(&b, event(2), true)],
        )
        .unwrap();
        assert_eq!(store.stream_is_empty(&a).unwrap(), Some(false));
        assert_eq!(
            store.stream_is_empty(&b).unwrap(),
            Some(false),
            "a rejected event only"
        );
        assert_eq!(store.stream_is_empty(&c).unwrap(), Some(true));
        // Past a spill the list stays, empty and marked spilled.
        let ops = (10..=10 + LIST_MAX as u64)
            .map(|n| append(&c, event(n), false))
            .collect();
        commit(&store, ops).unwrap();
        commit(&store, vec![append(&c, event(500), false)]).unwrap();
        assert_eq!(store.stream_is_empty(&c).unwrap(), Some(false));
    }

    #[test]
    fn damaged_dedupe_data_is_a_clear_error_and_a_verify_problem() {
        let dir = tempfile::tempdir().unwrap();
        let a = stream("sess-a");
        let b = stream("sess-b");
        {
            let store = SledStore::open(dir.path()).unwrap();
            commit(
                &store,
                vec![append(&a, event(1), false), append(&b, event(2), false)],
            )
            .unwrap();
            settled(&store)
                .insert(keys::list_key(&a), &[0, 1, 2][..])
                .unwrap();
            // A `D` key in a stream whose list is not spilled is never read by lookups.
            let stray = DedupeHit {
                stream: b.clone(),
                version: Version(1),
                position: Position(2),
            };
            settled(&store)
                .insert(
                    keys::dedupe_key(&b, &event(9).dedupe_key),
                    keys::dedupe_value(&stray),
                )
                .unwrap();
            let error = store.find_dedupe(&a, &event(1).dedupe_key).unwrap_err();
            assert!(matches!(error, StoreError::Corrupt(_)));
            assert!(
                error.to_string().contains("head of stream `sess-a`"),
                "{error}"
            );
            let error = commit(&store, vec![append(&a, event(5), false)]).unwrap_err();
            assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
            let found = problems(&store);
            assert!(
                found.iter().any(|p| p.contains("head of stream `sess-a`")),
                "{found:?}"
            );
            assert!(
                found.iter().any(|p| p.contains("not marked spilled")),
                "{found:?}"
            );
            settled(&store)
                .insert(keys::LAYOUT_KEY, &[0, 0, 0, 9][..])
                .unwrap();
            store.sync().unwrap();
        }
        let error = SledStore::open(dir.path())
            .err()
            .expect("an unknown layout is refused");
        assert!(
            error
                .to_string()
                .contains("layout 9; this linkflow reads layout 7 only"),
            "{error}"
        );
    }

    /// A store of an older layout (1 to 5: refused events kept apart as parked events; 6: no
    /// version in a stream's head) is refused at open with its layout named, and left as it
    /// was.
    #[test]
    fn a_store_of_an_older_layout_is_refused_naming_its_layout() {
        for (old, named) in [
            (Some(6u32), "layout 6"),
            (Some(5), "layout 5"),
            (Some(2), "layout 2"),
            (None, "layout 1"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = SledStore::open(dir.path()).unwrap();
                commit(&store, appends(&stream("a"), 1..=2)).unwrap();
                store.sync().unwrap();
                let db = settled(&store);
                match old {
                    Some(layout) => db.insert(keys::LAYOUT_KEY, &layout.to_be_bytes()).unwrap(),
                    None => db.remove(keys::LAYOUT_KEY).unwrap(),
                };
            }
            let error = SledStore::open(dir.path()).err().expect("refused");
            assert!(
                matches!(error, StoreError::UpgradeRequired { supported: 7, .. }),
                "{error:?}"
            );
            let text = error.to_string();
            assert!(text.contains(named) && text.contains("parked"), "{text}");
        }
    }

    #[test]
    fn a_full_scan_names_a_record_that_is_damaged_or_under_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (a, b) = (stream("sess-a"), stream("sess-b"));
        commit(
            &store,
            vec![append(&a, event(1), false), append(&b, event(2), false)],
        )
        .unwrap();
        let scan = |store: &SledStore| {
            store.for_each_event_by_stream(&mut |_| std::ops::ControlFlow::Continue(()))
        };
        scan(&store).unwrap();

        // `a`'s record copied under `b`'s second version: it decodes, but not as that key.
        let record = settled(&store)
            .get(keys::event_key(&a, Version(1)))
            .unwrap()
            .unwrap();
        settled(&store)
            .insert(keys::event_key(&b, Version(2)), record)
            .unwrap();
        let error = scan(&store).unwrap_err().to_string();
        assert!(error.contains("event `sess-b` version 2"), "{error}");
        assert!(error.contains("does not match its key"), "{error}");

        // A record that does not decode is named by its key, not by its (unreadable) body.
        settled(&store)
            .insert(keys::event_key(&b, Version(2)), &[2, 1, 2, 3, 4, 9][..])
            .unwrap();
        let error = scan(&store).unwrap_err().to_string();
        assert!(error.contains("event `sess-b` version 2"), "{error}");
        assert!(error.contains("checksum"), "{error}");
    }

    /// The `S` values of `stream`, as (first version, events in the value).
    fn event_values(store: &SledStore, stream: &SessionId) -> Vec<(u64, usize)> {
        settled(store)
            .scan_prefix(keys::session_prefix(keys::EVENT, stream))
            .map(|entry| {
                let (key, value) = entry.unwrap();
                let (_, first) = keys::parse_event_key(&key).unwrap();
                (first.0, crate::record::event_count("", &value).unwrap())
            })
            .collect()
    }

    /// Appends of `stream`'s events numbered `numbers`, in one commit's ops.
    fn appends(stream: &SessionId, numbers: impl IntoIterator<Item = u64>) -> Vec<TestOp> {
        numbers
            .into_iter()
            .map(|n| append(stream, event(n), false))
            .collect()
    }

    fn versions(events: &[StoredEvent]) -> Vec<u64> {
        events.iter().map(|event| event.version.0).collect()
    }

    #[test]
    fn a_commit_packs_each_streams_run_under_one_key_and_every_read_finds_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (stream("a"), stream("b"));
        {
            let store = SledStore::open(dir.path()).unwrap();
            let mut ops = appends(&a, 1..=3);
            ops.extend(appends(&b, 4..=5));
            commit(&store, ops).unwrap();
            commit(&store, appends(&a, [6])).unwrap();
            store.sync().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(event_values(&store, &a), vec![(1, 3), (4, 1)]);
        assert_eq!(event_values(&store, &b), vec![(1, 2)]);
        assert_eq!(store.stream_version(&a).unwrap(), Version(4));
        assert_eq!(store.stream_version(&b).unwrap(), Version(2));
        assert_eq!(store.stream_version(&stream("c")).unwrap(), Version::EMPTY);
        // From before, inside and after a packed value, with limits cutting inside one.
        for after in 0..=4 {
            let read = store.read_stream(&a, Version(after), usize::MAX).unwrap();
            assert_eq!(versions(&read), ((after + 1)..=4).collect::<Vec<_>>());
        }
        assert_eq!(
            versions(&store.read_stream(&a, Version(1), 1).unwrap()),
            [2]
        );
        assert_eq!(
            versions(&store.read_stream(&a, Version(0), 0).unwrap()),
            Vec::<u64>::new()
        );
        assert_eq!(
            versions(&store.read_stream(&a, Version(2), 2).unwrap()),
            [3, 4]
        );
        assert!(store
            .read_stream(&stream("c"), Version(0), 10)
            .unwrap()
            .is_empty());
        // Positions: a 1-3, b 4-5, a 6; reading from inside the commit.
        let all = store.read_all(Position(1), 3).unwrap();
        let positions: Vec<u64> = all.iter().map(|event| event.position.0).collect();
        assert_eq!(positions, [2, 3, 4]);
        assert_eq!((all[2].stream.as_str(), all[2].version), ("b", Version(1)));
        let mut scanned = Vec::new();
        store
            .for_each_event_by_stream(&mut |event| {
                scanned.push((event.stream.as_str().to_owned(), event.version.0));
                ControlFlow::Continue(())
            })
            .unwrap();
        let expected: Vec<(String, u64)> =
            [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("b", 2)]
                .into_iter()
                .map(|(stream, version)| (stream.to_owned(), version))
                .collect();
        assert_eq!(scanned, expected);
        assert_eq!(store.verify().unwrap().events, 6);
        assert_consistent(&store);
    }

    #[test]
    fn a_packed_value_stays_within_its_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let a = stream("a");
        let big = |n: u64| {
            let mut event = event(n);
            let text = format!("{{\"n\": {n}, \"pad\": \"{}\"}}", "x".repeat(1_500));
            event.raw = Some(RawJson::from_string(text).unwrap());
            event
        };
        commit(
            &store,
            (1..=20).map(|n| append(&a, big(n), false)).collect(),
        )
        .unwrap();
        let values = event_values(&store, &a);
        assert!(values.len() >= 5, "{values:?}");
        assert_eq!(values.iter().map(|(_, count)| count).sum::<usize>(), 20);
        for entry in settled(&store).scan_prefix(keys::session_prefix(keys::EVENT, &a)) {
            let (_, value) = entry.unwrap();
            let records: usize = event_records("", &value)
                .unwrap()
                .iter()
                .map(|r| r.len())
                .sum();
            assert!(
                records <= MAX_PACKED_BYTES,
                "{records} bytes of records in one value"
            );
        }
        assert_eq!(
            versions(&store.read_stream(&a, Version(7), usize::MAX).unwrap()),
            (8..=20).collect::<Vec<_>>()
        );
        assert_consistent(&store);
    }

    fn snapshot_at(version: u64, state: &[u8]) -> Snapshot {
        Snapshot {
            provider: Provider::Moneykit,
            version: Version(version),
            state: state.to_vec(),
        }
    }

    fn snapshot_op(stream: &SessionId, version: u64, state: &[u8]) -> TestOp {
        TestOp::Snapshot(stream.clone(), snapshot_at(version, state))
    }

    fn layout(store: &SledStore) -> Vec<u8> {
        settled(store)
            .get(keys::LAYOUT_KEY)
            .unwrap()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_new_store_keeps_each_snapshot_in_its_streams_head() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (a, b) = (stream("a"), stream("b"));
        let mut ops = appends(&a, 1..=2);
        ops.push(snapshot_op(&a, 2, b"two"));
        ops.push(snapshot_op(&b, 0, b"nothing yet"));
        commit(&store, ops).unwrap();
        assert_eq!(layout(&store), keys::LAYOUT.to_be_bytes());
        assert_eq!(store.snapshot(&a).unwrap().unwrap().state, b"two");
        // A stream with only a snapshot has a head, and is still empty.
        assert_eq!(store.stream_is_empty(&b).unwrap(), Some(true));
        assert_eq!(store.stream_version(&b).unwrap(), Version::EMPTY);
        // A commit without a snapshot for the stream carries its snapshot over; one with a
        // snapshot replaces it and keeps the dedupe entries.
        commit(&store, vec![append(&a, event(3), false)]).unwrap();
        assert_eq!(store.snapshot(&a).unwrap().unwrap().state, b"two");
        commit(&store, vec![snapshot_op(&a, 3, b"three")]).unwrap();
        assert_eq!(store.snapshot(&a).unwrap().unwrap().version, Version(3));
        let duplicate = commit(&store, vec![append(&a, event(1), false)]).unwrap_err();
        assert!(matches!(duplicate, StoreError::DuplicateKey { .. }));
        // Appending to the stream that had only a snapshot starts it at version 1.
        commit(&store, vec![exact(&b, 0, event(10))]).unwrap();
        assert_eq!(store.snapshot(&b).unwrap().unwrap().state, b"nothing yet");
        let mut seen = Vec::new();
        store
            .for_each_snapshot(&mut |session, snapshot| {
                seen.push((session.to_string(), snapshot.version.0));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(seen, [("a".to_string(), 3), ("b".to_string(), 0)]);
        let report = store.verify().unwrap();
        assert_eq!(report.snapshots, 2);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn a_damaged_packed_value_is_a_clear_error_naming_its_event_and_a_verify_problem() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (a, b) = (stream("sess-a"), stream("sess-b"));
        let mut ops = appends(&a, 1..=2);
        ops.extend(appends(&b, 3..=4));
        commit(&store, ops).unwrap();
        let packed = |stream: &SessionId| {
            settled(&store)
                .get(keys::event_key(stream, Version(1)))
                .unwrap()
                .unwrap()
                .to_vec()
        };
        let (good_a, good_b) = (packed(&a), packed(&b));
        let key = keys::event_key(&b, Version(1));
        let scan =
            |store: &SledStore| store.for_each_event_by_stream(&mut |_| ControlFlow::Continue(()));
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        // A count of one, a count beyond the value, a length past the end, a byte left over.
        cases.push((vec![PACKED, 1, 3, 1, 2, 3], "fewer than 2"));
        cases.push((vec![PACKED, 0x7f, 1, 1], "cannot fit"));
        let mut long = vec![PACKED, 2, 0x7f];
        long.extend_from_slice(&[0; 20]);
        cases.push((long, "needs"));
        let mut trailing = good_b.clone();
        trailing.push(0);
        cases.push((trailing, "after the last record"));
        // `a`'s records under `b`'s key: they decode, but not as that key.
        cases.push((good_a.clone(), "does not match its key"));
        // A damaged record inside: named by its own version.
        let mut flipped = good_b.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        cases.push((flipped, "version 2: checksum"));
        for (value, expected) in cases {
            settled(&store).insert(&key, value.clone()).unwrap();
            let error = scan(&store).unwrap_err().to_string();
            assert!(error.contains("event `sess-b` version"), "{error}");
            assert!(error.contains(expected), "{expected}: {error}");
            let read = store
                .read_stream(&b, Version(0), 10)
                .unwrap_err()
                .to_string();
            assert!(read.contains(expected), "{expected}: {read}");
            assert!(
                problems(&store)
                    .iter()
                    .any(|problem| problem.contains(expected)),
                "{expected}: {:?}",
                problems(&store)
            );
        }
        settled(&store).insert(&key, good_b.clone()).unwrap();
        assert_consistent(&store);

        // A packed value under the last possible version: an error, not an overflow.
        let c = stream("sess-c");
        settled(&store)
            .insert(keys::event_key(&c, Version(u64::MAX)), good_b)
            .unwrap();
        let error = store
            .read_stream(&c, Version(u64::MAX - 1), 10)
            .unwrap_err()
            .to_string();
        assert!(error.contains("event `sess-c`"), "{error}");
        assert!(scan(&store).is_err());
        assert!(!problems(&store).is_empty());
    }

    /// A store that does nothing in the background: sled's files change only at checkpoints,
    /// and staged frames are applied only by commits, `after_sync` and closing.
    fn quiet_store(path: &Path) -> SledStore {
        let mut options = SledOptions::new(path);
        options.flush_every_ms = None;
        SledStore::open_with(options).unwrap()
    }

    /// Copies a store's files (not its log) as they are on disk now.
    fn copy_sled_files(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap();
            if path.is_file() {
                std::fs::copy(&path, to.join(name)).unwrap();
            } else if name != wal::DIR {
                std::fs::create_dir_all(to.join(name)).unwrap();
                copy_sled_files(&path, &to.join(name));
            }
        }
    }

    fn copy_log(from: &Path, to: &Path) {
        std::fs::create_dir_all(to.join(wal::DIR)).unwrap();
        for entry in std::fs::read_dir(from.join(wal::DIR)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join(wal::DIR).join(path.file_name().unwrap())).unwrap();
        }
    }

    #[test]
    fn a_panic_of_sled_while_opening_is_a_corrupt_record_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let error = guard_sled::<()>(dir.path(), || panic!("tried to serialize Uninitialized"))
            .unwrap_err();
        let StoreError::Corrupt(corrupt) = error else {
            panic!("{error:?}")
        };
        assert!(corrupt.key.ends_with("db"), "{corrupt:?}");
        assert!(corrupt.reason.contains("Uninitialized"), "{corrupt:?}");
        assert_eq!(guard_sled(dir.path(), || Ok(7)).unwrap(), 7);
        // On an open store, a panic of sled's in any operation fails the store for writes.
        let store = quiet_store(dir.path());
        let error = store
            .guarded::<()>(|| panic!("tried to serialize Uninitialized"))
            .unwrap_err();
        assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
        assert!(matches!(store.health(), Err(StoreError::Failed { .. })));
        assert!(commit(&store, appends(&stream("a"), 1..=1)).is_err());
        assert_eq!(store.head().unwrap(), Position::START, "reads still answer");
    }

    /// Finding 2 of issue 25: damaged bytes in sled's own file are an error naming the store,
    /// never a panic (sled 0.34 panics on some damaged pages): every one of many single-byte
    /// changes either opens and reads, or fails to open with an error.
    /// A process killed while sled writes a snapshot leaves `snap.<lsn>.generating`, partial;
    /// sled 0.34.7 alone then refuses every open. The store sets the unfinished snapshot aside
    /// and opens with everything committed; any other corruption stays an error.
    #[test]
    fn a_snapshot_sled_never_finished_does_not_stop_the_store_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        let a = stream("a");
        {
            let store = SledStore::open(dir.path()).unwrap();
            commit(&store, appends(&a, 1..=5)).unwrap();
            store.sync().unwrap();
        }
        let unfinished = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&unfinished, b"half of a snapshot").unwrap();
        let bare = open_sled_once(dir.path(), &SledOptions::new(dir.path()));
        assert!(
            matches!(bare, Err(StoreError::Corrupt(_))),
            "sled alone refuses it"
        );
        drop(bare);

        let store = SledStore::open(dir.path()).unwrap();
        assert!(!unfinished.exists());
        assert_eq!(store.stream_version(&a).unwrap(), Version(5));
        assert_consistent(&store);
        commit(&store, appends(&a, 6..=6)).unwrap();
        drop(store);

        // A damaged finished snapshot is sled's data: still an error.
        let snapshots: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("snap.")
            })
            .collect();
        assert!(!snapshots.is_empty(), "a closed store has a snapshot");
        for snapshot in &snapshots {
            std::fs::write(snapshot, b"damaged").unwrap();
        }
        assert!(matches!(
            SledStore::open(dir.path()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_damaged_sled_file_is_an_error_not_a_panic() {
        // A crash image: sled's files and the log copied while the store is open, as a kill
        // would leave them.
        let live = tempfile::tempdir().unwrap();
        let pristine = tempfile::tempdir().unwrap();
        let store = quiet_store(live.path());
        for n in 0..40u64 {
            commit(
                &store,
                appends(&stream(&format!("s{n}")), n * 10..=n * 10 + 5),
            )
            .unwrap();
            store.sync().unwrap();
        }
        store.durable().sync().unwrap();
        copy_sled_files(live.path(), pristine.path());
        copy_log(live.path(), pristine.path());
        drop(store);
        let db = pristine.path().join("db");
        let len = std::fs::metadata(&db).unwrap().len() as usize;
        let mut errors = 0;
        for trial in 0..48usize {
            let copy = tempfile::tempdir().unwrap();
            copy_sled_files(pristine.path(), copy.path());
            copy_log(pristine.path(), copy.path());
            let path = copy.path().join("db");
            let mut bytes = std::fs::read(&path).unwrap();
            let at = (trial * 2477 + trial / 3) % len;
            bytes[at] ^= if trial % 2 == 0 { 0xff } else { 0x01 };
            std::fs::write(&path, &bytes).unwrap();
            let opened = std::panic::catch_unwind(|| match SledStore::open(copy.path()) {
                Ok(store) => {
                    // Reading every stream may meet the damage too: an error, not a panic;
                    // so may writing and checkpointing.
                    let _ = store.verify();
                    let _ = store.read_all(Position::START, 1_000);
                    let _ = commit(&store, appends(&stream("after"), 1..=3));
                    let _ = store.sync();
                    let _ = store.durable().sync();
                    true
                }
                Err(_) => false,
            });
            match opened {
                Ok(true) => {}
                Ok(false) => errors += 1,
                Err(_) => panic!("a byte changed at {at} of {len} made the store panic"),
            }
        }
        assert!(errors < 48, "some damage is in space nothing reads");
    }

    /// Finding 3 of issue 25: once the log broke (a failed write or fsync, a failed checkpoint or
    /// apply on the maintenance thread), the store takes no more commits or syncs, says why,
    /// and keeps serving reads.
    #[test]
    fn a_store_whose_log_broke_takes_no_more_writes_and_keeps_serving_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = quiet_store(dir.path());
        let a = stream("a");
        commit(&store, appends(&a, 1..=2)).unwrap();
        store.sync().unwrap();
        assert!(store.health().is_ok());
        store.wal.fail("EIO on fdatasync");
        store.wal.fail("a later failure");
        for error in [
            commit(&store, appends(&a, 3..=3)).unwrap_err(),
            store.sync().unwrap_err(),
            store.health().unwrap_err(),
        ] {
            assert!(
                matches!(&error, StoreError::Failed { reason } if reason.contains("EIO on fdatasync")),
                "{error:?}"
            );
        }
        assert_eq!(store.stream_version(&a).unwrap(), Version(2));
        assert_eq!(store.read_stream(&a, Version::EMPTY, 10).unwrap().len(), 2);
        drop(store);
        // Reopened, the store takes writes again with every synced commit there.
        let reopened = quiet_store(dir.path());
        assert!(reopened.health().is_ok());
        commit(&reopened, appends(&a, 3..=3)).unwrap();
        assert_eq!(reopened.stream_version(&a).unwrap(), Version(3));
    }

    /// Finding 1 of issue 25: five acknowledged commits, then one flipped bit inside the second
    /// of their five frames. Opening is `CorruptLog` naming the segment, the offset and the
    /// frame, not a store cut short after the first commit; the log is left as it was; a
    /// repair keeps a copy, applies the first frame, and names the four it lost with the
    /// events they held; the store then opens with the first commit alone.
    #[test]
    fn a_damaged_frame_before_intact_ones_is_corruption_and_a_repair_says_what_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = quiet_store(dir.path());
        // A crash image: sled's files as the open made them durable (no commits)...
        let image = tempfile::tempdir().unwrap();
        copy_sled_files(dir.path(), image.path());
        let a = stream("a");
        for n in 1..=5 {
            commit(&store, appends(&a, n..=n)).unwrap();
            store.sync().unwrap();
        }
        // ...and the log with its five frames, the second one damaged.
        copy_log(dir.path(), image.path());
        drop(store);
        let (_, segment) = wal::tests_last_segment(&image.path().join(wal::DIR));
        let mut bytes = std::fs::read(&segment).unwrap();
        let frames = wal::read_log(&image.path().join(wal::DIR), 0)
            .unwrap()
            .frames;
        assert_eq!(frames.len(), 5);
        let first_len = 16 + frames[0].payload.len();
        bytes[first_len + 20] ^= 0x01;
        std::fs::write(&segment, &bytes).unwrap();
        let log_before: Vec<_> = wal::files_in(&image.path().join(wal::DIR)).unwrap();

        let error = SledStore::open(image.path())
            .err()
            .expect("a damaged log is refused");
        assert!(
            matches!(&error, StoreError::CorruptLog { frame: 2, offset: Some(offset), segment: named }
                if *offset == first_len as u64 && named.ends_with(".wal")),
            "{error:?}"
        );
        assert_eq!(
            wal::files_in(&image.path().join(wal::DIR)).unwrap(),
            log_before,
            "nothing is deleted"
        );
        assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nor changed");

        let report = SledStore::repair(image.path()).unwrap();
        assert_eq!(report.damaged_frame, Some(2));
        assert_eq!(report.replayed, 1);
        let lost: Vec<(u64, Option<Vec<u64>>)> = report
            .lost
            .iter()
            .map(|frame| {
                (
                    frame.frame,
                    frame
                        .events
                        .as_ref()
                        .map(|events| events.iter().map(|e| e.version.0).collect()),
                )
            })
            .collect();
        assert_eq!(
            lost,
            [
                (2, None),
                (3, Some(vec![3])),
                (4, Some(vec![4])),
                (5, Some(vec![5])),
            ]
        );
        let copy = report.copy.unwrap();
        assert!(copy.ends_with("wal.damaged-1"));
        let copied = std::fs::read(copy.join(segment.file_name().unwrap())).unwrap();
        assert_eq!(copied, bytes, "the damaged log is kept");
        let repaired = SledStore::open(image.path()).unwrap();
        assert_eq!(
            versions(&repaired.read_stream(&a, Version::EMPTY, 10).unwrap()),
            [1]
        );
        assert_eq!(repaired.head().unwrap(), Position(1));
        assert_consistent(&repaired);
        // Writing goes on from there; a second repair finds nothing to do.
        commit(&repaired, appends(&a, 6..=6)).unwrap();
        repaired.sync().unwrap();
        drop(repaired);
        let again = SledStore::repair(image.path()).unwrap();
        assert_eq!(again.copy, None);
        assert!(again.lost.is_empty());
    }

    #[test]
    fn acknowledged_commits_that_sled_never_wrote_are_replayed_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = quiet_store(dir.path());
        // A crash image: sled's files as the open made them durable (the layout, no commits)...
        let image = tempfile::tempdir().unwrap();
        copy_sled_files(dir.path(), image.path());
        let bare = tempfile::tempdir().unwrap();
        copy_sled_files(dir.path(), bare.path());
        let (a, b) = (stream("a"), stream("b"));
        commit(&store, appends(&a, 1..=3)).unwrap();
        let mut second = appends(&b, 4..=5);
        second.push(append(&a, event(6), true));
        second.push(snapshot_op(&a, 4, b"a at 4"));
        commit(&store, second).unwrap();
        commit(&store, appends(&a, 7..=7)).unwrap();
        // A refused commit (a duplicate key): no frame.
        commit(&store, appends(&a, 7..=7)).unwrap_err();
        store.sync().unwrap();
        // ...and the log as the syncs left it.
        copy_log(dir.path(), image.path());
        let torn = tempfile::tempdir().unwrap();
        copy_sled_files(image.path(), torn.path());
        copy_log(dir.path(), torn.path());
        drop(store);

        let recovered = SledStore::open(image.path()).unwrap();
        assert_eq!(
            versions(
                &recovered
                    .read_stream(&a, Version::EMPTY, usize::MAX)
                    .unwrap()
            ),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(
            versions(
                &recovered
                    .read_stream(&b, Version::EMPTY, usize::MAX)
                    .unwrap()
            ),
            [1, 2]
        );
        assert_eq!(recovered.head().unwrap(), Position(7));
        assert!(
            recovered.read_stream(&a, Version(3), 1).unwrap()[0].rejected,
            "the rejected flag is replayed"
        );
        assert_eq!(recovered.snapshot(&a).unwrap().unwrap().state, b"a at 4");
        assert_consistent(&recovered);
        // The replayed store goes on from there, and its frames are numbered after them.
        commit(&recovered, appends(&b, 8..=8)).unwrap();
        assert_eq!(applied_frame(settled(&recovered)).unwrap(), 4);
        drop(recovered);

        // Without the log the same image has none of it: the replay did the work.
        let lost = SledStore::open(bare.path()).unwrap();
        assert_eq!(lost.head().unwrap(), Position::START);
        drop(lost);

        // A last frame cut short (a crash inside its write, never acknowledged) is dropped;
        // the frames before it are replayed.
        let (_, segment) = wal::tests_last_segment(&torn.path().join(wal::DIR));
        let bytes = std::fs::read(&segment).unwrap();
        std::fs::write(&segment, &bytes[..bytes.len() - 5]).unwrap();
        let cut = SledStore::open(torn.path()).unwrap();
        assert_eq!(
            versions(&cut.read_stream(&a, Version::EMPTY, usize::MAX).unwrap()),
            [1, 2, 3, 4]
        );
        assert_eq!(cut.head().unwrap(), Position(6));
        assert_consistent(&cut);
    }

    #[test]
    fn commits_are_read_from_staging_until_a_sync_lets_them_into_sled() {
        let dir = tempfile::tempdir().unwrap();
        let store = quiet_store(dir.path());
        let (a, b) = (stream("a"), stream("b"));
        commit(&store, appends(&a, 1..=3)).unwrap();
        let mut second = appends(&b, 4..=5);
        second.push(append(&a, event(6), true));
        second.push(snapshot_op(&a, 4, b"a at 4"));
        commit(&store, second).unwrap();
        // Not synced: sled holds none of it, every read sees all of it.
        assert!(store.db.get(keys::list_key(&a)).unwrap().is_none());
        assert!(store.db.get(keys::WAL_KEY).unwrap().is_none());
        let seen = |store: &SledStore| {
            assert_eq!(
                versions(&store.read_stream(&a, Version::EMPTY, usize::MAX).unwrap()),
                [1, 2, 3, 4]
            );
            assert_eq!(store.stream_version(&b).unwrap(), Version(2));
            assert_eq!(store.read_all(Position(2), 10).unwrap().len(), 4);
            assert_eq!(store.snapshot(&a).unwrap().unwrap().state, b"a at 4");
            assert!(store
                .find_dedupe(&b, &event(5).dedupe_key)
                .unwrap()
                .is_some());
            assert_eq!(store.stream_is_empty(&b).unwrap(), Some(false));
            assert_consistent(store);
        };
        seen(&store);
        // Another commit, in staging only.
        commit(&store, appends(&a, 9..=9)).unwrap();
        assert_eq!(store.stream_version(&a).unwrap(), Version(5));
        assert!(store
            .db
            .scan_prefix(keys::session_prefix(keys::EVENT, &a))
            .next()
            .is_none());
        // A sync makes the frames durable; the next commit applies them first.
        store.sync().unwrap();
        assert!(store.db.get(keys::list_key(&a)).unwrap().is_none());
        commit(&store, appends(&b, 7..=7)).unwrap();
        assert_eq!(applied_frame(&store.db).unwrap(), 3);
        assert!(store.db.get(keys::list_key(&a)).unwrap().is_some());
        assert_eq!(
            store
                .db
                .scan_prefix(keys::session_prefix(keys::EVENT, &a))
                .count(),
            3,
            "a's runs of three commits, each under one key"
        );
        assert_eq!(store.stream_version(&a).unwrap(), Version(5));
        assert_eq!(store.stream_version(&b).unwrap(), Version(3));
        // The engine's sync threads apply what a sync made durable once they have answered.
        commit(&store, appends(&a, 8..=8)).unwrap();
        store.sync().unwrap();
        assert!(!store.staged.is_empty());
        store.after_sync().unwrap();
        assert!(store.staged.is_empty());
        assert_eq!(applied_frame(&store.db).unwrap(), 5);
        drop(store);
        // Closing applies and checkpoints everything: sled alone holds it.
        let reopened = SledStore::open(dir.path()).unwrap();
        assert_eq!(applied_frame(&reopened.db).unwrap(), 5);
        assert_eq!(reopened.head().unwrap(), Position(9));
        assert_consistent(&reopened);
    }

    #[test]
    fn a_frame_sled_holds_only_part_of_is_replayed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = quiet_store(dir.path());
        let image = tempfile::tempdir().unwrap();
        copy_sled_files(dir.path(), image.path());
        let (a, b) = (stream("a"), stream("b"));
        commit(&store, appends(&a, 1..=3)).unwrap();
        let mut second = appends(&b, 4..=5);
        second.extend(appends(&a, 6..=6));
        second.push(append(&a, event(7), true));
        commit(&store, second).unwrap();
        store.sync().unwrap();
        copy_log(dir.path(), image.path());
        drop(store);
        // A crash image in which sled got frame 1 and then the first half of frame 2's writes
        // (sled recovers a prefix of its writes, which may end inside a frame).
        {
            let db = open_sled(image.path(), &SledOptions::new(image.path())).unwrap();
            let frames = wal::recover(&image.path().join(wal::DIR), 0).unwrap();
            assert_eq!(frames.len(), 2);
            for write in wal::decode_payload(&frames[0].payload).unwrap() {
                if let wal::Write1::Insert(key, value) = write {
                    db.insert(key, value).unwrap();
                }
            }
            db.insert(keys::WAL_KEY, &1u64.to_be_bytes()).unwrap();
            let writes = wal::decode_payload(&frames[1].payload).unwrap();
            assert!(writes.len() >= 4, "{writes:?}");
            for write in &writes[..writes.len() / 2] {
                if let wal::Write1::Insert(key, value) = write {
                    db.insert(key, *value).unwrap();
                }
            }
            db.flush().unwrap();
        }
        let recovered = SledStore::open(image.path()).unwrap();
        assert_eq!(recovered.head().unwrap(), Position(7));
        let a_events = recovered
            .read_stream(&a, Version::EMPTY, usize::MAX)
            .unwrap();
        assert_eq!(versions(&a_events), [1, 2, 3, 4, 5]);
        assert!(a_events[4].rejected);
        assert_eq!(recovered.stream_version(&b).unwrap(), Version(2));
        assert_consistent(&recovered);
    }

    #[test]
    fn commits_nobody_syncs_reach_the_log_within_the_background_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = SledOptions::new(dir.path());
        options.flush_every_ms = Some(20);
        let store = SledStore::open_with(options).unwrap();
        let image = tempfile::tempdir().unwrap();
        copy_sled_files(dir.path(), image.path());
        let a = stream("a");
        commit(&store, appends(&a, 1..=3)).unwrap();
        // No sync: the maintenance thread writes and syncs the frames on its own.
        let wal = &store.wal;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while wal.pending_bytes() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log was never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The frames' `fdatasync` follows their write: wait for the log to hold them.
        while wal::recover(&dir.path().join(wal::DIR), 0)
            .unwrap()
            .is_empty()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the log holds no frame"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        copy_log(dir.path(), image.path());
        // And the maintenance thread applies them to sled after its sync.
        while !store.staged.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the frames were never applied"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(applied_frame(&store.db).unwrap(), 1);
        drop(store);
        let recovered = SledStore::open(image.path()).unwrap();
        assert_eq!(recovered.head().unwrap(), Position(3));
        assert_consistent(&recovered);
    }

    #[test]
    fn a_damaged_log_position_is_a_clear_error_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            commit(&store, appends(&stream("a"), 1..=1)).unwrap();
            store
                .raw_insert_for_tests(keys::WAL_KEY, &[1, 2, 3])
                .unwrap();
        }
        let error = SledStore::open(dir.path()).err().unwrap().to_string();
        assert!(
            error.contains("write-ahead log position (Mwal)") && error.contains("3 bytes, not 8"),
            "{error}"
        );
    }

    #[test]
    fn a_closed_store_leaves_no_log_and_sled_holds_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let a = stream("a");
        {
            let store = SledStore::open(dir.path()).unwrap();
            commit(&store, appends(&a, 1..=2)).unwrap();
            store.sync().unwrap();
            assert!(store.size_on_disk().unwrap() > 0);
            assert!(
                std::fs::read_dir(dir.path().join(wal::DIR))
                    .unwrap()
                    .count()
                    > 0
            );
            store.close().unwrap();
            // Closed: no more writes, reads go on, a second close does nothing.
            assert!(matches!(
                commit(&store, appends(&a, 3..=3)),
                Err(StoreError::Closed)
            ));
            assert!(matches!(store.sync(), Err(StoreError::Closed)));
            assert_eq!(store.stream_version(&a).unwrap(), Version(2));
            store.close().unwrap();
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join(wal::DIR))
                .unwrap()
                .count(),
            0
        );
        // The log is gone, so what the reopened store holds came from sled alone.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(layout(&store), keys::LAYOUT.to_be_bytes());
        assert_eq!(store.head().unwrap(), Position(2));
        assert_eq!(applied_frame(settled(&store)).unwrap(), 1);
    }

    /// Dropping a store only stops its background work: its log stays, and the next open
    /// replays it.
    #[test]
    fn a_dropped_store_keeps_its_log_for_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let a = stream("a");
        {
            let store = SledStore::open(dir.path()).unwrap();
            commit(&store, appends(&a, 1..=2)).unwrap();
            store.sync().unwrap();
        }
        assert!(
            std::fs::read_dir(dir.path().join(wal::DIR))
                .unwrap()
                .count()
                > 0
        );
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.head().unwrap(), Position(2));
        assert_eq!(store.stream_version(&a).unwrap(), Version(2));
        assert_consistent(&store);
    }

    #[test]
    fn a_log_that_fills_its_segments_is_checkpointed_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = SledOptions::new(dir.path());
        options.wal_segment_bytes = 4 * 1024;
        let store = SledStore::open_with(options).unwrap();
        for n in 0..200 {
            let session = stream(&format!("s{}", n % 7));
            commit(&store, appends(&session, [n])).unwrap();
            store.sync().unwrap();
        }
        // Checkpoints keep up: the log holds a few small segments, not every frame.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(dir.path().join(wal::DIR))
            .unwrap()
            .count()
            > 4
        {
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(problems(&store).is_empty());
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.head().unwrap(), Position(200));
        assert!(problems(&store).is_empty());
    }
}

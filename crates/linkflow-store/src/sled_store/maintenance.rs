//! Making sled durable (`Durable`) and the store's maintenance thread, which checkpoints sled
//! when the log retires a segment and writes the log when nobody syncs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{io_error, StoreError};
use crate::staged::{Staged, Wait};
use crate::wal::{self, sync_dir, Wal};

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
pub(super) struct Signal {
    pub(super) stop: bool,
    pub(super) checkpoint: bool,
    pub(super) write: bool,
}

pub(super) type SignalPair = Arc<(Mutex<Signal>, Condvar)>;

/// The store's maintenance thread: checkpoints when the log retires a segment, and writes and
/// syncs the log every `flush_every_ms` (or when [`wal::PENDING_LIMIT`] bytes wait), so that commits nobody syncs
/// (`Durability::Buffered`) reach the disk about as soon as sled's own background flush would
/// have written them.
pub(super) struct Maintenance {
    pub(super) signal: SignalPair,
    thread: Mutex<Option<JoinHandle<()>>>,
}

pub(super) fn raise(signal: &SignalPair, set: impl FnOnce(&mut Signal)) {
    let (lock, wake) = &**signal;
    set(&mut lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    wake.notify_one();
}

impl Maintenance {
    pub(super) fn start(
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
    pub(super) fn stop(&self) {
        raise(&self.signal, |signal| signal.stop = true);
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // A panic there has nothing left to clean up: closing checkpoints anyway.
            let _ = thread.join();
        }
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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

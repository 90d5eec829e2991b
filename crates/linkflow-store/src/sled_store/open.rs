//! Opening sled: the workaround for a snapshot sled never finished, the guard against sled's
//! panics, the layout check and the replay of the write-ahead log.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{io_error, CorruptRecord, StoreError};
use crate::keys;
use crate::wal::{self, sync_dir};

use super::SledOptions;

/// How long opening waits for a lock held by a store this process is closing (sled's
/// background jobs finishing), before the store is reported as locked by another process.
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens sled, setting aside a snapshot sled never finished writing when that is what stops it.
///
/// sled 0.34.7 writes a snapshot of its page table to `snap.<lsn>.generating`, syncs it and
/// renames it to `snap.<lsn>`: the rename is what makes it sled's. But its reader takes every
/// file whose name starts with `snap.` for a snapshot, the newest first, so a process killed
/// while writing one leaves a partial file that every later open reads as the newest snapshot
/// and refuses (`Corruption { at: None }`; sled issues #1527 and #1533; it stopped a 200-round
/// SIGKILL run of `crates/linkflow/tests/crash.rs` once). A snapshot is sled's cache of its log,
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

pub(super) fn open_sled_once(path: &Path, options: &SledOptions) -> Result<sled::Db, StoreError> {
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

/// Runs `read` (sled reading its files): its answer, or a `CorruptRecord` naming the store's
/// file if sled panicked (sled 0.34 panics on some damaged pages, and no bytes on disk may end
/// the process).
pub(super) fn guard_sled<T>(path: &Path, read: impl FnOnce() -> T) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(answer) => Ok(answer),
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
                detail: "layouts 1 to 5 kept refused events apart as parked events, layout 6 kept no version in a stream's head, layout 7 kept fixed-width index values, layout 8 length-prefixed head keys, layout 9 kept no index entries or counters, layout 10 one key per index entry; layout 11 keeps every event of a session in its stream, the stream's version in its head, every value in the compact form, heads in stream id order, and the engine's index entries (packed in runs) and counters",
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
pub(super) fn replay(db: &sled::Db, dir: &Path) -> Result<(), StoreError> {
    replay_frames(db, wal::recover(dir, applied_frame(db)?)?)
}

//! `SledStore::repair`: what to do with a store whose write-ahead log is damaged.
//!
//! Opening such a store fails with [`StoreError::CorruptLog`] and changes nothing. A repair
//! keeps a copy of the log's files beside it, applies the frames before the damage, and says
//! exactly what it could not recover: the frame that is missing or unreadable, and every
//! intact frame after it, with the events each one held (their writes cannot be applied
//! without the missing frame's). Then it makes sled durable and empties the log, so the store
//! opens again at the last frame before the damage.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use linkflow_core::{Position, SessionId, Version};
use serde::Serialize;

use crate::error::{io_error, StoreError};
use crate::keys;
use crate::sled_store::{
    applied_frame, check_layout, decode_event_value, open_sled, replay_frames, Durable, SledOptions,
};
use crate::wal;

/// What a repair found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    /// Where the damaged log's files were copied (`None`: the log was not damaged, nothing done).
    pub copy: Option<PathBuf>,
    /// The first frame the log did not hold whole.
    pub damaged_frame: Option<u64>,
    /// Frames before the damage applied to sled by the repair.
    pub replayed: u64,
    /// What could not be recovered, frame by frame.
    pub lost: Vec<LostFrame>,
}

/// A frame of the log the repair could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostFrame {
    /// Its number.
    pub frame: u64,
    /// The events it held, when it is intact; `None` when it is the unreadable one.
    pub events: Option<Vec<LostEvent>>,
}

/// An acknowledged event that a repair could not recover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostEvent {
    /// Its stream.
    pub stream: SessionId,
    /// Its version there.
    pub version: Version,
    /// Its position.
    pub position: Position,
}

/// Repairs the store in `path` (closed: no other process may have it open).
pub(crate) fn repair(path: &Path) -> Result<RepairReport, StoreError> {
    let options = SledOptions::new(path);
    let db = open_sled(path, &options)?;
    check_layout(&db, path)?;
    let dir = path.join(wal::DIR);
    let read = wal::read_log(&dir, applied_frame(&db)?)?;
    let Some(damage) = read.damage else {
        return Ok(RepairReport {
            copy: None,
            damaged_frame: None,
            replayed: 0,
            lost: Vec::new(),
        });
    };
    let copy = keep_a_copy(path, &dir)?;
    let replayed = read.frames.len() as u64;
    replay_frames(&db, read.frames)?;
    let mut lost = Vec::new();
    let last = read.stranded.last().map_or(damage.frame, |frame| frame.seq);
    let mut stranded = read.stranded.into_iter().peekable();
    for seq in damage.frame..=last {
        let events = match stranded.next_if(|frame| frame.seq == seq) {
            Some(frame) => Some(events_of(&frame.payload)?),
            None => None,
        };
        lost.push(LostFrame { frame: seq, events });
    }
    let db_path = path.join("db");
    let durable = Durable {
        db: db.clone(),
        db_file: Arc::new(File::open(&db_path).map_err(io_error(&db_path))?),
        path: path.to_path_buf(),
    };
    durable.sync()?;
    for file in wal::files_in(&dir)? {
        std::fs::remove_file(&file).map_err(io_error(&file))?;
    }
    wal::sync_dir(&dir)?;
    Ok(RepairReport {
        copy: Some(copy),
        damaged_frame: Some(damage.frame),
        replayed,
        lost,
    })
}

/// Copies every file of the log to `wal.damaged-<n>` beside it (the first free `n`) and syncs
/// the copies, before the repair changes anything.
fn keep_a_copy(path: &Path, dir: &Path) -> Result<PathBuf, StoreError> {
    let mut n = 1;
    let copy = loop {
        let candidate = path.join(format!("{}.damaged-{n}", wal::DIR));
        if !candidate.exists() {
            break candidate;
        }
        n += 1;
    };
    std::fs::create_dir_all(&copy).map_err(io_error(&copy))?;
    for file in wal::files_in(dir)? {
        let Some(name) = file.file_name() else {
            continue;
        };
        let target = copy.join(name);
        std::fs::copy(&file, &target).map_err(io_error(&target))?;
        File::open(&target)
            .and_then(|copied| copied.sync_all())
            .map_err(io_error(&target))?;
    }
    wal::sync_dir(&copy)?;
    wal::sync_dir(path)?;
    Ok(copy)
}

/// The events a frame's writes hold (its `S` values).
fn events_of(payload: &[u8]) -> Result<Vec<LostEvent>, StoreError> {
    let mut events = Vec::new();
    let writes = wal::decode_payload(payload)
        .map_err(|reason| crate::CorruptRecord::new("write-ahead log frame", reason))?;
    for write in writes {
        if let wal::Write1::Insert(key, value) = write {
            if key.first() == Some(&keys::EVENT) {
                for event in decode_event_value(key, value, 0)? {
                    events.push(LostEvent {
                        stream: event.stream,
                        version: event.version,
                        position: event.position,
                    });
                }
            }
        }
    }
    Ok(events)
}

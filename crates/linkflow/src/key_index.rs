//! Where each live data key is in the key file, found by its slot name without holding every
//! name in memory: an open-addressing hash table in a file of its own beside the key file
//! (`keys.index`), read and written a 32-byte entry at a time through the page cache.
//!
//! Nothing in it is secret (a slot name is a keyed hash, a number a position) and nothing in
//! it is relied on without a check: every lookup reads the key slot it points to, which names
//! its key, so a stale entry is a miss, never the wrong key. It is derived from the key file
//! and rebuilt from it whenever it cannot be trusted: it is trusted at open only when the last
//! process closed it cleanly (synced, its header saying so) at the key file's current length;
//! the first change after an open marks it in use again (synced) before it is made. A damaged
//! entry is found by its checksum and the table rebuilt.
//!
//! ```text
//! header = magic(8) u64(capacity) u64(key file slots covered) u8(closed cleanly) zeros(35)
//!          crc32(4)                                                           -- 64 bytes
//! entry  = name(16) u64(slot number) u8(1 live | 2 removed: name and number zeros) zeros(3)
//!          crc32(4)                                                           -- 32 bytes
//! ```
//!
//! An all-zero entry is empty and ends a probe; a removed one does not. The table is kept at
//! most half full and doubled (rebuilt) past that.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::privacy::{KeyError, SlotId};

const MAGIC: &[u8; 8] = b"LFKIDX1\n";
const HEADER_BYTES: u64 = 64;
const ENTRY_BYTES: usize = 32;
/// The smallest table, in entries.
pub(crate) const MIN_CAPACITY: u64 = 1 << 12;
const LIVE: u8 = 1;
const REMOVED: u8 = 2;

/// The slot index of one key file.
pub(crate) struct SlotIndex {
    path: PathBuf,
    file: File,
    /// Entries in the table: a power of two.
    capacity: u64,
    /// Entries live or removed (what makes probes longer).
    occupied: u64,
    /// Whether the header says closed cleanly (then the first change marks it in use).
    clean: bool,
}

/// What a lookup found.
pub(crate) enum Found {
    /// The entry for the name, at this table position, naming this slot.
    At { position: u64, number: u64 },
    /// No entry: where an insert would go (the first removed or empty entry on the probe),
    /// and whether that entry is empty (an insert there fills one more).
    Absent { free: u64, empty: bool },
}

impl SlotIndex {
    /// The index file beside the key file `key_file`.
    pub(crate) fn path_for(key_file: &Path) -> PathBuf {
        key_file.with_extension("index")
    }

    /// Opens the index at `path` if it can be trusted for a key file of `slots` slots: it was
    /// closed cleanly at that length. `None` otherwise (missing, damaged, left open by a process
    /// that stopped, or of another length): the caller rebuilds it.
    pub(crate) fn open_trusted(path: &Path, slots: u64) -> Result<Option<SlotIndex>, KeyError> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io(path, error)),
        };
        let mut header = [0u8; HEADER_BYTES as usize];
        if file.read_exact_at(&mut header, 0).is_err() {
            return Ok(None);
        }
        let crc = u32::from_be_bytes(header[60..64].try_into().expect("4 bytes"));
        let capacity = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
        let covered = u64::from_be_bytes(header[16..24].try_into().expect("8 bytes"));
        let length = file.metadata().map_err(|error| io(path, error))?.len();
        let trusted = &header[..8] == MAGIC
            && crc32fast::hash(&header[..60]) == crc
            && header[24] == 1
            && covered == slots
            && capacity >= MIN_CAPACITY
            && capacity.is_power_of_two()
            && length == HEADER_BYTES + capacity * ENTRY_BYTES as u64;
        if !trusted {
            return Ok(None);
        }
        let occupied = u64::from_be_bytes(header[25..33].try_into().expect("8 bytes"));
        Ok(Some(SlotIndex {
            path: path.to_owned(),
            file,
            capacity,
            occupied,
            clean: true,
        }))
    }

    /// A new, empty table of `capacity` entries (a power of two, at least [`MIN_CAPACITY`]),
    /// written beside `path` and renamed over it, so that a process holding the old one writes
    /// only to a file no longer named.
    pub(crate) fn create(path: &Path, capacity: u64) -> Result<SlotIndex, KeyError> {
        let capacity = capacity.max(MIN_CAPACITY).next_power_of_two();
        let building = path.with_extension("index-building");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&building)
            .map_err(|error| io(&building, error))?;
        file.set_len(HEADER_BYTES + capacity * ENTRY_BYTES as u64)
            .map_err(|error| io(&building, error))?;
        std::fs::rename(&building, path).map_err(|error| io(path, error))?;
        let mut index = SlotIndex {
            path: path.to_owned(),
            file,
            capacity,
            occupied: 0,
            clean: false,
        };
        index.write_header(0, false)?;
        Ok(index)
    }

    /// The capacity a table holding `live` entries is built with.
    pub(crate) fn capacity_for(live: u64) -> u64 {
        (live.saturating_mul(4))
            .max(MIN_CAPACITY)
            .next_power_of_two()
    }

    /// Whether one more entry would make the table more than half full.
    pub(crate) fn is_full(&self) -> bool {
        (self.occupied + 1) * 2 > self.capacity
    }

    /// The entry named `name`, or where it would go.
    pub(crate) fn find(&self, name: &SlotId) -> Result<Found, KeyError> {
        let mask = self.capacity - 1;
        let mut position = u64::from_be_bytes(name[..8].try_into().expect("8 bytes")) & mask;
        let mut free = None;
        for _ in 0..self.capacity {
            let entry = self.read_entry(position)?;
            match entry {
                Entry::Empty => {
                    return Ok(Found::Absent {
                        free: free.unwrap_or(position),
                        empty: free.is_none(),
                    })
                }
                Entry::Removed => {
                    free.get_or_insert(position);
                }
                Entry::Live(entry_name, number) if entry_name == *name => {
                    return Ok(Found::At { position, number });
                }
                Entry::Live(..) => {}
            }
            position = (position + 1) & mask;
        }
        match free {
            Some(free) => Ok(Found::Absent { free, empty: false }),
            None => Err(self.damaged("the table has no empty entry")),
        }
    }

    /// Writes the entry `name` -> `number` at `position` (a [`Found::Absent`]'s `free`, and
    /// whether it was `empty`; or a [`Found::At`]'s position, not empty).
    pub(crate) fn insert(
        &mut self,
        position: u64,
        empty: bool,
        name: &SlotId,
        number: u64,
    ) -> Result<(), KeyError> {
        self.write_entry(position, &entry_bytes(name, number, LIVE))?;
        if empty {
            self.occupied += 1;
        }
        Ok(())
    }

    /// Marks the entry at `position` removed. It keeps neither the name nor the number: a
    /// destroyed key's name is left in no file.
    pub(crate) fn remove(&mut self, position: u64) -> Result<(), KeyError> {
        self.write_entry(position, &entry_bytes(&[0; 16], 0, REMOVED))
    }

    /// Syncs the table and marks it closed cleanly at `slots` key file slots.
    pub(crate) fn close(&mut self, slots: u64) -> Result<(), KeyError> {
        self.file
            .sync_data()
            .map_err(|error| io(&self.path, error))?;
        self.write_header(slots, true)?;
        self.file
            .sync_data()
            .map_err(|error| io(&self.path, error))?;
        self.clean = true;
        Ok(())
    }

    fn write_entry(&mut self, position: u64, bytes: &[u8; ENTRY_BYTES]) -> Result<(), KeyError> {
        if self.clean {
            // In use from now on: a process stopping before the next close leaves a table the
            // next open rebuilds.
            self.write_header(0, false)?;
            self.file
                .sync_data()
                .map_err(|error| io(&self.path, error))?;
            self.clean = false;
        }
        self.file
            .write_all_at(bytes, HEADER_BYTES + position * ENTRY_BYTES as u64)
            .map_err(|error| io(&self.path, error))
    }

    fn write_header(&mut self, covered: u64, clean: bool) -> Result<(), KeyError> {
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&self.capacity.to_be_bytes());
        header[16..24].copy_from_slice(&covered.to_be_bytes());
        header[24] = u8::from(clean);
        header[25..33].copy_from_slice(&self.occupied.to_be_bytes());
        let crc = crc32fast::hash(&header[..60]);
        header[60..64].copy_from_slice(&crc.to_be_bytes());
        self.file
            .write_all_at(&header, 0)
            .map_err(|error| io(&self.path, error))
    }

    fn read_entry(&self, position: u64) -> Result<Entry, KeyError> {
        let mut bytes = [0u8; ENTRY_BYTES];
        self.file
            .read_exact_at(&mut bytes, HEADER_BYTES + position * ENTRY_BYTES as u64)
            .map_err(|error| io(&self.path, error))?;
        if bytes == [0u8; ENTRY_BYTES] {
            return Ok(Entry::Empty);
        }
        let crc = u32::from_be_bytes(bytes[28..32].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[..28]) != crc || bytes[25..28] != [0, 0, 0] {
            return Err(self.damaged(&format!("entry {position} does not check out")));
        }
        let name: SlotId = bytes[..16].try_into().expect("16 bytes");
        let number = u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes"));
        match bytes[24] {
            LIVE => Ok(Entry::Live(name, number)),
            REMOVED => Ok(Entry::Removed),
            other => Err(self.damaged(&format!("entry {position} has state {other}"))),
        }
    }

    fn damaged(&self, reason: &str) -> KeyError {
        KeyError::Damaged {
            path: self.path.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Damages the entry at `position` (tests: the rebuild it leads to).
    #[cfg(test)]
    pub(crate) fn damage(&mut self, position: u64) {
        self.file
            .write_all_at(&[0xff], HEADER_BYTES + position * ENTRY_BYTES as u64 + 3)
            .unwrap();
    }

    /// The position the probe for `name` starts at (tests).
    #[cfg(test)]
    pub(crate) fn home(&self, name: &SlotId) -> u64 {
        u64::from_be_bytes(name[..8].try_into().expect("8 bytes")) & (self.capacity - 1)
    }

    /// Entries in the table (tests).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }
}

enum Entry {
    Empty,
    Live(SlotId, u64),
    Removed,
}

fn entry_bytes(name: &SlotId, number: u64, state: u8) -> [u8; ENTRY_BYTES] {
    let mut bytes = [0u8; ENTRY_BYTES];
    bytes[..16].copy_from_slice(name);
    bytes[16..24].copy_from_slice(&number.to_be_bytes());
    bytes[24] = state;
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn io(path: &Path, error: std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.to_owned(),
        error,
    }
}

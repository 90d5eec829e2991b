//! A commit on sled: the heads it reads for its checks, and the frame it writes.

use std::collections::HashMap;

use linkflow_core::{SessionId, Version};

use crate::check::{check_commit, CheckedEvent, CheckedSnapshot, IndexWrites, StoredLog};
use crate::dedupe_list::{DedupeList, Target, LIST_MAX};
use crate::error::{CommitError, StoreError};
use crate::keys::{self, Run};
use crate::record::{
    encode_compacted, encode_snapshot, pack_events, CompactedEvent, DedupeKey, LogRecord, Snapshot,
    MAX_PACKED_BYTES,
};
use crate::staged::Wait;
use crate::store::{Commit, EventStore, Receipt};
use crate::wal::{self, Payload};

use super::maintenance::raise;
use super::{decode_log_value, SledStore};
use std::ops::Bound;

/// A dedupe entry a commit adds.
struct NewEntry {
    key: DedupeKey,
    target: Target,
}

/// A stream's `K` value as read: its decoded dedupe list and the raw value (for its snapshot,
/// which a commit without a new snapshot carries over).
pub(super) struct Head {
    pub(super) list: DedupeList,
    pub(super) value: sled::IVec,
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

    fn stream_compacted(&mut self, stream: &SessionId) -> Result<Version, StoreError> {
        Ok(self
            .list(stream)?
            .map_or(Version::EMPTY, |list| list.compacted))
    }

    fn holds_key(&mut self, stream: &SessionId, key: &DedupeKey) -> Result<bool, StoreError> {
        let store = self.store;
        let list = self.list(stream)?;
        Ok(store.lookup(stream, list, key)?.is_some())
    }
}

impl SledStore {
    /// Checks `commit` against the heads it touches, writes it as one frame of the log
    /// (staged, where reads see it), and answers its receipt.
    pub(super) fn commit_unguarded(&self, commit: Commit) -> Result<Receipt, CommitError> {
        let mut writer = self.writer();
        // Fail-stop: after the disk failed, nothing more is committed (or acknowledged); nor
        // after the store was closed (checked under the writer lock `close` takes).
        self.health()?;
        // What earlier syncs made durable and nobody applied yet (the engine's sync threads
        // usually have, after answering) goes to sled first, unless another thread is at it: a
        // store used without `after_sync` keeps only the last commit or two staged.
        self.staged.apply(self.wal.durable_seq(), Wait::No)?;
        let mut reads = SledReads {
            store: self,
            heads: HashMap::new(),
        };
        let checked = check_commit(commit, writer.head, &mut reads)?;
        // The payload's buffer is reused from commit to commit: a commit of 1,000 events
        // writes about a megabyte, and a fresh buffer each time left the allocator holding
        // tens of megabytes it had grown into.
        let mut frame = self.staged.take_payload();
        let entries = write_events(&mut frame, &checked.events);
        write_heads(&mut frame, &mut reads, entries, &checked.snapshots)?;
        self.write_index(&mut frame, &checked.index)?;
        self.stage(frame)?;
        writer.head = checked.receipt.head;
        Ok(checked.receipt)
    }

    /// [`EventStore::compact`] on sled: one frame of the log removes the stream's `S` values
    /// and writes its records again compacted, packed as [`MAX_PACKED_BYTES`] allows, with
    /// the head holding the new snapshot (its dedupe entries, in the head or `D` keys, stay).
    pub(super) fn compact_unguarded(
        &self,
        stream: &SessionId,
        snapshot: Snapshot,
    ) -> Result<u64, CommitError> {
        let _writer = self.writer();
        self.health()?;
        self.staged.apply(self.wal.durable_seq(), Wait::No)?;
        let head = self.head_value(stream)?;
        let actual = head
            .as_ref()
            .map_or(Version::EMPTY, |head| head.list.version);
        if actual != snapshot.version || actual == Version::EMPTY {
            return Err(CommitError::Conflict {
                stream: stream.clone(),
                expected: snapshot.version,
                actual,
            });
        }
        let mut list = head.expect("a stream at a version has a head").list;
        if snapshot.compacted != snapshot.version {
            return Err(CommitError::CompactionConflict {
                stream: stream.clone(),
                expected: snapshot.compacted,
                actual: snapshot.version,
            });
        }
        list.compacted = snapshot.version;
        let record = encode_snapshot(&snapshot);
        if record.len() > crate::MAX_RECORD_BYTES {
            return Err(CommitError::TooLarge {
                stream: stream.clone(),
                bytes: record.len(),
                limit: crate::MAX_RECORD_BYTES,
            });
        }
        let mut old_keys = Vec::new();
        let mut stubs: Vec<(Version, Vec<u8>)> = Vec::new();
        let mut compacted = 0u64;
        for entry in self.staged.scan((
            Bound::Included(keys::event_key(stream, Version::EMPTY)),
            Bound::Included(keys::event_key(stream, Version(u64::MAX))),
        )) {
            let (key, value) = entry?;
            for record in decode_log_value(&key, &value, 0)? {
                let stub = match record {
                    LogRecord::Event(event) => {
                        compacted += 1;
                        CompactedEvent::of(&event)
                    }
                    LogRecord::Compacted(stub) => stub,
                };
                stubs.push((stub.version, encode_compacted(&stub)));
            }
            old_keys.push(key);
        }
        let mut frame = self.staged.take_payload();
        if compacted > 0 {
            let mut new_keys = Vec::new();
            let mut pack: Vec<&(Version, Vec<u8>)> = Vec::new();
            let mut put = |pack: &mut Vec<&(Version, Vec<u8>)>, frame: &mut Payload| {
                let Some(first) = pack.first() else {
                    return;
                };
                let key = keys::event_key(stream, first.0);
                match pack.as_slice() {
                    [one] => frame.insert(&key, &one.1),
                    _ => {
                        let records: Vec<&[u8]> = pack.iter().map(|stub| &stub.1[..]).collect();
                        frame.insert(&key, &pack_events(&records));
                    }
                }
                new_keys.push(key);
                pack.clear();
            };
            for stub in &stubs {
                let bytes: usize = pack.iter().map(|stub| stub.1.len()).sum();
                if bytes + stub.1.len() > MAX_PACKED_BYTES {
                    put(&mut pack, &mut frame);
                }
                pack.push(stub);
            }
            put(&mut pack, &mut frame);
            for key in old_keys {
                if !new_keys.iter().any(|new| new[..] == key[..]) {
                    frame.remove(&key);
                }
            }
        }
        frame.insert(&keys::list_key(stream), &list.encode(Some(&record)));
        self.stage(frame)?;
        Ok(compacted)
    }

    /// Writes a commit's index entries and counters: each counter's new value from the one
    /// reads see (the staged frames over sled), under the writer lock the caller holds.
    fn write_index(&self, frame: &mut Payload, index: &IndexWrites) -> Result<(), StoreError> {
        super::runs::write_entries(&self.staged, frame, &index.entries)?;
        for (cell, deltas) in &index.cells {
            let tagged = keys::tagged(keys::COUNTER, cell);
            let old = match self.staged.get(&tagged)? {
                Some(value) => keys::parse_cell(cell, &value)?,
                None => Vec::new(),
            };
            let merged = merge_cell(cell, old, deltas)?;
            if merged.is_empty() {
                frame.remove(&tagged);
            } else {
                frame.insert(&tagged, &keys::cell_value(&merged));
            }
        }
        Ok(())
    }

    /// Stages a commit's frame (where reads see it) and hands it to the log: nothing applies a
    /// frame before a sync of the log covers it. An empty commit writes no frame.
    fn stage(&self, frame: Payload) -> Result<(), StoreError> {
        if frame.as_bytes().is_empty() {
            self.staged.give_back(frame);
            return Ok(());
        }
        let seq = self.wal.next_seq();
        let payload = self.staged.add(seq, frame)?;
        if self.wal.append(seq, &payload) > wal::PENDING_LIMIT {
            raise(&self.maintenance.signal, |signal| signal.write = true);
        }
        Ok(())
    }
}

/// A cell's counters after a commit's deltas (both in name order): sums, counters at zero
/// left out.
fn merge_cell(
    cell: &[u8],
    old: Vec<(Vec<u8>, i64)>,
    deltas: &[(Vec<u8>, i64)],
) -> Result<Vec<(Vec<u8>, i64)>, StoreError> {
    let mut merged = Vec::with_capacity(old.len() + deltas.len());
    let mut old = old.into_iter().peekable();
    let mut deltas = deltas.iter().peekable();
    loop {
        let next = match (old.peek(), deltas.peek()) {
            (None, None) => break,
            (Some(_), None) => old.next(),
            (None, Some(_)) => deltas.next().cloned(),
            (Some((name, _)), Some((delta_name, _))) => match name.cmp(delta_name) {
                std::cmp::Ordering::Less => old.next(),
                std::cmp::Ordering::Greater => deltas.next().cloned(),
                std::cmp::Ordering::Equal => {
                    let (name, value) = old.next().expect("peeked");
                    let (_, delta) = deltas.next().expect("peeked");
                    let sum = value.checked_add(*delta).ok_or_else(|| {
                        StoreError::Internal(format!(
                            "counter {:?} of cell {:?} overflows 64 bits",
                            String::from_utf8_lossy(&name),
                            String::from_utf8_lossy(cell)
                        ))
                    })?;
                    Some((name, sum))
                }
            },
        };
        if let Some((name, value)) = next {
            if value != 0 {
                merged.push((name, value));
            }
        }
    }
    Ok(merged)
}

/// A commit's dedupe entries, stream by stream in order of first appearance.
type Entries = Vec<(SessionId, Vec<NewEntry>)>;

/// Writes a commit's events: one run per stream of consecutive positions, its events under as
/// few `S` keys as [`MAX_PACKED_BYTES`] allows, and one global index key for the commit.
/// Returns the dedupe entries the events add.
fn write_events(frame: &mut Payload, events: &[CheckedEvent]) -> Entries {
    let mut entries: Entries = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    let mut pack: Vec<&CheckedEvent> = Vec::new();
    for event in events {
        let extends = pack.last().is_some_and(|last| {
            last.stream == event.stream && last.version.next() == event.version
        }) && pack.iter().map(|event| event.record.len()).sum::<usize>()
            + event.record.len()
            <= MAX_PACKED_BYTES;
        if !extends {
            put_pack(frame, &mut pack);
        }
        pack.push(event);
        let entry = NewEntry {
            key: event.dedupe_key,
            target: Target {
                version: event.version,
                position: event.position,
            },
        };
        match entries.iter_mut().find(|(known, _)| *known == event.stream) {
            Some((_, list)) => list.push(entry),
            None => entries.push((event.stream.clone(), vec![entry])),
        }
        match runs.last_mut() {
            Some(run) if run.stream == event.stream => run.events += 1,
            _ => runs.push(Run {
                stream: event.stream.clone(),
                first_version: event.version,
                events: 1,
            }),
        }
    }
    put_pack(frame, &mut pack);
    if let Some(first) = events.first() {
        frame.insert(&keys::global_key(first.position), &keys::runs_value(&runs));
    }
    entries
}

/// Writes the events of `pack` (consecutive versions of one stream) under the first one's key,
/// and empties it.
fn put_pack(frame: &mut Payload, pack: &mut Vec<&CheckedEvent>) {
    match pack.as_slice() {
        [] => {}
        [event] => frame.insert(
            &keys::event_key(&event.stream, event.version),
            &event.record,
        ),
        [first, ..] => {
            let records: Vec<&[u8]> = pack.iter().map(|event| &*event.record).collect();
            frame.insert(
                &keys::event_key(&first.stream, first.version),
                &pack_events(&records),
            );
        }
    }
    pack.clear();
}

/// Writes the head of every stream the commit touches, once: its version, its dedupe entries
/// (spilled to `D` keys past [`LIST_MAX`]) and its snapshot (the commit's, else the one it
/// held).
fn write_heads(
    frame: &mut Payload,
    reads: &mut SledReads<'_>,
    mut entries: Entries,
    snapshots: &[CheckedSnapshot],
) -> Result<(), StoreError> {
    let mut new_snapshots: HashMap<&SessionId, &[u8]> = HashMap::new();
    for snapshot in snapshots {
        if !entries.iter().any(|(known, _)| *known == snapshot.stream) {
            entries.push((snapshot.stream.clone(), Vec::new()));
        }
        new_snapshots.insert(&snapshot.stream, &snapshot.record);
    }
    for (stream, new_entries) in entries {
        let (mut list, old_value) = match reads.take_head(&stream)? {
            Some(Head { list, value }) => (list, Some(value)),
            None => (DedupeList::default(), None),
        };
        let snapshot = match (new_snapshots.get(&stream), &old_value) {
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
                frame.insert(
                    &keys::dedupe_key(&stream, &key),
                    &keys::dedupe_value(&target.hit(&stream)),
                );
            }
            list.spilled = true;
        }
        frame.insert(&keys::list_key(&stream), &list.encode(snapshot));
    }
    Ok(())
}

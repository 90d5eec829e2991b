//! Commits the write-ahead log holds and sled does not yet, and the reads that see them.
//!
//! A commit of a store with a write-ahead log does not touch sled: its writes become one frame
//! of the log and are **staged** here, where every read of the store finds them (a key's
//! latest staged value, or its removal, hides sled's). A frame is applied to sled only once a
//! sync has made it durable, then `Mwal` says the last frame applied. The frames of a small
//! group go to sled as plain inserts and removes: a `sled::Batch` seals sled's log buffer before
//! and after it, and each seal is a job for sled's I/O pool, whose queue wakes every idle pool
//! thread. Thousands of writes (a bulk commit) go as one batch, whose seals cost nothing next
//! to them. The order is what makes plain writes safe: after a crash sled holds a prefix of its
//! writes, which can end inside a frame, but every frame it holds any part of is durable in
//! the log and comes after the frame `Mwal` names, so opening replays it whole (writes are
//! whole values, so replaying one twice changes nothing).
//!
//! Frames are applied in order by one thread at a time (`applying`): the engine's sync thread
//! after answering the callers of a sync (`EventStore::after_sync`), the writer before a
//! commit when no one else is at it, the maintenance thread after its background sync and
//! before a checkpoint, and the store when it closes.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sled::IVec;

use crate::error::{CorruptRecord, StoreError};
use crate::keys;
use crate::wal::{writes_at, Payload, WriteAt};

/// A staged frame: its number and its writes (and how many).
struct Frame {
    seq: u64,
    payload: Arc<Payload>,
    writes: usize,
}

/// From this many writes on, the frames applied together go to sled as one `sled::Batch`.
const BATCH_WRITES: usize = 1024;
/// From this many bytes of frames on, too: a bulk commit of 1,000 events is a few hundred
/// writes since index entries are packed in runs, but about half a megabyte; a group of
/// single-event writers is tens of kilobytes.
const BATCH_BYTES: usize = 128 * 1024;

/// A key's latest staged write: the frame and where its value is in the frame's payload
/// (`None`: removed).
#[derive(Clone)]
struct Latest {
    seq: u64,
    value: Option<std::ops::Range<usize>>,
}

#[derive(Default)]
struct State {
    /// Staged frames, in order and without gaps.
    frames: VecDeque<Frame>,
    /// Each staged key's latest write. Every frame it names is in `frames`.
    latest: BTreeMap<Vec<u8>, Latest>,
    /// A payload buffer an applied frame gave back, for the next commit.
    spare: Option<Payload>,
}

impl State {
    fn value(&self, latest: &Latest) -> Option<IVec> {
        let range = latest.value.clone()?;
        let first = self.frames.front()?.seq;
        let frame = self
            .frames
            .get(usize::try_from(latest.seq.checked_sub(first)?).ok()?)?;
        Some(IVec::from(&frame.payload.as_bytes()[range]))
    }

    /// The staged writes in `bounds`, in key order.
    fn range(&self, bounds: &Bounds) -> Vec<(IVec, Option<IVec>)> {
        if is_empty(bounds) {
            return Vec::new();
        }
        self.latest
            .range::<Vec<u8>, _>((bounds.0.as_ref(), bounds.1.as_ref()))
            .map(|(key, latest)| (IVec::from(key.as_slice()), self.value(latest)))
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state whole before anything that can panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A key range.
pub(crate) type Bounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// True when no key is in `bounds` (which `BTreeMap::range` would panic on for some).
fn is_empty(bounds: &Bounds) -> bool {
    use Bound::{Excluded, Included, Unbounded};
    match bounds {
        (Unbounded, _) | (_, Unbounded) => false,
        (Included(start), Included(end)) => start > end,
        (Included(start), Excluded(end))
        | (Excluded(start), Included(end))
        | (Excluded(start), Excluded(end)) => start >= end,
    }
}

/// The keys that start with `prefix`.
pub(crate) fn prefix_bounds(prefix: &[u8]) -> Bounds {
    // The first key after every key with the prefix: the prefix without its trailing 0xff
    // bytes, its last byte plus one.
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xff) {
        end.pop();
    }
    let end = match end.last_mut() {
        Some(last) => {
            *last += 1;
            Bound::Excluded(end)
        }
        None => Bound::Unbounded,
    };
    (Bound::Included(prefix.to_vec()), end)
}

/// Whether [`Staged::apply`] waits for another thread that is applying.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wait {
    /// Wait, then apply what is left (a checkpoint or a close needs every durable frame
    /// applied when the call returns).
    Yes,
    /// Return at once: the other thread applies them.
    No,
}

/// sled's tree with the staged commits in front of it.
pub(crate) struct Staged {
    db: sled::Db,
    state: Mutex<State>,
    /// Held while frames are applied, so that they are applied once and in order.
    applying: Mutex<()>,
    /// How many frames are staged: reads skip the lock when none are.
    frames: AtomicUsize,
}

impl Staged {
    pub(crate) fn new(db: sled::Db) -> Self {
        Staged {
            db,
            state: Mutex::default(),
            applying: Mutex::new(()),
            frames: AtomicUsize::new(0),
        }
    }

    fn any(&self) -> bool {
        self.frames.load(Ordering::Acquire) > 0
    }

    /// An empty payload buffer for a commit's writes.
    pub(crate) fn take_payload(&self) -> Payload {
        lock(&self.state).spare.take().unwrap_or_default()
    }

    /// Gives back a payload buffer a commit did not use.
    pub(crate) fn give_back(&self, mut payload: Payload) {
        payload.clear();
        lock(&self.state).spare = Some(payload);
    }

    /// Stages frame `seq` (the one after the last staged or applied) and its writes.
    pub(crate) fn add(&self, seq: u64, payload: Payload) -> Result<Arc<Payload>, StoreError> {
        // Checked whole first, so that a bad payload stages nothing.
        let mut count = 0;
        for write in writes(seq, &payload) {
            write?;
            count += 1;
        }
        let mut state = lock(&self.state);
        debug_assert!(state.frames.back().is_none_or(|last| last.seq + 1 == seq));
        for WriteAt { key, value } in writes(seq, &payload).flatten() {
            let key = &payload.as_bytes()[key];
            match state.latest.get_mut(key) {
                Some(latest) => *latest = Latest { seq, value },
                None => {
                    state.latest.insert(key.to_vec(), Latest { seq, value });
                }
            }
        }
        let payload = Arc::new(payload);
        state.frames.push_back(Frame {
            seq,
            payload: Arc::clone(&payload),
            writes: count,
        });
        self.frames.fetch_add(1, Ordering::Release);
        Ok(payload)
    }

    /// Applies every staged frame up to `durable` (the last frame a sync made durable) to
    /// sled, in order, then writes `Mwal`, then unstages them. A failure leaves them staged
    /// (reads still see them, the next call applies them again).
    pub(crate) fn apply(&self, durable: u64, wait: Wait) -> Result<(), StoreError> {
        if !self.any() {
            return Ok(());
        }
        let _one = match wait {
            Wait::Yes => lock(&self.applying),
            Wait::No => match self.applying.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
            },
        };
        let frames: Vec<(u64, Arc<Payload>, usize)> = lock(&self.state)
            .frames
            .iter()
            .take_while(|frame| frame.seq <= durable)
            .map(|frame| (frame.seq, Arc::clone(&frame.payload), frame.writes))
            .collect();
        let Some(&(last, _, _)) = frames.last() else {
            return Ok(());
        };
        self.write_to_sled(&frames, last)?;
        self.unstage(&frames, last);
        // The last applied frame's buffer goes to the next commit, if nothing else holds it.
        let spare = frames
            .into_iter()
            .last()
            .and_then(|(_, payload, _)| Arc::try_unwrap(payload).ok());
        if let Some(mut payload) = spare {
            payload.clear();
            let mut state = lock(&self.state);
            if state.spare.is_none() {
                state.spare = Some(payload);
            }
        }
        Ok(())
    }

    /// Writes `frames` (the last numbered `last`) to sled with `Mwal` naming `last`.
    ///
    /// Plain writes for the few of a small group's commit; one batch for thousands of writes
    /// or a bulk commit's bytes ([`BATCH_WRITES`], [`BATCH_BYTES`]): its two
    /// log-buffer seals cost nothing next to them, and it takes sled's epoch pin and lock once
    /// instead of per write (bulk ingest, `--only ingest --events 200000`, 5 alternating runs:
    /// 165k events/s median as one batch, 151k as plain writes).
    fn write_to_sled(
        &self,
        frames: &[(u64, Arc<Payload>, usize)],
        last: u64,
    ) -> Result<(), StoreError> {
        let count: usize = frames.iter().map(|(_, _, count)| count).sum();
        let bytes: usize = frames
            .iter()
            .map(|(_, payload, _)| payload.as_bytes().len())
            .sum();
        let mut batch = (count >= BATCH_WRITES || bytes >= BATCH_BYTES).then(sled::Batch::default);
        for (seq, payload, _) in frames {
            let bytes = payload.as_bytes();
            for write in writes(*seq, payload) {
                let WriteAt { key, value } = write?;
                let key = &bytes[key];
                let value = value.map(|value| &bytes[value]);
                match (&mut batch, value) {
                    (Some(batch), Some(value)) => batch.insert(key, value),
                    (Some(batch), None) => batch.remove(key),
                    (None, Some(value)) => {
                        self.db.insert(key, value)?;
                    }
                    (None, None) => {
                        self.db.remove(key)?;
                    }
                }
            }
        }
        match batch {
            Some(mut batch) => {
                batch.insert(keys::WAL_KEY, &last.to_be_bytes());
                self.db.apply_batch(batch)?;
            }
            None => {
                self.db.insert(keys::WAL_KEY, &last.to_be_bytes())?;
            }
        }
        Ok(())
    }

    /// Drops the applied `frames` from the staging: each key whose latest write they hold.
    fn unstage(&self, frames: &[(u64, Arc<Payload>, usize)], last: u64) {
        let mut state = lock(&self.state);
        for (seq, payload, _) in frames {
            for WriteAt { key, .. } in writes(*seq, payload).flatten() {
                let key = &payload.as_bytes()[key];
                if state
                    .latest
                    .get(key)
                    .is_some_and(|latest| latest.seq <= last)
                {
                    state.latest.remove(key);
                }
            }
        }
        let applied = frames.len();
        state.frames.drain(..applied);
        self.frames.fetch_sub(applied, Ordering::Release);
    }

    /// True when nothing is staged.
    pub(crate) fn is_empty(&self) -> bool {
        !self.any()
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>, StoreError> {
        let key = key.as_ref();
        if self.any() {
            let state = lock(&self.state);
            if let Some(latest) = state.latest.get(key) {
                return Ok(state.value(latest));
            }
        }
        Ok(self.db.get(key)?)
    }

    /// The entries in `bounds`, in key order.
    pub(crate) fn scan(&self, bounds: Bounds) -> Scan {
        let staged = if self.any() {
            lock(&self.state).range(&bounds)
        } else {
            Vec::new()
        };
        Scan::new(self.db.range(bounds), staged)
    }

    /// The entries in `bounds`, in descending key order: the staged writes over sled's, as
    /// [`Staged::scan`] gives them, last first.
    pub(crate) fn scan_descending(&self, bounds: Bounds) -> Scan {
        let mut staged = if self.any() {
            lock(&self.state).range(&bounds)
        } else {
            Vec::new()
        };
        staged.reverse();
        Scan {
            descending: true,
            ..Scan::new(self.db.range(bounds), staged)
        }
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        self.scan(prefix_bounds(prefix.as_ref()))
    }

    /// The last entry in `bounds`.
    pub(crate) fn last(&self, bounds: Bounds) -> Result<Option<(IVec, IVec)>, StoreError> {
        self.edge(bounds, true)
    }

    /// The first entry in `bounds`.
    pub(crate) fn first(&self, bounds: Bounds) -> Result<Option<(IVec, IVec)>, StoreError> {
        self.edge(bounds, false)
    }

    /// The first or (`last`) the last entry in `bounds`: the staged value nearest that end
    /// against sled's nearest key that no staged write replaces or removes. Only the one
    /// staged value found is copied, not every staged write in `bounds` (a lookup of the run
    /// an index key falls in has the whole index family before or after it in its bounds).
    fn edge(&self, bounds: Bounds, last: bool) -> Result<Option<(IVec, IVec)>, StoreError> {
        if is_empty(&bounds) {
            return Ok(None);
        }
        let staged_edge = if self.any() {
            let state = lock(&self.state);
            let mut range = state
                .latest
                .range::<Vec<u8>, _>((bounds.0.as_ref(), bounds.1.as_ref()));
            let mut valued = |(key, latest): (&Vec<u8>, &Latest)| {
                Some((IVec::from(key.as_slice()), state.value(latest)?))
            };
            if last {
                range.rev().find_map(&mut valued)
            } else {
                range.find_map(&mut valued)
            }
        } else {
            None
        };
        let mut tree = self.db.range(bounds);
        let mut tree_edge = None;
        while let Some(entry) = if last { tree.next_back() } else { tree.next() } {
            let (key, value) = entry?;
            // Staged: its staged value is a candidate in `staged_edge`, or its staged removal
            // hides it.
            if self.any() && lock(&self.state).latest.contains_key(key.as_ref()) {
                continue;
            }
            tree_edge = Some((key, value));
            break;
        }
        Ok(match (tree_edge, staged_edge) {
            (Some(tree), Some(staged)) => Some(if (tree.0 > staged.0) == last {
                tree
            } else {
                staged
            }),
            (tree, staged) => tree.or(staged),
        })
    }
}

/// The writes of a staged frame.
fn writes(seq: u64, payload: &Payload) -> impl Iterator<Item = Result<WriteAt, StoreError>> + '_ {
    writes_at(payload.as_bytes()).map(move |write| {
        write.map_err(|reason| {
            CorruptRecord::new(format!("write-ahead log frame {seq} (in memory)"), reason).into()
        })
    })
}

/// A scan of sled's tree merged with the staged writes in its range: a staged value replaces
/// sled's, a staged removal hides it.
///
/// The staged writes are copied when the scan starts; sled's tree is read as the scan goes, so a
/// frame applied meanwhile can put into the tree a key the scan has already given from its
/// staged copy, ahead of where the tree's iterator is. Keys come out strictly ascending: a tree
/// entry at or before the last key given is skipped (its value is the staged one, or newer than
/// the scan's start only where nothing was staged for it).
pub(crate) struct Scan {
    tree: sled::Iter,
    tree_next: Option<(IVec, IVec)>,
    staged: std::iter::Peekable<std::vec::IntoIter<(IVec, Option<IVec>)>>,
    /// The last key given (or hidden by a staged removal).
    passed: Option<IVec>,
    /// Last key first (the staged writes are given in that order too).
    descending: bool,
}

impl Scan {
    fn new(tree: sled::Iter, staged: Vec<(IVec, Option<IVec>)>) -> Self {
        Scan {
            tree,
            tree_next: None,
            staged: staged.into_iter().peekable(),
            passed: None,
            descending: false,
        }
    }
}

/// How `key` compares with `other` in a scan's order (descending or not).
fn scan_order(descending: bool, key: &[u8], other: &[u8]) -> std::cmp::Ordering {
    if descending {
        other.cmp(key)
    } else {
        key.cmp(other)
    }
}

impl Iterator for Scan {
    type Item = Result<(IVec, IVec), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            while self.tree_next.is_none() {
                let next = if self.descending {
                    self.tree.next_back()
                } else {
                    self.tree.next()
                };
                match next {
                    Some(Ok(entry)) => {
                        if self.passed.as_ref().is_none_or(|passed| {
                            scan_order(self.descending, passed, &entry.0)
                                == std::cmp::Ordering::Less
                        }) {
                            self.tree_next = Some(entry);
                        }
                    }
                    Some(Err(error)) => return Some(Err(error.into())),
                    None => break,
                }
            }
            let order = match (&self.tree_next, self.staged.peek()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((tree, _)), Some((staged, _))) => scan_order(self.descending, tree, staged),
            };
            if order == std::cmp::Ordering::Less {
                let entry = self.tree_next.take();
                self.passed = entry.as_ref().map(|(key, _)| key.clone());
                return entry.map(Ok);
            }
            if order == std::cmp::Ordering::Equal {
                self.tree_next = None;
            }
            if let Some((key, value)) = self.staged.next() {
                self.passed = Some(key.clone());
                if let Some(value) = value {
                    return Some(Ok((key, value)));
                }
            }
            // A staged removal: nothing at this key.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(writes: &[(&str, Option<&str>)]) -> Payload {
        let mut payload = Payload::default();
        for (key, value) in writes {
            match value {
                Some(value) => payload.insert(key.as_bytes(), value.as_bytes()),
                None => payload.remove(key.as_bytes()),
            }
        }
        payload
    }

    fn entries(scan: Scan) -> Vec<(String, String)> {
        scan.map(|entry| {
            let (key, value) = entry.unwrap();
            (
                String::from_utf8(key.to_vec()).unwrap(),
                String::from_utf8(value.to_vec()).unwrap(),
            )
        })
        .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn text(value: Option<IVec>) -> Option<String> {
        value.map(|value| String::from_utf8(value.to_vec()).unwrap())
    }

    fn fixture() -> (tempfile::TempDir, Staged) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        for key in ["a1", "a2", "a3", "b1"] {
            db.insert(key, format!("tree-{key}").as_bytes()).unwrap();
        }
        let staged = Staged::new(db);
        // Frame 1 replaces a2 and adds a4; frame 2 removes a3 and a4 and adds a0.
        staged
            .add(
                1,
                payload(&[("a2", Some("one-a2")), ("a4", Some("one-a4"))]),
            )
            .unwrap();
        staged
            .add(
                2,
                payload(&[("a3", None), ("a4", None), ("a0", Some("two-a0"))]),
            )
            .unwrap();
        (dir, staged)
    }

    #[test]
    fn reads_see_staged_writes_in_front_of_the_tree() {
        let (_dir, staged) = fixture();
        assert_eq!(text(staged.get(b"a1").unwrap()).as_deref(), Some("tree-a1"));
        assert_eq!(text(staged.get(b"a2").unwrap()).as_deref(), Some("one-a2"));
        assert_eq!(staged.get(b"a3").unwrap(), None);
        assert_eq!(staged.get(b"a4").unwrap(), None);
        assert_eq!(text(staged.get(b"a0").unwrap()).as_deref(), Some("two-a0"));
        assert_eq!(
            entries(staged.scan_prefix(b"a")),
            pairs(&[("a0", "two-a0"), ("a1", "tree-a1"), ("a2", "one-a2")])
        );
        assert_eq!(
            entries(staged.scan((
                Bound::Excluded(b"a0".to_vec()),
                Bound::Included(b"b1".to_vec())
            ))),
            pairs(&[("a1", "tree-a1"), ("a2", "one-a2"), ("b1", "tree-b1")])
        );
        // The last entry skips the removed a3 and a4.
        let last = staged.last(prefix_bounds(b"a")).unwrap().unwrap();
        assert_eq!((&*last.0, &*last.1), (&b"a2"[..], &b"one-a2"[..]));
        let last = staged
            .last((Bound::Unbounded, Bound::Excluded(b"a1".to_vec())))
            .unwrap()
            .unwrap();
        assert_eq!(&*last.0, b"a0");
        // The first entry: the staged a0 before the tree's a1; after a2, the removed a3 and
        // a4 skipped, the tree's b1; the staged a2 over the tree's.
        let first = staged.first(prefix_bounds(b"a")).unwrap().unwrap();
        assert_eq!((&*first.0, &*first.1), (&b"a0"[..], &b"two-a0"[..]));
        let first = staged
            .first((Bound::Excluded(b"a2".to_vec()), Bound::Unbounded))
            .unwrap()
            .unwrap();
        assert_eq!((&*first.0, &*first.1), (&b"b1"[..], &b"tree-b1"[..]));
        let first = staged
            .first((Bound::Excluded(b"a1".to_vec()), Bound::Unbounded))
            .unwrap()
            .unwrap();
        assert_eq!((&*first.0, &*first.1), (&b"a2"[..], &b"one-a2"[..]));
        // Empty and reversed ranges are empty, not a panic.
        let reversed = (
            Bound::Excluded(b"a2".to_vec()),
            Bound::Excluded(b"a2".to_vec()),
        );
        assert!(entries(staged.scan(reversed.clone())).is_empty());
        assert_eq!(staged.last(reversed.clone()).unwrap(), None);
        assert_eq!(staged.first(reversed).unwrap(), None);
    }

    #[test]
    fn only_durable_frames_are_applied_and_reads_do_not_change() {
        let (_dir, staged) = fixture();
        let data = || {
            (
                Bound::Included(b"a".to_vec()),
                Bound::Excluded(b"c".to_vec()),
            )
        };
        let before = entries(staged.scan(data()));
        staged.apply(0, Wait::Yes).unwrap();
        assert_eq!(
            staged.db.get(b"a2").unwrap().as_deref(),
            Some(&b"tree-a2"[..])
        );
        staged.apply(1, Wait::Yes).unwrap();
        // Frame 1 is in the tree, frame 2 still only staged.
        assert_eq!(
            staged.db.get(b"a2").unwrap().as_deref(),
            Some(&b"one-a2"[..])
        );
        assert_eq!(
            staged.db.get(b"a4").unwrap().as_deref(),
            Some(&b"one-a4"[..])
        );
        assert_eq!(
            staged.db.get(keys::WAL_KEY).unwrap().as_deref(),
            Some(&1u64.to_be_bytes()[..])
        );
        assert!(!staged.is_empty());
        assert_eq!(entries(staged.scan(data())), before);
        assert_eq!(staged.get(b"a4").unwrap(), None);
        staged.apply(2, Wait::Yes).unwrap();
        assert!(staged.is_empty());
        assert_eq!(staged.db.get(b"a4").unwrap(), None);
        assert_eq!(
            staged.db.get(keys::WAL_KEY).unwrap().as_deref(),
            Some(&2u64.to_be_bytes()[..])
        );
        assert_eq!(entries(staged.scan(data())), before);
    }

    #[test]
    fn a_later_frame_keeps_its_key_staged_when_an_earlier_one_is_applied() {
        let (_dir, staged) = fixture();
        staged.add(3, payload(&[("a2", Some("three-a2"))])).unwrap();
        staged.apply(2, Wait::Yes).unwrap();
        assert_eq!(
            staged.db.get(b"a2").unwrap().as_deref(),
            Some(&b"one-a2"[..])
        );
        assert_eq!(
            text(staged.get(b"a2").unwrap()).as_deref(),
            Some("three-a2")
        );
        staged.apply(3, Wait::Yes).unwrap();
        assert_eq!(
            text(staged.get(b"a2").unwrap()).as_deref(),
            Some("three-a2")
        );
        assert!(staged.is_empty());
    }

    #[test]
    fn a_frame_of_few_large_writes_is_applied_as_one_batch_with_the_same_result() {
        let (_dir, staged) = fixture();
        let big = "x".repeat(BATCH_BYTES / 4);
        let writes: Vec<(&str, Option<&str>)> = vec![
            ("b1", Some(big.as_str())),
            ("b2", Some(big.as_str())),
            ("b3", Some(big.as_str())),
            ("b4", Some(big.as_str())),
            ("a1", None),
        ];
        staged.add(3, payload(&writes)).unwrap();
        staged.apply(3, Wait::Yes).unwrap();
        assert!(staged.is_empty());
        assert_eq!(
            staged.db.get(keys::WAL_KEY).unwrap().as_deref(),
            Some(&3u64.to_be_bytes()[..])
        );
        assert_eq!(staged.db.scan_prefix(b"b").count(), 4);
        assert_eq!(
            staged.db.get(b"b4").unwrap().as_deref(),
            Some(big.as_bytes())
        );
        assert_eq!(staged.db.get(b"a1").unwrap(), None);
    }

    #[test]
    fn frames_with_thousands_of_writes_are_applied_as_one_batch_with_the_same_result() {
        let (_dir, staged) = fixture();
        let keys: Vec<String> = (0..BATCH_WRITES + 10).map(|n| format!("c{n:05}")).collect();
        let mut writes: Vec<(&str, Option<&str>)> = keys
            .iter()
            .map(|key| (key.as_str(), Some("three")))
            .collect();
        writes.push(("a1", None));
        staged.add(3, payload(&writes)).unwrap();
        staged.apply(3, Wait::Yes).unwrap();
        assert!(staged.is_empty());
        assert_eq!(
            staged.db.get(keys::WAL_KEY).unwrap().as_deref(),
            Some(&3u64.to_be_bytes()[..])
        );
        assert_eq!(staged.db.scan_prefix(b"c").count(), keys.len());
        assert_eq!(staged.db.get(b"a1").unwrap(), None);
        assert_eq!(
            staged.db.get(b"a2").unwrap().as_deref(),
            Some(&b"one-a2"[..])
        );
    }

    #[test]
    fn an_apply_that_finds_another_under_way_leaves_the_frames_to_it() {
        let (_dir, staged) = fixture();
        let busy = staged.applying.lock().unwrap();
        staged.apply(2, Wait::No).unwrap();
        assert!(!staged.is_empty());
        drop(busy);
        staged.apply(2, Wait::No).unwrap();
        assert!(staged.is_empty());
    }

    #[test]
    fn applied_writes_are_read_from_sled_and_follow_every_apply() {
        let (_dir, staged) = fixture();
        staged.add(3, payload(&[("K-a", Some("head-3"))])).unwrap();
        staged.apply(3, Wait::Yes).unwrap();
        assert!(staged.is_empty());
        // Nothing applied is cached: a change behind the store's back (what tests that damage a
        // store do) is seen at once.
        staged.db.insert(b"K-a", &b"behind"[..]).unwrap();
        assert_eq!(text(staged.get(b"K-a").unwrap()).as_deref(), Some("behind"));
        staged.add(4, payload(&[("K-a", Some("head-4"))])).unwrap();
        assert_eq!(text(staged.get(b"K-a").unwrap()).as_deref(), Some("head-4"));
        staged.apply(4, Wait::Yes).unwrap();
        assert_eq!(text(staged.get(b"K-a").unwrap()).as_deref(), Some("head-4"));
        staged.add(5, payload(&[("K-a", None)])).unwrap();
        staged.apply(5, Wait::Yes).unwrap();
        assert_eq!(staged.get(b"K-a").unwrap(), None);
        assert_eq!(staged.db.get(b"K-a").unwrap(), None);
    }

    #[test]
    fn a_frame_applied_while_a_scan_runs_gives_none_of_its_keys_twice() {
        // The flake this pins: a history listed one run of events twice when the frame holding
        // it was applied between two steps of the scan reading it.
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.insert("k1", "tree-k1").unwrap();
        let staged = Staged::new(db);
        staged
            .add(1, payload(&[("k2", Some("one-k2")), ("k3", None)]))
            .unwrap();
        let mut scan = staged.scan_prefix(b"k");
        let first = scan.next().unwrap().unwrap();
        assert_eq!(&*first.0, b"k1");
        let second = scan.next().unwrap().unwrap();
        assert_eq!((&*second.0, &*second.1), (&b"k2"[..], &b"one-k2"[..]));
        // The tree's iterator is behind k2: the apply puts k2 in front of it.
        staged.apply(1, Wait::Yes).unwrap();
        assert!(scan.next().is_none());
    }

    #[test]
    fn a_descending_scan_is_the_scan_reversed_with_the_staged_writes_in_front() {
        let (_dir, staged) = fixture();
        assert_eq!(
            entries(staged.scan_descending(prefix_bounds(b"a"))),
            pairs(&[("a2", "one-a2"), ("a1", "tree-a1"), ("a0", "two-a0")])
        );
        for bounds in [
            prefix_bounds(b""),
            (
                Bound::Excluded(b"a0".to_vec()),
                Bound::Included(b"b1".to_vec()),
            ),
            (
                Bound::Included(b"a1".to_vec()),
                Bound::Excluded(b"a4".to_vec()),
            ),
        ] {
            let mut reversed = entries(staged.scan(bounds.clone()));
            reversed.reverse();
            assert_eq!(entries(staged.scan_descending(bounds)), reversed);
        }
        let empty = (
            Bound::Excluded(b"a2".to_vec()),
            Bound::Excluded(b"a2".to_vec()),
        );
        assert!(entries(staged.scan_descending(empty)).is_empty());
    }

    #[test]
    fn a_frame_applied_while_a_descending_scan_runs_gives_none_of_its_keys_twice() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.insert("k3", "tree-k3").unwrap();
        let staged = Staged::new(db);
        staged
            .add(1, payload(&[("k2", Some("one-k2")), ("k1", None)]))
            .unwrap();
        let mut scan = staged.scan_descending(prefix_bounds(b"k"));
        let first = scan.next().unwrap().unwrap();
        assert_eq!(&*first.0, b"k3");
        let second = scan.next().unwrap().unwrap();
        assert_eq!((&*second.0, &*second.1), (&b"k2"[..], &b"one-k2"[..]));
        staged.apply(1, Wait::Yes).unwrap();
        assert!(scan.next().is_none());
    }

    #[test]
    fn prefix_bounds_end_after_every_key_with_the_prefix() {
        assert_eq!(
            prefix_bounds(&[1, 0xff]),
            (Bound::Included(vec![1, 0xff]), Bound::Excluded(vec![2]))
        );
        assert_eq!(
            prefix_bounds(&[0xff, 0xff]),
            (Bound::Included(vec![0xff, 0xff]), Bound::Unbounded)
        );
        assert_eq!(
            prefix_bounds(&[]),
            (Bound::Included(vec![]), Bound::Unbounded)
        );
    }
}

//! Index entries packed in runs: the sled form of [`EventStore::for_each_index_key`]'s keys.
//!
//! One sled key per index entry made the entries more sled writes than the events themselves
//! (about 3.4 entries a session against one packed `S` value and one `K` head), and sled's
//! cost is per write. So the entries are packed: the set of index keys is cut into **runs** of
//! consecutive keys, each run one sled value under `I` and its first key. A run's value is
//! varint(count of the keys after the first), then each of them as varint(bytes shared with
//! the key before it) bytes(the rest). A run holds at most [`MAX_RUN_KEYS`] keys and
//! [`MAX_RUN_BYTES`] of value; one that outgrows either is cut into runs half as full, one left
//! empty is removed, and a run whose first key goes is written again under its new first key,
//! so that runs are disjoint, in key order, and each is stored under its smallest key.
//!
//! A commit's entries (sorted, each key once) are laid over the runs they fall in: the run an
//! entry belongs to is the last one whose first key is at or before it (the first run, when it
//! is before them all), and every entry before the next run's first key goes to it, so a
//! commit whose new keys are near each other (the engine's keys carry the session's first
//! event time before its id for that) rewrites a few runs, not one key per entry. The frame
//! holds each run's new value, as it holds a counter cell's, so replaying it twice writes the
//! same.
//!
//! [`EventStore::for_each_index_key`]: crate::EventStore::for_each_index_key

use std::ops::{Bound, ControlFlow};

use linkflow_core::compact::{put_varint, take_varint};

use crate::error::{CorruptRecord, StoreError};
use crate::keys;
use crate::staged::{Bounds, Staged};
use crate::wal::Payload;

/// The most keys one run holds.
pub(crate) const MAX_RUN_KEYS: usize = 128;
/// The most bytes one run's value holds (an index key is at most
/// [`crate::MAX_INDEX_KEY_BYTES`], so a run of one key always fits).
pub(crate) const MAX_RUN_BYTES: usize = 4_096;

/// A run as stored: its sled key (`I` and its first index key) and its keys, in order.
pub(crate) struct Run {
    pub(crate) stored_at: Vec<u8>,
    pub(crate) keys: Vec<Vec<u8>>,
}

/// The encoded value of a run of `keys` (sorted, at least one): the keys after the first.
pub(crate) fn encode(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut value = Vec::with_capacity(encoded_len(keys));
    put_varint(&mut value, keys.len().saturating_sub(1) as u64);
    for pair in keys.windows(2) {
        let shared = shared_len(&pair[0], &pair[1]);
        put_varint(&mut value, shared as u64);
        put_varint(&mut value, (pair[1].len() - shared) as u64);
        value.extend_from_slice(&pair[1][shared..]);
    }
    value
}

fn shared_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(a, b)| a == b).count()
}

/// The bytes of [`encode`]'s value, without encoding it (varints counted at their longest
/// that matters here: 2 bytes for lengths up to 16,383).
fn encoded_len(keys: &[Vec<u8>]) -> usize {
    1 + keys
        .windows(2)
        .map(|pair| 4 + pair[1].len() - shared_len(&pair[0], &pair[1]))
        .sum::<usize>()
}

/// The keys of the run stored under `stored_at` (`I` and its first key) with `value`.
pub(crate) fn decode(stored_at: &[u8], value: &[u8]) -> Result<Vec<Vec<u8>>, CorruptRecord> {
    let bad = |reason: &str| {
        CorruptRecord::new(
            format!(
                "index run {:?}",
                String::from_utf8_lossy(stored_at.get(1..).unwrap_or_default())
            ),
            reason.to_owned(),
        )
    };
    let first = stored_at.get(1..).filter(|first| !first.is_empty());
    let first = first.ok_or_else(|| bad("its key names no index key"))?;
    let mut rest = value;
    let count = take_varint(&mut rest).ok_or_else(|| bad("its count is not a varint"))?;
    let count = usize::try_from(count)
        .ok()
        .filter(|count| *count < MAX_RUN_KEYS)
        .ok_or_else(|| bad("it holds more keys than a run may"))?;
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(count + 1);
    keys.push(first.to_vec());
    for _ in 0..count {
        let shared = take_varint(&mut rest).ok_or_else(|| bad("a shared length is cut short"))?;
        let len = take_varint(&mut rest).ok_or_else(|| bad("a length is cut short"))?;
        let previous = keys.last().expect("the first key is there");
        let shared = usize::try_from(shared)
            .ok()
            .filter(|shared| *shared <= previous.len())
            .ok_or_else(|| bad("a key shares more bytes than the key before it has"))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= rest.len())
            .ok_or_else(|| bad("a key is cut short"))?;
        let mut key = Vec::with_capacity(shared + len);
        key.extend_from_slice(&previous[..shared]);
        key.extend_from_slice(&rest[..len]);
        rest = &rest[len..];
        if key <= *previous {
            return Err(bad("its keys are not in ascending order"));
        }
        keys.push(key);
    }
    if !rest.is_empty() {
        return Err(bad("bytes are left over after its keys"));
    }
    Ok(keys)
}

/// The bounds of every run.
fn all_runs() -> Bounds {
    crate::staged::prefix_bounds(&[keys::INDEX])
}

/// The run stored under `stored_at` with `value`, decoded.
fn run(stored_at: sled::IVec, value: &[u8]) -> Result<Run, StoreError> {
    let keys = decode(&stored_at, value)?;
    Ok(Run {
        stored_at: stored_at.to_vec(),
        keys,
    })
}

/// The run `key` belongs to: the last whose first key is at or before it, else the first
/// run (which then takes it as its new first key); `None` when there is no run at all.
fn run_for(staged: &Staged, key: &[u8]) -> Result<Option<Run>, StoreError> {
    let (start, _) = all_runs();
    let at_or_before = staged.last((start, Bound::Included(keys::tagged(keys::INDEX, key))))?;
    let found = match at_or_before {
        Some(found) => Some(found),
        None => staged.first(all_runs())?,
    };
    found
        .map(|(stored_at, value)| run(stored_at, &value))
        .transpose()
}

/// The first key of the run after the one stored under `stored_at` (`None`: it is the last).
fn next_run_start(staged: &Staged, stored_at: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let (_, end) = all_runs();
    let next = staged.first((Bound::Excluded(stored_at.to_vec()), end))?;
    Ok(next.map(|(stored_at, _)| stored_at[1..].to_vec()))
}

/// Writes a commit's index entries (sorted, each key once, whether it is present after the
/// commit) into `frame` as the runs they change, read from the staged frames over sled.
pub(crate) fn write_entries(
    staged: &Staged,
    frame: &mut Payload,
    entries: &[(Vec<u8>, bool)],
) -> Result<(), StoreError> {
    let mut at = 0;
    while let Some((key, _)) = entries.get(at) {
        let (stored_at, old) = match run_for(staged, key)? {
            Some(run) => (Some(run.stored_at), run.keys),
            None => (None, Vec::new()),
        };
        let next = match &stored_at {
            Some(stored_at) => next_run_start(staged, stored_at)?,
            None => None,
        };
        let end = match &next {
            Some(next) => at + entries[at..].partition_point(|(key, _)| key < next),
            None => entries.len(),
        };
        let keys = merge(old, &entries[at..end]);
        let runs = cut(keys);
        if let Some(stored_at) = &stored_at {
            if runs.first().is_none_or(|first| first[0] != stored_at[1..]) {
                frame.remove(stored_at);
            }
        }
        for run in &runs {
            frame.insert(&keys::tagged(keys::INDEX, &run[0]), &encode(run));
        }
        at = end;
    }
    Ok(())
}

/// A run's keys with `changes` (sorted) laid over them.
fn merge(old: Vec<Vec<u8>>, changes: &[(Vec<u8>, bool)]) -> Vec<Vec<u8>> {
    let mut merged = Vec::with_capacity(old.len() + changes.len());
    let mut changes = changes.iter().peekable();
    for key in old {
        while let Some((change, present)) = changes.next_if(|(change, _)| *change < key) {
            if *present {
                merged.push(change.clone());
            }
        }
        match changes.next_if(|(change, _)| *change == key) {
            Some((_, false)) => {}
            _ => merged.push(key),
        }
    }
    merged.extend(
        changes
            .filter(|(_, present)| *present)
            .map(|(key, _)| key.clone()),
    );
    merged
}

/// `keys` (sorted) as runs within the limits: one run when they fit, else runs filled to half
/// the limits (room for the keys that come next, so that a run does not split on every
/// commit). No run is empty.
fn cut(keys: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
    if keys.is_empty() {
        return Vec::new();
    }
    if keys.len() <= MAX_RUN_KEYS && encoded_len(&keys) <= MAX_RUN_BYTES {
        return vec![keys];
    }
    let mut runs: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 1;
    for key in keys {
        let added = 4 + key.len() - current.last().map_or(0, |last| shared_len(last, &key));
        if !current.is_empty()
            && (current.len() >= MAX_RUN_KEYS / 2 || bytes + added > MAX_RUN_BYTES / 2)
        {
            runs.push(std::mem::take(&mut current));
            bytes = 1;
            current.push(key);
            continue;
        }
        bytes += added;
        current.push(key);
    }
    runs.push(current);
    runs
}

/// Calls `visit` with the index keys in `[from, to)`, in byte order or (`descending`) the last
/// first, until it breaks. Keys come out strictly in order even when a commit applied during
/// the walk rewrote a run it had read (a key it gave again is skipped).
pub(crate) fn walk(
    staged: &Staged,
    from: &[u8],
    to: &[u8],
    descending: bool,
    visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    if from >= to {
        return Ok(());
    }
    let (start, _) = all_runs();
    let tagged_to = keys::tagged(keys::INDEX, to);
    let mut given: Option<Vec<u8>> = None;
    if descending {
        // Runs whose first key is before `to`, the last first; the last one read is the
        // first whose first key is at or before `from`.
        for entry in staged.scan_descending((start, Bound::Excluded(tagged_to))) {
            let (stored_at, value) = entry?;
            let run = run(stored_at, &value)?;
            for key in run.keys.iter().rev() {
                if key.as_slice() >= to
                    || given
                        .as_deref()
                        .is_some_and(|given| key.as_slice() >= given)
                {
                    continue;
                }
                if key.as_slice() < from {
                    return Ok(());
                }
                if visit(key).is_break() {
                    return Ok(());
                }
                given = Some(key.clone());
            }
            if run.keys[0].as_slice() <= from {
                return Ok(());
            }
        }
        return Ok(());
    }
    // The run `from` falls in, then the runs after it whose first key is before `to`.
    let first = staged.last((
        start.clone(),
        Bound::Included(keys::tagged(keys::INDEX, from)),
    ))?;
    let rest_from = match &first {
        Some((stored_at, _)) => Bound::Excluded(stored_at.to_vec()),
        None => start,
    };
    let runs = first
        .map(Ok)
        .into_iter()
        .chain(staged.scan((rest_from, Bound::Excluded(tagged_to))));
    for entry in runs {
        let (stored_at, value) = entry?;
        for key in run(stored_at, &value)?.keys {
            if key.as_slice() < from
                || given
                    .as_deref()
                    .is_some_and(|given| key.as_slice() <= given)
            {
                continue;
            }
            if key.as_slice() >= to {
                return Ok(());
            }
            if visit(&key).is_break() {
                return Ok(());
            }
            given = Some(key);
        }
    }
    Ok(())
}

/// Every run decodes, holds at most the limits, and comes before the next run's first key;
/// returns the problems found, each naming its run.
pub(crate) fn check(staged: &Staged) -> Result<Vec<CorruptRecord>, StoreError> {
    let mut problems = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    for entry in staged.scan(all_runs()) {
        let (stored_at, value) = entry?;
        let name = || {
            format!(
                "index run {:?}",
                String::from_utf8_lossy(stored_at.get(1..).unwrap_or_default())
            )
        };
        if value.len() > MAX_RUN_BYTES {
            problems.push(CorruptRecord::new(
                name(),
                format!(
                    "its value has {} bytes (at most {MAX_RUN_BYTES})",
                    value.len()
                ),
            ));
        }
        match decode(&stored_at, &value) {
            Ok(keys) => {
                if last.as_ref().is_some_and(|last| stored_at[1..] <= last[..]) {
                    problems.push(CorruptRecord::new(
                        name(),
                        "it starts before the run before it ends".to_owned(),
                    ));
                }
                last = keys.last().cloned();
            }
            Err(error) => problems.push(error),
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Vec<u8> {
        format!("k{n:06}").into_bytes()
    }

    #[test]
    fn a_run_reads_back_as_written() {
        let keys: Vec<Vec<u8>> = vec![b"a".to_vec(), b"ab".to_vec(), b"b".to_vec(), key(1)];
        let value = encode(&keys);
        let mut stored_at = vec![keys::INDEX];
        stored_at.extend_from_slice(&keys[0]);
        assert_eq!(decode(&stored_at, &value).unwrap(), keys);
        assert!(encoded_len(&keys) >= value.len());
    }

    #[test]
    fn damaged_runs_are_named_not_panicked_on() {
        let keys: Vec<Vec<u8>> = (0..10).map(key).collect();
        let value = encode(&keys);
        let stored_at = keys::tagged(keys::INDEX, &keys[0]);
        for cut in 0..value.len() {
            assert!(decode(&stored_at, &value[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = value.clone();
        longer.push(0);
        assert!(decode(&stored_at, &longer).is_err());
        // Keys out of order: the run stored under a key after its second one.
        let late = keys::tagged(keys::INDEX, &key(5));
        assert!(decode(&late, &value).is_err());
        assert!(decode(&[keys::INDEX], &value).is_err());
    }

    #[test]
    fn cutting_keeps_every_key_in_order_within_the_limits() {
        for count in [1usize, 2, 127, 128, 129, 300, 1_000] {
            let keys: Vec<Vec<u8>> = (0..count as u32).map(key).collect();
            let runs = cut(keys.clone());
            assert_eq!(runs.concat(), keys, "{count} keys");
            for run in &runs {
                assert!(!run.is_empty() && run.len() <= MAX_RUN_KEYS);
                assert!(encode(run).len() <= MAX_RUN_BYTES);
            }
        }
        let big: Vec<Vec<u8>> = (0..40u8).map(|n| vec![n; 1_024]).collect();
        for run in cut(big.clone()) {
            assert!(
                encode(&run).len() <= MAX_RUN_BYTES,
                "{}",
                encode(&run).len()
            );
        }
        assert_eq!(cut(big.clone()).concat(), big);
    }

    #[test]
    fn merging_puts_and_deletes() {
        let old = vec![key(2), key(4), key(6)];
        let changes = vec![
            (key(1), true),
            (key(2), false),
            (key(3), false),
            (key(5), true),
            (key(6), true),
            (key(7), true),
        ];
        assert_eq!(
            merge(old, &changes),
            vec![key(1), key(4), key(5), key(6), key(7)]
        );
    }
}

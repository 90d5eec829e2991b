//! The key layout of the sled tree. Everything lives in one tree so that one `sled::Batch` (atomic
//! within a tree) covers every key an append touches.
//!
//! | prefix | key                                          | value                              |
//! |--------|----------------------------------------------|------------------------------------|
//! | `S`    | `S` len:u16 session version:u64              | event record, or packed records    |
//! | `G`    | `G` first position:u64                       | the commit's runs (see below)      |
//! | `K`    | `K` session (no length: heads sort by id)    | the stream's head: dedupe list and |
//! |        |                                              | snapshot                           |
//! | `D`    | `D` len:u16 session dedupe key (16 bytes)    | dedupe target (see below)          |
//!
//! Integers are big-endian so that byte order is numeric order; session ids in `S` and `D` keys
//! are length-prefixed so that `acct-1`'s keys are never a prefix scan's match for `acct-10`. A
//! `K` key holds one whole id, so it needs no length and sorts by the id.
//!
//! One `G` key per commit, not per event: a commit's positions are handed out stream by stream
//! (in order of each stream's first append in the commit), so its events form one run per
//! stream, and the value lists the runs in the core's compact form: varint(count), then per
//! run str(session) varint(first version) varint(events). The positions of the runs follow each other from the key's
//! first position.
//!
//! | `I`    | `I` first index key of a run (engine bytes)  | the run's other keys (`runs.rs`)   |
//! | `C`    | `C` counter cell (the engine's bytes)        | the cell's counters (see below)    |
//!
//! `I` and `C` keys are the engine's index entries, packed in runs of consecutive keys (see
//! `sled_store/runs.rs`), and counter cells (`Commit::index`, `Commit::counters`), written in
//! the frame of the commit they belong to. A cell's value is
//! varint(count), then per counter, in name order, bytes(name) and its value zigzag-varint
//! (never zero; a cell left with none is removed). A commit computes a cell's new value under
//! the writer lock from the staged one, and the frame holds the value, not the delta, so
//! replaying a frame twice writes the same.
//!
//! | `M`    | `Mlayout`                                    | layout version: u32 BE             |
//! | `M`    | `Mwal`                                       | last write-ahead log frame: u64    |
//! | `M`    | `Mfolded`                                    | rules the snapshots are folded with: u32 |
//!
//! An `S` value is one event record, or the records of consecutive events of one stream that
//! one commit appended, packed under the key of the first (`record::PACKED`): a batch of a
//! stream's events costs sled one key, not one per event. A stream's events are still every
//! `S` key of its prefix in order; the event at a version is in the last value whose key is at
//! or before it.
//!
//! A stream's dedupe entries are one `K` value (see `dedupe_list.rs`) of up to 64 entries,
//! which also holds the stream's snapshot: a commit rewrites one value per stream it touches,
//! not two. Older entries of a long stream are `D` keys, one per entry; a `D` target is
//! varint(version) varint(position).

use linkflow_core::compact::Output;
use linkflow_core::{Position, SessionId, Version};

use crate::binary::read_whole;
use crate::dedupe_list::Target;
use crate::error::CorruptRecord;
use crate::record::DedupeKey;
use crate::store::DedupeHit;

pub(crate) const EVENT: u8 = b'S';
pub(crate) const GLOBAL: u8 = b'G';
pub(crate) const DEDUPE: u8 = b'D';
pub(crate) const LIST: u8 = b'K';
pub(crate) const INDEX: u8 = b'I';
pub(crate) const COUNTER: u8 = b'C';

/// The key holding the layout version.
pub(crate) const LAYOUT_KEY: &[u8] = b"Mlayout";
/// The layout this build reads and writes: one stream per session holding every event it
/// received (schema 6 records), dedupe lists and snapshots in each stream's `K` head, packed
/// `S` values, commits made durable by the store's write-ahead log (`wal.rs`), whose frames
/// past `Mwal` opening replays, each `K` head holding its stream's version, every value in
/// the core's compact form. Layouts 2 to 5 kept refused events apart (`P` keys), layout 6 kept
/// no version in a head, layout 7 kept fixed-width integers in `G` and `D` values and a target
/// tag in dedupe entries, layout 8 length-prefixed `K` keys (heads not in id order), layout 9 kept no index
/// entries or counters (`I`, `C`), layout 10 one `I` key per index entry; they are
/// refused at open, as is a store without a layout key (layout 1); nothing has been released,
/// so none is migrated.
pub(crate) const LAYOUT: u32 = 11;
/// The number of the last write-ahead log frame whose batch sled holds (u64), written by each
/// commit's batch.
pub(crate) const WAL_KEY: &[u8] = b"Mwal";
/// The rules every snapshot was folded with, as the engine recorded it (u32; see
/// `EventStore::set_folded_with`). Written to sled directly, not through the log.
pub(crate) const FOLDED_WITH_KEY: &[u8] = b"Mfolded";

/// `tag len session`: the prefix of every key of one session under `tag`.
pub(crate) fn session_prefix(tag: u8, session: &SessionId) -> Vec<u8> {
    let id = session.as_str().as_bytes();
    let len = u16::try_from(id.len()).expect("session ids are at most 256 bytes (SessionId::new)");
    let mut key = Vec::with_capacity(3 + id.len() + 16);
    key.push(tag);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(id);
    key
}

pub(crate) fn event_key(session: &SessionId, version: Version) -> Vec<u8> {
    let mut key = session_prefix(EVENT, session);
    key.extend_from_slice(&version.0.to_be_bytes());
    key
}

pub(crate) fn global_key(position: Position) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = GLOBAL;
    key[1..].copy_from_slice(&position.0.to_be_bytes());
    key
}

pub(crate) fn dedupe_key(session: &SessionId, dedupe: &DedupeKey) -> Vec<u8> {
    let mut key = session_prefix(DEDUPE, session);
    key.extend_from_slice(dedupe.as_bytes());
    key
}

/// `K id`: no length prefix, so that the heads sort by stream id (a `K` key holds exactly one
/// stream, so no id is read as another's prefix), and a scan of heads from a stream on is a
/// page of streams in id order.
pub(crate) fn list_key(session: &SessionId) -> Vec<u8> {
    let id = session.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(LIST);
    key.extend_from_slice(id);
    key
}

/// `tag key`: an index entry's or a counter's sled key.
pub(crate) fn tagged(tag: u8, key: &[u8]) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(1 + key.len());
    tagged.push(tag);
    tagged.extend_from_slice(key);
    tagged
}

/// A counter cell's value as stored: its counters in name order.
pub(crate) fn parse_cell(cell: &[u8], value: &[u8]) -> Result<Vec<(Vec<u8>, i64)>, CorruptRecord> {
    let bad = |reason: String| {
        CorruptRecord::new(
            format!("counter cell {:?}", String::from_utf8_lossy(cell)),
            reason,
        )
    };
    let mut input = linkflow_core::compact::Input::new(value);
    let count = input
        .count("counters")
        .map_err(|error| bad(error.to_string()))?;
    let mut counters: Vec<(Vec<u8>, i64)> = Vec::with_capacity(count.min(4_096));
    for _ in 0..count {
        let name = input
            .bytes("counter name")
            .map_err(|error| bad(error.to_string()))?;
        let raw = input
            .varint("counter value")
            .map_err(|error| bad(error.to_string()))?;
        let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
        if value == 0 {
            return Err(bad(format!(
                "counter {:?} is stored at zero",
                String::from_utf8_lossy(name)
            )));
        }
        if counters
            .last()
            .is_some_and(|(last, _)| last.as_slice() >= name)
        {
            return Err(bad("its counters are not in name order".into()));
        }
        counters.push((name.to_vec(), value));
    }
    input.finish().map_err(|error| bad(error.to_string()))?;
    Ok(counters)
}

/// A counter cell's value: its counters (in name order, none at zero).
pub(crate) fn cell_value(counters: &[(Vec<u8>, i64)]) -> Vec<u8> {
    let mut out = Output::default();
    out.varint(counters.len() as u64);
    for (name, value) in counters {
        out.bytes(name);
        out.varint(((value << 1) ^ (value >> 63)) as u64);
    }
    out.into_bytes()
}

/// One stream's events in one commit: `events` consecutive versions from `first_version`,
/// at consecutive positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub stream: SessionId,
    pub first_version: Version,
    pub events: u32,
}

/// The value of a `G` key: the commit's runs in position order.
pub(crate) fn runs_value(runs: &[Run]) -> Vec<u8> {
    let mut out = Output::from(Vec::with_capacity(1 + runs.len() * 40));
    out.varint(runs.len() as u64);
    for run in runs {
        out.str(run.stream.as_str());
        out.varint(run.first_version.0);
        out.varint(u64::from(run.events));
    }
    out.into_bytes()
}

pub(crate) fn dedupe_value(hit: &DedupeHit) -> Vec<u8> {
    let mut out = Output::default();
    Target::from(hit).write(&mut out);
    out.into_bytes()
}

/// Reads a `len session` field at the start of `bytes`; returns the session and the rest.
fn read_session<'a>(what: &str, bytes: &'a [u8]) -> Result<(SessionId, &'a [u8]), CorruptRecord> {
    let bad = |reason: String| CorruptRecord::new(what, reason);
    if bytes.len() < 2 {
        return Err(bad("truncated session length".into()));
    }
    let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    let rest = &bytes[2..];
    if rest.len() < len {
        return Err(bad(format!(
            "session length {len} runs past the end ({} bytes left)",
            rest.len()
        )));
    }
    let text =
        std::str::from_utf8(&rest[..len]).map_err(|_| bad("session id is not UTF-8".into()))?;
    let session = SessionId::new(text).map_err(|error| bad(format!("bad session id: {error}")))?;
    Ok((session, &rest[len..]))
}

fn read_u64(what: &str, bytes: &[u8]) -> Result<u64, CorruptRecord> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| {
        CorruptRecord::new(what, format!("expected 8 bytes, found {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(array))
}

/// Splits an `S` key into its session and version.
pub(crate) fn parse_event_key(key: &[u8]) -> Result<(SessionId, Version), CorruptRecord> {
    let what = "event key";
    let (session, rest) = read_session(what, key.get(1..).unwrap_or_default())?;
    Ok((session, Version(read_u64(what, rest)?)))
}

/// Reads a `G` key's position.
pub(crate) fn parse_global_key(key: &[u8]) -> Result<Position, CorruptRecord> {
    Ok(Position(read_u64(
        "global key",
        key.get(1..).unwrap_or_default(),
    )?))
}

/// Reads a `G` value: the runs of the commit that starts at `first`.
pub(crate) fn parse_runs(first: Position, value: &[u8]) -> Result<Vec<Run>, CorruptRecord> {
    let what = format!("global index entry at position {first}");
    let runs = read_whole(&what, "value", value, |input| {
        let count = input.count("run count")?;
        if count == 0 {
            return Err(input.error("run count", "no run"));
        }
        let mut runs = Vec::with_capacity(count);
        for _ in 0..count {
            let stream = input.str("run stream")?;
            let stream = SessionId::new(stream)
                .map_err(|error| input.error("run stream", error.to_string()))?;
            let first_version = Version(input.varint("run first version")?);
            let events = input.u32("run events")?;
            if events == 0 || first_version == Version::EMPTY {
                return Err(input.error("run", "empty run or version 0"));
            }
            if first_version.0.checked_add(u64::from(events)).is_none() {
                return Err(input.error("run", "a run's versions run past u64"));
            }
            runs.push(Run {
                stream,
                first_version,
                events,
            });
        }
        Ok(runs)
    })?;
    // Every position of the commit, and the one after its last, must be a u64: readers add
    // run lengths to positions without checking again.
    let total: u64 = runs.iter().map(|run| u64::from(run.events)).sum();
    if first == Position::START || first.0.checked_add(total).is_none() {
        return Err(CorruptRecord::new(
            what,
            format!("{total} events from position {first} run past u64"),
        ));
    }
    Ok(runs)
}

/// Reads a `D` value of `stream`.
pub(crate) fn parse_dedupe_value(
    stream: &SessionId,
    key: &DedupeKey,
    value: &[u8],
) -> Result<DedupeHit, CorruptRecord> {
    let what = format!("dedupe entry {key} of `{stream}`");
    read_whole(&what, "value", value, Target::read).map(|target| target.hit(stream))
}

/// Splits a `D` key into its session and dedupe key.
pub(crate) fn parse_dedupe_key(key: &[u8]) -> Result<(SessionId, DedupeKey), CorruptRecord> {
    let (session, rest) = read_session("dedupe key", key.get(1..).unwrap_or_default())?;
    let bytes: [u8; 16] = rest
        .try_into()
        .map_err(|_| CorruptRecord::new("dedupe key", "the key is not 16 bytes"))?;
    Ok((session, DedupeKey::from_bytes(bytes)))
}

/// Splits a `K` key into its session.
pub(crate) fn parse_list_key(key: &[u8]) -> Result<SessionId, CorruptRecord> {
    let bad = |reason: String| CorruptRecord::new("stream head key", reason);
    let text = std::str::from_utf8(key.get(1..).unwrap_or_default())
        .map_err(|_| bad("the session id is not UTF-8".into()))?;
    SessionId::new(text).map_err(|error| bad(format!("bad session id: {error}")))
}

/// Whether `key` is the `S` key of `session`'s `version`, compared in place (a full scan checks
/// every record against its key without allocating).
pub(crate) fn is_event_key(key: &[u8], session: &SessionId, version: Version) -> bool {
    let id = session.as_str().as_bytes();
    key.len() == 3 + id.len() + 8
        && key[0] == EVENT
        && key[1..3] == (id.len() as u16).to_be_bytes()
        && &key[3..3 + id.len()] == id
        && key[3 + id.len()..] == version.0.to_be_bytes()
}

/// Describes an `S` record for error messages.
pub(crate) fn describe_event(session: &SessionId, version: Version) -> String {
    format!("event `{session}` version {version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SessionId {
        SessionId::new(text).unwrap()
    }

    #[test]
    fn a_session_id_is_never_a_key_prefix_of_another() {
        let short = session_prefix(EVENT, &id("acct-1"));
        let long = event_key(&id("acct-10"), Version(1));
        assert!(!long.starts_with(&short));
    }

    #[test]
    fn an_event_key_matches_only_its_own_session_and_version() {
        let key = event_key(&id("acct-1"), Version(3));
        assert!(is_event_key(&key, &id("acct-1"), Version(3)));
        assert!(!is_event_key(&key, &id("acct-1"), Version(4)));
        assert!(!is_event_key(&key, &id("acct-10"), Version(3)));
        assert!(!is_event_key(&key, &id("acct-"), Version(3)));
        assert!(!is_event_key(
            &key[..key.len() - 1],
            &id("acct-1"),
            Version(3)
        ));
        let mut other_tag = key.clone();
        other_tag[0] = DEDUPE;
        assert!(!is_event_key(&other_tag, &id("acct-1"), Version(3)));
    }

    #[test]
    fn versions_sort_numerically_and_keys_round_trip() {
        let session = id("s");
        assert!(event_key(&session, Version(2)) < event_key(&session, Version(10)));
        assert_eq!(
            parse_event_key(&event_key(&session, Version(300))).unwrap(),
            (session.clone(), Version(300))
        );
        let runs = vec![
            Run {
                stream: session.clone(),
                first_version: Version(7),
                events: 3,
            },
            Run {
                stream: id("other"),
                first_version: Version(1),
                events: 1,
            },
        ];
        assert_eq!(parse_runs(Position(1), &runs_value(&runs)).unwrap(), runs);
        let hit = DedupeHit {
            stream: session.clone(),
            version: Version(3),
            position: Position(9),
        };
        let key = DedupeKey::derive(&[b"x"]);
        assert_eq!(
            parse_dedupe_value(&session, &key, &dedupe_value(&hit)).unwrap(),
            hit
        );
        assert_eq!(
            parse_dedupe_key(&dedupe_key(&session, &key)).unwrap(),
            (session, key)
        );
    }

    #[test]
    fn truncated_values_are_errors_not_panics() {
        let session = id("s");
        for bytes in [
            &b""[..],
            &[0, 9, b'a'],
            &[b'A', 1, 2],
            &[0xff; 40],
            &[0, 0, 0, 1, 0, 1],
        ] {
            let _ = parse_runs(Position(1), bytes);
            let _ = parse_dedupe_value(&session, &DedupeKey::derive(&[]), bytes);
            let _ = parse_dedupe_key(bytes);
            let _ = parse_event_key(bytes);
            let _ = parse_list_key(bytes);
        }
        // One run whose stream id claims 9 bytes and has 1; no run at all.
        assert!(parse_runs(Position(1), &[1, 9, b'a']).is_err());
        assert!(parse_runs(Position(1), &[0]).is_err());
        let hit = DedupeHit {
            stream: session.clone(),
            version: Version(300),
            position: Position(1 << 40),
        };
        let value = dedupe_value(&hit);
        let key = DedupeKey::derive(&[]);
        assert_eq!(parse_dedupe_value(&session, &key, &value).unwrap(), hit);
        let error = parse_dedupe_value(&session, &key, &[value.as_slice(), &[0]].concat());
        assert!(error.unwrap_err().reason.contains("left over"));
    }

    /// Finding 6 of issue 25: a damaged `G` key or value whose positions or versions would run
    /// past u64 is a `CorruptRecord`, so no reader's addition can overflow.
    #[test]
    fn runs_that_would_overflow_are_corrupt() {
        let run = |first_version: u64, events: u32| Run {
            stream: id("s"),
            first_version: Version(first_version),
            events,
        };
        let value = runs_value(&[run(1, 3)]);
        assert!(parse_runs(Position(u64::MAX - 3), &value).is_ok());
        let error = parse_runs(Position(u64::MAX - 1), &value).unwrap_err();
        assert!(error.reason.contains("run past u64"), "{error}");
        assert!(parse_runs(Position(0), &value).is_err());
        let error = parse_runs(Position(1), &runs_value(&[run(u64::MAX, 1)])).unwrap_err();
        assert!(error.reason.contains("versions run past u64"), "{error}");
    }
}

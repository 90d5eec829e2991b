//! The engine's indexes and counters: what each stream's state adds to them (its
//! [`Projection`]), the key layout, and the changes a commit writes when a state changes.
//!
//! Every key is written in the commit of the events whose fold it derives from (the writer
//! diffs a stream's projection before and after the group), so they are never stale; `verify`
//! recomputes them from a fold of the log. The layout is in `docs/indexes.md`:
//!
//! | family | key                                   | one per                                  |
//! |--------|---------------------------------------|------------------------------------------|
//! | `p`    | `p` phase-rank id                     | session                                  |
//! | `v`    | `v` len:u8 provider id                | session                                  |
//! | `i`    | `i` len:u16 institution id            | session naming an institution            |
//! | `u`    | `u` len:u16 external-user-id id       | session naming a user                    |
//! | `l`    | `l` last-event-time id                | open session (not succeeded or exited)   |
//! | `f`    | `f` first-event-time id               | session                                  |
//! | `r`    | `r` id                                | stream with rejected events (parked)     |
//! | `q`    | `q` id                                | pending quarantine entry                 |
//!
//! Counters: `gp` phase-rank (sessions by phase), `gr` (rejected events), `gq` / `gQ`
//! (quarantine entries pending / released), `go` (open sessions with a last event time); and
//! the funnel's, per bucket of first event time and group: `H` hour or `D` day, then the bucket
//! (8 bytes), the provider (len:u8), the institution (0, or 1 len:u16 id), the link type (a
//! byte), then the metric (a tag, a phase rank, and a status, an error code or a sketch bin).
//!
//! Times are microseconds since the epoch as 8 big-endian bytes with the sign bit flipped, so
//! that byte order is time order. Text longer than [`MAX_INDEXED_TEXT`] bytes is indexed by
//! its first bytes; every query checks the whole value on the session itself.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use linkflow_core::aggregate::{contribution, Contribution, Group, Metric};
use linkflow_core::event::LinkType;
use linkflow_core::{Phase, Provider, Session, SessionId};
use linkflow_store::{Commit, CorruptRecord, IndexChange};

use crate::cache::SessionState;
use crate::folded::Folded;

/// Indexed text (institution and user ids, statuses, error codes) is cut to this many bytes in
/// keys.
pub(crate) const MAX_INDEXED_TEXT: usize = 256;

pub(crate) const PHASE: u8 = b'p';
pub(crate) const PROVIDER: u8 = b'v';
pub(crate) const INSTITUTION: u8 = b'i';
pub(crate) const USER: u8 = b'u';
pub(crate) const LAST_EVENT: u8 = b'l';
pub(crate) const FIRST_EVENT: u8 = b'f';
pub(crate) const PARKED: u8 = b'r';
pub(crate) const QUARANTINE: u8 = b'q';

/// The index families, for verify's report.
pub(crate) const FAMILIES: [(u8, &str); 8] = [
    (PHASE, "sessions by phase"),
    (PROVIDER, "sessions by provider"),
    (INSTITUTION, "sessions by institution"),
    (USER, "sessions by user"),
    (LAST_EVENT, "open sessions by last event time"),
    (FIRST_EVENT, "sessions by first event time"),
    (PARKED, "streams with rejected events"),
    (QUARANTINE, "pending quarantine entries"),
];

pub(crate) const GAUGE: u8 = b'g';
pub(crate) const HOURLY: u8 = b'H';
pub(crate) const DAILY: u8 = b'D';

pub(crate) const HOUR_MICROS: i64 = 3_600_000_000;
pub(crate) const DAY_MICROS: i64 = 24 * HOUR_MICROS;

/// A time as index bytes.
pub(crate) fn time_bytes(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn cut(text: &str) -> &[u8] {
    let bytes = text.as_bytes();
    &bytes[..bytes.len().min(MAX_INDEXED_TEXT)]
}

fn push_text16(key: &mut Vec<u8>, text: &str) {
    let text = cut(text);
    key.extend_from_slice(&(text.len() as u16).to_be_bytes());
    key.extend_from_slice(text);
}

/// The prefix of every key of `family` for `value` (an institution or user id).
pub(crate) fn text_prefix(family: u8, value: &str) -> Vec<u8> {
    let mut key = vec![family];
    push_text16(&mut key, value);
    key
}

/// The prefix of the sessions of one phase.
pub(crate) fn phase_prefix(phase: Phase) -> Vec<u8> {
    vec![PHASE, phase.rank()]
}

/// The prefix of the sessions of one provider.
pub(crate) fn provider_prefix(provider: Provider) -> Vec<u8> {
    let name = provider.as_str().as_bytes();
    let mut key = vec![PROVIDER, name.len() as u8];
    key.extend_from_slice(name);
    key
}

/// A time-ordered key: `family` time id.
pub(crate) fn time_key(family: u8, at: DateTime<Utc>, id: &SessionId) -> Vec<u8> {
    let mut key = vec![family];
    key.extend_from_slice(&time_bytes(micros(at)));
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// The first key of `family` at or after `micros`.
pub(crate) fn time_from(family: u8, micros: i64) -> Vec<u8> {
    let mut key = vec![family];
    key.extend_from_slice(&time_bytes(micros));
    key
}

/// The stream id at the end of an index key whose fixed part is `prefix_len` bytes.
pub(crate) fn id_of(key: &[u8], prefix_len: usize) -> Result<SessionId, CorruptRecord> {
    let bad = |reason: &str| CorruptRecord {
        key: format!("index key {:?}", String::from_utf8_lossy(key)),
        reason: reason.to_owned(),
    };
    let tail = key.get(prefix_len..).ok_or_else(|| bad("is too short"))?;
    let text = std::str::from_utf8(tail).map_err(|_| bad("its stream id is not UTF-8"))?;
    SessionId::new(text).map_err(|error| bad(&format!("bad stream id: {error}")))
}

/// What one stream adds to the indexes and counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Projection {
    /// Index keys, sorted.
    pub keys: Vec<Vec<u8>>,
    /// Gauge counters.
    pub gauges: Vec<(Vec<u8>, i64)>,
    /// The session's funnel contribution.
    pub funnel: Option<Contribution>,
}

/// The projection of `stream`'s state (nothing for a stream without events).
pub(crate) fn project(stream: &SessionId, state: &SessionState) -> Projection {
    let mut projection = Projection::default();
    let folded = &state.folded;
    if folded.version().0 == 0 {
        return projection;
    }
    let id = stream.as_str().as_bytes();
    let keyed = |mut prefix: Vec<u8>| {
        prefix.extend_from_slice(id);
        prefix
    };
    let rejected = folded.rejected();
    if rejected > 0 {
        projection.keys.push(keyed(vec![PARKED]));
        projection
            .gauges
            .push((vec![GAUGE, b'r'], i64::from(rejected)));
    }
    match folded {
        Folded::Session(timeline) => {
            let session = &timeline.state;
            session_keys(stream, state.provider, session, &mut projection, keyed);
            projection.funnel = Some(contribution(state.provider, session));
        }
        Folded::Quarantine(Some(entry)) => {
            if entry.is_pending() {
                projection.keys.push(keyed(vec![QUARANTINE]));
                projection.gauges.push((vec![GAUGE, b'q'], 1));
            } else {
                projection.gauges.push((vec![GAUGE, b'Q'], 1));
            }
        }
        Folded::Account { .. } | Folded::Merchant { .. } | Folded::Quarantine(None) => {}
    }
    projection.keys.sort();
    projection.gauges.sort();
    projection
}

fn session_keys(
    stream: &SessionId,
    provider: Provider,
    session: &Session,
    projection: &mut Projection,
    keyed: impl Fn(Vec<u8>) -> Vec<u8>,
) {
    let phase = session.phase();
    projection.keys.push(keyed(phase_prefix(phase)));
    projection.gauges.push((vec![GAUGE, b'p', phase.rank()], 1));
    projection.keys.push(keyed(provider_prefix(provider)));
    if let Some(institution) = session.institution() {
        projection
            .keys
            .push(keyed(text_prefix(INSTITUTION, &institution.id)));
    }
    if let Some(user) = session.external_user_id() {
        projection.keys.push(keyed(text_prefix(USER, user)));
    }
    if let Some(first) = session.first_event_at() {
        projection.keys.push(time_key(FIRST_EVENT, first, stream));
    }
    if !phase.is_terminal() {
        if let Some(last) = session.last_event_at() {
            projection.keys.push(time_key(LAST_EVENT, last, stream));
            projection.gauges.push((vec![GAUGE, b'o'], 1));
        }
    }
}

/// Adds to `commit` what turns `before`'s index entries and counters into `after`'s.
pub(crate) fn diff(before: &Projection, after: &Projection, commit: &mut Commit) {
    if before == after {
        return;
    }
    for key in &before.keys {
        if after.keys.binary_search(key).is_err() {
            commit.index.push(IndexChange::Delete(key.clone()));
        }
    }
    for key in &after.keys {
        if before.keys.binary_search(key).is_err() {
            commit.index.push(IndexChange::Put(key.clone()));
        }
    }
    for (key, count) in &before.gauges {
        commit.counters.push((key.clone(), -count));
    }
    for (key, count) in &after.gauges {
        commit.counters.push((key.clone(), *count));
    }
    match (&before.funnel, &after.funnel) {
        (Some(old), Some(new)) if old.first_at == new.first_at && old.group == new.group => {
            // The common case: the same bucket and group, a few metrics changed.
            let mut delta: BTreeMap<&Metric, i64> = BTreeMap::new();
            for (metric, count) in &old.metrics {
                *delta.entry(metric).or_default() -= count;
            }
            for (metric, count) in &new.metrics {
                *delta.entry(metric).or_default() += count;
            }
            for (metric, count) in delta {
                if count != 0 {
                    push_funnel(commit, new.first_at, &new.group, metric, count);
                }
            }
        }
        (old, new) => {
            for (contribution, sign) in [(old, -1), (new, 1)] {
                if let Some(contribution) = contribution {
                    for (metric, count) in &contribution.metrics {
                        push_funnel(
                            commit,
                            contribution.first_at,
                            &contribution.group,
                            metric,
                            sign * count,
                        );
                    }
                }
            }
        }
    }
}

fn push_funnel(
    commit: &mut Commit,
    first_at: Option<DateTime<Utc>>,
    group: &Group,
    metric: &Metric,
    count: i64,
) {
    for (resolution, width) in [(HOURLY, HOUR_MICROS), (DAILY, DAY_MICROS)] {
        commit.counters.push((
            funnel_key(resolution, width, first_at, group, metric),
            count,
        ));
    }
}

/// The bucket (hour or day number) of a first event time; `i64::MIN` without one, so that
/// such sessions sort first and count only in funnels without a start.
pub(crate) fn bucket(first_at: Option<DateTime<Utc>>, width: i64) -> i64 {
    first_at.map_or(i64::MIN, |at| micros(at).div_euclid(width))
}

fn funnel_key(
    resolution: u8,
    width: i64,
    first_at: Option<DateTime<Utc>>,
    group: &Group,
    metric: &Metric,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(64);
    key.push(resolution);
    key.extend_from_slice(&time_bytes(bucket(first_at, width)));
    let provider = group.provider.as_str().as_bytes();
    key.push(provider.len() as u8);
    key.extend_from_slice(provider);
    match &group.institution {
        Some(institution) => {
            key.push(1);
            push_text16(&mut key, institution);
        }
        None => key.push(0),
    }
    key.push(match group.link_type {
        None => 0,
        Some(LinkType::Link) => 1,
        Some(LinkType::Relink) => 2,
        Some(LinkType::FailoverLink) => 3,
    });
    let (tag, phase, text, bin) = match metric {
        Metric::Sessions => (b'n', None, None, None),
        Metric::Reached(phase) => (b'a', Some(*phase), None, None),
        Metric::Succeeded => (b's', None, None, None),
        Metric::Exited => (b'x', None, None, None),
        Metric::ExitedAt(phase) => (b'y', Some(*phase), None, None),
        Metric::ExitStatus(phase, status) => (b't', Some(*phase), Some(status), None),
        Metric::Error(phase, code) => (b'e', Some(*phase), Some(code), None),
        Metric::Open(phase) => (b'o', Some(*phase), None, None),
        Metric::OpenUntimed(phase) => (b'w', Some(*phase), None, None),
        Metric::Duration(phase, bin) => (b'd', Some(*phase), None, Some(*bin)),
    };
    key.push(tag);
    if let Some(phase) = phase {
        key.push(phase.rank());
    }
    if let Some(text) = text {
        key.extend_from_slice(cut(text));
    }
    if let Some(bin) = bin {
        key.extend_from_slice(&((bin as u32) ^ (1 << 31)).to_be_bytes());
    }
    key
}

/// A funnel counter's key read back: its group and metric.
pub(crate) fn parse_funnel_key(key: &[u8]) -> Result<(Group, Metric), CorruptRecord> {
    let bad = |reason: &str| CorruptRecord {
        key: format!("funnel counter {:?}", String::from_utf8_lossy(key)),
        reason: reason.to_owned(),
    };
    let mut at = 9;
    let mut take = |n: usize| -> Result<&[u8], CorruptRecord> {
        let part = key.get(at..at + n).ok_or_else(|| bad("ends too early"))?;
        at += n;
        Ok(part)
    };
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| bad("holds text that is not UTF-8"))
    };
    let provider_len = usize::from(take(1)?[0]);
    let provider: Provider = std::str::from_utf8(take(provider_len)?)
        .ok()
        .and_then(|name| name.parse().ok())
        .ok_or_else(|| bad("names no known provider"))?;
    let institution = match take(1)?[0] {
        0 => None,
        1 => {
            let len = take(2)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            Some(text(take(len)?)?)
        }
        _ => return Err(bad("has a bad institution flag")),
    };
    let link_type = match take(1)?[0] {
        0 => None,
        1 => Some(LinkType::Link),
        2 => Some(LinkType::Relink),
        3 => Some(LinkType::FailoverLink),
        _ => return Err(bad("has a bad link type")),
    };
    let tag = take(1)?[0];
    let mut phase = || -> Result<Phase, CorruptRecord> {
        let rank = take(1)?[0];
        Phase::ALL
            .iter()
            .copied()
            .find(|phase| phase.rank() == rank)
            .ok_or_else(|| bad("names no phase"))
    };
    let metric = match tag {
        b'n' => Metric::Sessions,
        b'a' => Metric::Reached(phase()?),
        b's' => Metric::Succeeded,
        b'x' => Metric::Exited,
        b'y' => Metric::ExitedAt(phase()?),
        b'o' => Metric::Open(phase()?),
        b'w' => Metric::OpenUntimed(phase()?),
        b't' | b'e' | b'd' => {
            let phase = phase()?;
            let rest = key.get(at..).unwrap_or_default();
            match tag {
                b't' => Metric::ExitStatus(phase, text(rest)?),
                b'e' => Metric::Error(phase, text(rest)?),
                _ => {
                    let bytes: [u8; 4] = rest.try_into().map_err(|_| bad("has a bad bin"))?;
                    Metric::Duration(phase, (u32::from_be_bytes(bytes) ^ (1 << 31)) as i32)
                }
            }
        }
        _ => return Err(bad("has an unknown metric")),
    };
    let group = Group {
        provider,
        institution,
        link_type,
    };
    Ok((group, metric))
}

/// Every counter `projection` holds, with its count (for verify).
pub(crate) fn counters_of(projection: &Projection, out: &mut BTreeMap<Vec<u8>, i64>) {
    let mut commit = Commit::default();
    diff(&Projection::default(), projection, &mut commit);
    for (key, count) in commit.counters {
        *out.entry(key).or_default() += count;
    }
}

/// The end (exclusive) of the keys starting with `prefix`; `None` when none is above it.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Every key of the index starts with a family byte below 0xff.
    vec![u8::MAX]
}

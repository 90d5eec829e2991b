//! The engine's indexes and counters: what each stream's state adds to them (its
//! [`Projection`]), the key layout, and the changes a commit writes when a state changes.
//!
//! Every key is written in the commit of the events whose fold it derives from (the writer
//! diffs a stream's projection before and after the group), so they are never stale; `verify`
//! recomputes them from a fold of the log. The layout is in `docs/indexes.md`:
//!
//! | family | key                                   | one per                                  |
//! |--------|---------------------------------------|------------------------------------------|
//! | `p`    | `p` phase-rank len:u8 provider first id | session                                |
//! | `i`    | `i` len:u16 institution first id      | session naming an institution            |
//! | `u`    | `u` len:u16 external-user-id first id | session naming a user                    |
//! | `l`    | `l` last-event-minute id              | open session not declared abandoned      |
//! | `a`    | `a` last-event-minute id              | open session declared abandoned (marker) |
//! | `f`    | `f` first-event-time id               | session                                  |
//! | `r`    | `r` id                                | stream with rejected events (parked)     |
//! | `q`    | `q` id                                | pending quarantine entry                 |
//!
//! Counters, by cell: the cell `g` holds the gauges, named `p` phase-rank (sessions by
//! phase), `r` (rejected events), `q` / `Q` (quarantine entries pending / released), `o`
//! (open sessions with a last event time). A funnel cell is one bucket of first event time and
//! one group: `H` hour or `D` day, the bucket (8 bytes), the provider (len:u8), the
//! institution (0, or 1 len:u16 id), the link type (a byte); its counters are named by metric
//! (a tag, a phase rank, and a status, an error code or a sketch bin).
//!
//! Times are microseconds since the epoch as 8 big-endian bytes with the sign bit flipped, so
//! that byte order is time order; `first` is the session's first event time (all zero bytes
//! without one), so a phase's, an institution's or a user's sessions sort by when they began. Text longer than [`MAX_INDEXED_TEXT`] bytes is indexed by
//! its first bytes; every query checks the whole value on the session itself.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use linkflow_core::aggregate::{contribution, Contribution, Group, Metric};
use linkflow_core::event::LinkType;
use linkflow_core::{Phase, Provider, SessionId};
use linkflow_store::{Commit, CorruptRecord, CounterDelta, IndexChange};

use crate::cache::SessionState;
use crate::folded::Folded;

/// Indexed text (institution and user ids, statuses, error codes) is cut to this many bytes in
/// keys.
pub(crate) const MAX_INDEXED_TEXT: usize = 256;

pub(crate) const PHASE: u8 = b'p';
pub(crate) const INSTITUTION: u8 = b'i';
pub(crate) const USER: u8 = b'u';
pub(crate) const LAST_EVENT: u8 = b'l';
pub(crate) const ABANDONED: u8 = b'a';
pub(crate) const FIRST_EVENT: u8 = b'f';
pub(crate) const PARKED: u8 = b'r';
pub(crate) const QUARANTINE: u8 = b'q';

/// The index families, for verify's report.
pub(crate) const FAMILIES: [(u8, &str); 8] = [
    (PHASE, "sessions by phase and provider"),
    (INSTITUTION, "sessions by institution"),
    (USER, "sessions by user"),
    (LAST_EVENT, "open sessions by last event time"),
    (ABANDONED, "sessions declared abandoned by last event time"),
    (FIRST_EVENT, "sessions by first event time"),
    (PARKED, "streams with rejected events"),
    (QUARANTINE, "pending quarantine entries"),
];

pub(crate) const GAUGE: u8 = b'g';
pub(crate) const HOURLY: u8 = b'H';
pub(crate) const DAILY: u8 = b'D';

pub(crate) const HOUR_MICROS: i64 = 3_600_000_000;

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

/// The prefix of the sessions of one phase and provider (one session costs one key for
/// both: a provider's sessions are its prefix under each phase).
pub(crate) fn phase_provider_prefix(phase: Phase, provider: Provider) -> Vec<u8> {
    let name = provider.as_str().as_bytes();
    let mut key = vec![PHASE, phase.rank(), name.len() as u8];
    key.extend_from_slice(name);
    key
}

/// The stream id at the end of an index key.
pub(crate) fn id_in(key: &[u8]) -> Result<SessionId, CorruptRecord> {
    let len16 = |at: usize| {
        key.get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let prefix = match key.first().copied() {
        Some(PHASE) => key.get(2).map(|len| 3 + usize::from(*len) + 8),
        Some(INSTITUTION | USER) => len16(1).map(|len| 3 + len + 8),
        Some(LAST_EVENT | ABANDONED | FIRST_EVENT) => Some(9),
        Some(PARKED | QUARANTINE) => Some(1),
        _ => None,
    };
    id_of(key, prefix.unwrap_or(usize::MAX))
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

/// Last event times are indexed to the minute: a session's key moves once a minute at most,
/// not with every event; every reader checks the exact time on the session.
pub(crate) const LAST_EVENT_GRAIN_MICROS: i64 = 60_000_000;

/// The start of the minute of a time, as the last-event-time index holds it.
pub(crate) fn grain_floor(micros: i64) -> i64 {
    micros.div_euclid(LAST_EVENT_GRAIN_MICROS) * LAST_EVENT_GRAIN_MICROS
}

/// The indexed facts of a session.
#[derive(Debug, Clone, PartialEq)]
struct SessionFacts {
    phase: Phase,
    provider: Provider,
    institution: Option<String>,
    user: Option<String>,
    /// First event time, microseconds.
    first: Option<i64>,
    /// Last event time to the minute, while the session is open and has one.
    open_since: Option<i64>,
    /// The engine declared it abandoned ([`linkflow_core::Session::abandoned_at`]).
    abandoned: bool,
}

/// What one stream adds to the indexes and counters, as the facts they are built from (keys
/// are built only for what changes).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Projection {
    session: Option<SessionFacts>,
    rejected: u32,
    /// `Some(pending)` for a quarantine entry.
    quarantine: Option<bool>,
    /// The session's funnel contribution.
    funnel: Option<Contribution>,
}

/// The projection of a stream's state (nothing for a stream without events).
pub(crate) fn project(state: &SessionState) -> Projection {
    let mut projection = Projection::default();
    let folded = &state.folded;
    if folded.version().0 == 0 {
        return projection;
    }
    projection.rejected = folded.rejected();
    match folded {
        Folded::Session(timeline) => {
            let session = &timeline.state;
            let phase = session.phase();
            projection.session = Some(SessionFacts {
                phase,
                provider: state.provider,
                institution: session.institution().map(|i| i.id.clone()),
                user: session.external_user_id().map(str::to_owned),
                first: session.first_event_at().map(micros),
                open_since: (!phase.is_terminal())
                    .then(|| session.last_event_at())
                    .flatten()
                    .map(|last| grain_floor(micros(last))),
                abandoned: session.abandoned_at().is_some(),
            });
            projection.funnel = Some(contribution(state.provider, session));
        }
        Folded::Quarantine(Some(entry)) => projection.quarantine = Some(entry.is_pending()),
        Folded::Account { .. }
        | Folded::Merchant { .. }
        | Folded::Quarantine(None)
        | Folded::Erasure { .. } => {}
    }
    projection
}

fn keyed(mut prefix: Vec<u8>, id: &SessionId) -> Vec<u8> {
    prefix.extend_from_slice(id.as_str().as_bytes());
    prefix
}

/// `prefix`, the session's first event time (the earliest time there is, without one), then
/// its id: a family's sessions of one value sorted by when they began, so that the sessions a
/// commit creates are neighbours in the index (on sled, a few packed runs to rewrite, not one
/// per session, whatever their ids look like).
fn first_keyed(mut prefix: Vec<u8>, first: Option<i64>, id: &SessionId) -> Vec<u8> {
    prefix.extend_from_slice(&time_bytes(first.unwrap_or(i64::MIN)));
    keyed(prefix, id)
}

fn time_keyed(family: u8, micros: i64, id: &SessionId) -> Vec<u8> {
    keyed(time_from(family, micros), id)
}

/// The index keys of one family a projection holds.
fn family_keys(projection: &Projection, family: u8, id: &SessionId) -> Option<Vec<u8>> {
    let session = projection.session.as_ref();
    match family {
        PHASE => {
            session.map(|s| first_keyed(phase_provider_prefix(s.phase, s.provider), s.first, id))
        }
        INSTITUTION => session.and_then(|s| {
            let institution = s.institution.as_deref()?;
            Some(first_keyed(
                text_prefix(INSTITUTION, institution),
                s.first,
                id,
            ))
        }),
        USER => session.and_then(|s| {
            let user = s.user.as_deref()?;
            Some(first_keyed(text_prefix(USER, user), s.first, id))
        }),
        FIRST_EVENT => session
            .and_then(|s| s.first)
            .map(|at| time_keyed(FIRST_EVENT, at, id)),
        LAST_EVENT => session
            .filter(|s| !s.abandoned)
            .and_then(|s| s.open_since)
            .map(|at| time_keyed(LAST_EVENT, at, id)),
        ABANDONED => session
            .filter(|s| s.abandoned)
            .and_then(|s| s.open_since)
            .map(|at| time_keyed(ABANDONED, at, id)),
        PARKED => (projection.rejected > 0).then(|| keyed(vec![PARKED], id)),
        QUARANTINE => (projection.quarantine == Some(true)).then(|| keyed(vec![QUARANTINE], id)),
        _ => None,
    }
}

/// Every index key a projection holds (for verify).
pub(crate) fn keys_of(projection: &Projection, id: &SessionId) -> Vec<Vec<u8>> {
    FAMILIES
        .iter()
        .filter_map(|(family, _)| family_keys(projection, *family, id))
        .collect()
}

/// The gauge counters (names in the cell `g`) a projection adds to.
fn gauges(projection: &Projection) -> Vec<(Vec<u8>, i64)> {
    let mut gauges = Vec::new();
    if projection.rejected > 0 {
        gauges.push((vec![b'r'], i64::from(projection.rejected)));
    }
    if let Some(session) = &projection.session {
        gauges.push((vec![b'p', session.phase.rank()], 1));
        if session.open_since.is_some() {
            gauges.push((vec![b'o'], 1));
        }
    }
    match projection.quarantine {
        Some(true) => gauges.push((vec![b'q'], 1)),
        Some(false) => gauges.push((vec![b'Q'], 1)),
        None => {}
    }
    gauges
}

/// A commit's funnel counter deltas, merged as the writer adds them: by hourly cell (the
/// daily one derives from it) and metric, so that the many sessions of one group and hour in
/// a commit write each counter once.
#[derive(Debug, Default)]
pub(crate) struct FunnelDeltas {
    hourly: HashMap<Vec<u8>, HashMap<Vec<u8>, i64>>,
    cell: Vec<u8>,
    name: Vec<u8>,
}

impl FunnelDeltas {
    fn add(&mut self, contribution: &Contribution, metric: &Metric, count: i64) {
        self.cell.clear();
        funnel_prefix(
            &mut self.cell,
            HOURLY,
            bucket(contribution.first_at, HOUR_MICROS),
            &contribution.group,
        );
        self.name.clear();
        push_metric(&mut self.name, metric);
        let cell = match self.hourly.get_mut(&self.cell[..]) {
            Some(cell) => cell,
            None => self.hourly.entry(self.cell.clone()).or_default(),
        };
        match cell.get_mut(&self.name[..]) {
            Some(delta) => *delta += count,
            None => {
                cell.insert(self.name.clone(), count);
            }
        }
    }

    /// Moves the merged deltas into `commit`: each hourly counter and its daily one.
    pub(crate) fn flush(&mut self, commit: &mut Commit) {
        let mut daily: HashMap<Vec<u8>, HashMap<Vec<u8>, i64>> = HashMap::new();
        for (cell, names) in self.hourly.drain() {
            let mut day = cell.clone();
            day[0] = DAILY;
            let hour =
                (u64::from_be_bytes(cell[1..9].try_into().expect("8 bytes")) ^ (1 << 63)) as i64;
            let day_bucket = if hour == i64::MIN {
                i64::MIN
            } else {
                hour.div_euclid(24)
            };
            day[1..9].copy_from_slice(&time_bytes(day_bucket));
            let day = daily.entry(day).or_default();
            for (name, delta) in names {
                if delta != 0 {
                    *day.entry(name.clone()).or_default() += delta;
                    commit
                        .counters
                        .push(CounterDelta::new(cell.clone(), name, delta));
                }
            }
        }
        for (cell, names) in daily {
            for (name, delta) in names {
                if delta != 0 {
                    commit
                        .counters
                        .push(CounterDelta::new(cell.clone(), name, delta));
                }
            }
        }
    }
}

/// Adds to `commit` what turns `before`'s index entries and gauges into `after`'s, and to
/// `funnel` the change of its funnel counters.
pub(crate) fn diff(
    id: &SessionId,
    before: &Projection,
    after: &Projection,
    commit: &mut Commit,
    funnel: &mut FunnelDeltas,
) {
    if before == after {
        return;
    }
    if before.session != after.session
        || before.rejected != after.rejected
        || before.quarantine != after.quarantine
    {
        for (family, _) in FAMILIES {
            let old = family_keys(before, family, id);
            let new = family_keys(after, family, id);
            if old != new {
                if let Some(old) = old {
                    commit.index.push(IndexChange::Delete(old));
                }
                if let Some(new) = new {
                    commit.index.push(IndexChange::Put(new));
                }
            }
        }
        let old = gauges(before);
        let new = gauges(after);
        if old != new {
            let gauge = |(name, count): (Vec<u8>, i64)| CounterDelta::new(vec![GAUGE], name, count);
            commit
                .counters
                .extend(old.into_iter().map(|(name, count)| gauge((name, -count))));
            commit.counters.extend(new.into_iter().map(gauge));
        }
    }
    match (&before.funnel, &after.funnel) {
        (Some(old), Some(new)) if old == new => {}
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
                    funnel.add(new, metric, count);
                }
            }
        }
        (old, new) => {
            for (contribution, sign) in [(old, -1), (new, 1)] {
                if let Some(contribution) = contribution {
                    for (metric, count) in &contribution.metrics {
                        funnel.add(contribution, metric, sign * count);
                    }
                }
            }
        }
    }
}

/// The bucket (hour or day number) of a first event time; `i64::MIN` without one, so that
/// such sessions sort first and count only in funnels without a start.
pub(crate) fn bucket(first_at: Option<DateTime<Utc>>, width: i64) -> i64 {
    first_at.map_or(i64::MIN, |at| micros(at).div_euclid(width))
}

fn funnel_prefix(key: &mut Vec<u8>, resolution: u8, bucket: i64, group: &Group) {
    key.push(resolution);
    key.extend_from_slice(&time_bytes(bucket));
    let provider = group.provider.as_str().as_bytes();
    key.push(provider.len() as u8);
    key.extend_from_slice(provider);
    match &group.institution {
        Some(institution) => {
            key.push(1);
            push_text16(key, institution);
        }
        None => key.push(0),
    }
    key.push(match group.link_type {
        None => 0,
        Some(LinkType::Link) => 1,
        Some(LinkType::Relink) => 2,
        Some(LinkType::FailoverLink) => 3,
    });
}

fn push_metric(key: &mut Vec<u8>, metric: &Metric) {
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
}

fn funnel_error(cell: &[u8], name: &[u8], reason: &str) -> CorruptRecord {
    CorruptRecord {
        key: format!(
            "funnel counter {:?} of cell {:?}",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(cell)
        ),
        reason: reason.to_owned(),
    }
}

/// The group a funnel cell counts.
pub(crate) fn parse_group(cell: &[u8]) -> Result<Group, CorruptRecord> {
    let bad = |reason: &str| funnel_error(cell, b"", reason);
    let mut at = 9;
    let mut take = |n: usize| -> Result<&[u8], CorruptRecord> {
        let part = cell
            .get(at..at + n)
            .ok_or_else(|| bad("its cell ends too early"))?;
        at += n;
        Ok(part)
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
            let text = take(len)?;
            Some(
                std::str::from_utf8(text)
                    .map_err(|_| bad("holds an institution that is not UTF-8"))?
                    .to_owned(),
            )
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
    if at != cell.len() {
        return Err(bad("its cell is longer than a group"));
    }
    Ok(Group {
        provider,
        institution,
        link_type,
    })
}

/// The metric a funnel counter's name says.
pub(crate) fn parse_metric(cell: &[u8], name: &[u8]) -> Result<Metric, CorruptRecord> {
    let bad = |reason: &str| funnel_error(cell, name, reason);
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| bad("holds text that is not UTF-8"))
    };
    let (&tag, rest) = name.split_first().ok_or_else(|| bad("is empty"))?;
    let phase_of = |rest: &[u8]| -> Result<(Phase, Vec<u8>), CorruptRecord> {
        let (&rank, rest) = rest.split_first().ok_or_else(|| bad("names no phase"))?;
        let phase = Phase::ALL
            .iter()
            .copied()
            .find(|phase| phase.rank() == rank)
            .ok_or_else(|| bad("names no phase"))?;
        Ok((phase, rest.to_vec()))
    };
    Ok(match tag {
        b'n' => Metric::Sessions,
        b's' => Metric::Succeeded,
        b'x' => Metric::Exited,
        b'a' => Metric::Reached(phase_of(rest)?.0),
        b'y' => Metric::ExitedAt(phase_of(rest)?.0),
        b'o' => Metric::Open(phase_of(rest)?.0),
        b'w' => Metric::OpenUntimed(phase_of(rest)?.0),
        b't' => {
            let (phase, rest) = phase_of(rest)?;
            Metric::ExitStatus(phase, text(&rest)?)
        }
        b'e' => {
            let (phase, rest) = phase_of(rest)?;
            Metric::Error(phase, text(&rest)?)
        }
        b'd' => {
            let (phase, rest) = phase_of(rest)?;
            let bytes: [u8; 4] = rest[..].try_into().map_err(|_| bad("has a bad bin"))?;
            Metric::Duration(phase, (u32::from_be_bytes(bytes) ^ (1 << 31)) as i32)
        }
        _ => return Err(bad("has an unknown metric")),
    })
}

/// Every counter `projection` holds, by cell and name, with its count (for verify).
pub(crate) fn counters_of(projection: &Projection, out: &mut BTreeMap<(Vec<u8>, Vec<u8>), i64>) {
    for (name, count) in gauges(projection) {
        *out.entry((vec![GAUGE], name)).or_default() += count;
    }
    if let Some(contribution) = &projection.funnel {
        let mut funnel = FunnelDeltas::default();
        for (metric, count) in &contribution.metrics {
            funnel.add(contribution, metric, *count);
        }
        let mut commit = Commit::default();
        funnel.flush(&mut commit);
        for CounterDelta { cell, name, delta } in commit.counters {
            *out.entry((cell, name)).or_default() += delta;
        }
    }
}

/// The end (exclusive) of the keys starting with `prefix` (every index key starts with a
/// family byte below 0xff, so `[0xff]` ends them all).
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn groups() -> Vec<Group> {
        vec![
            Group {
                provider: Provider::Plaid,
                institution: Some("ins_109508".into()),
                link_type: Some(LinkType::Relink),
            },
            Group {
                provider: Provider::Knot,
                institution: None,
                link_type: None,
            },
        ]
    }

    fn metrics() -> Vec<Metric> {
        vec![
            Metric::Sessions,
            Metric::Reached(Phase::Mfa),
            Metric::Succeeded,
            Metric::Exited,
            Metric::ExitedAt(Phase::Authenticating),
            Metric::ExitStatus(Phase::Opened, "(none)".into()),
            Metric::Error(Phase::Authenticating, "INVALID_CREDENTIALS".into()),
            Metric::Open(Phase::AccountsSelected),
            Metric::OpenUntimed(Phase::Created),
            Metric::Duration(Phase::Opened, -17),
            Metric::Duration(Phase::Opened, linkflow_core::aggregate::ZERO_BIN),
        ]
    }

    /// A funnel cell and a counter name read back as the group and metric they were written
    /// from.
    #[test]
    fn funnel_cells_and_names_read_back() {
        for group in groups() {
            let mut cell = Vec::new();
            funnel_prefix(&mut cell, HOURLY, 471_234, &group);
            assert_eq!(parse_group(&cell).unwrap(), group);
            for metric in metrics() {
                let mut name = Vec::new();
                push_metric(&mut name, &metric);
                assert_eq!(parse_metric(&cell, &name).unwrap(), metric);
            }
        }
    }

    /// Damaged cells and names are errors naming them: a cut cell, an unknown provider, a bad
    /// flag, trailing bytes, an empty name, an unknown metric or phase, a bad bin.
    #[test]
    fn damaged_funnel_cells_and_names_are_named_errors() {
        let mut cell = Vec::new();
        funnel_prefix(&mut cell, DAILY, 19_700, &groups()[0]);
        for bad in [
            &cell[..cell.len() - 1],
            &[&cell[..9], &[5][..], b"bogus", &[0, 0][..]].concat()[..],
            &[&cell[..], &[7][..]].concat()[..],
        ] {
            let error = parse_group(bad).unwrap_err();
            assert!(error.key.contains("funnel counter"), "{error}");
        }
        for bad in [&b""[..], b"Z", b"a\x63", b"d\x01\x00", b"e\x01\xff\xfe"] {
            let error = parse_metric(&cell, bad).unwrap_err();
            assert!(error.key.contains("of cell"), "{error}");
        }
    }

    proptest! {
        /// No bytes panic the funnel cell and name readers, or the index key reader.
        #[test]
        fn any_bytes_read_without_panicking(cell in proptest::collection::vec(any::<u8>(), 0..64),
                                            name in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse_group(&cell);
            let _ = parse_metric(&cell, &name);
            let _ = id_in(&cell);
        }
    }
}

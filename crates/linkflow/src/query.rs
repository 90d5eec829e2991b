//! Reading streams back: states from snapshot plus tail, histories, lists of sessions,
//! accounts and merchants.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use linkflow_core::{
    Account, AccountKey, AccountState, EventBody, MerchantStatus, Phase, Position, Provider,
    RuleKind, Session, SessionId, Version,
};
use linkflow_store::{EventStore, RawJson, Snapshot, StoredEvent, StreamRead, StreamStart};
use serde::Serialize;
use uuid::Uuid;

use crate::cache::SessionState;
use crate::error::EngineError;
use crate::folded::{decode_snapshot_state, Append, Folded, FoldedStream, StreamFolder};
use crate::folded::{decode_state_any_rules, Placement};
use crate::index;

/// Events read per store call when replaying a stream.
const READ_CHUNK: usize = 1_024;

/// A session as the engine knows it now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionView {
    /// The session's id.
    pub session_id: SessionId,
    /// Its provider.
    pub provider: Provider,
    /// Its folded state.
    pub state: Session,
    /// Events stored for it (accepted and rejected): its version.
    pub events: u64,
    /// How many of its events the fold rejects.
    pub rejected: u32,
    /// The version it was compacted at, if it was (`docs/privacy.md`): its events up to it are
    /// no longer stored, and every event after it is kept rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compacted_at: Option<Version>,
}

/// A linked account as the engine knows it now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountView {
    /// Which account.
    pub key: AccountKey,
    /// Its state.
    pub account: Account,
    /// How many of its events the fold rejects (operations before any link).
    pub rejected: u32,
}

/// One event of a stream's history, in the order the fold takes them (event-time order for
/// sessions and accounts, arrival order for merchant and quarantine streams), with what it
/// did or why it was rejected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// Its version in the stream: its arrival number.
    pub version: Version,
    /// Its global position.
    pub position: Position,
    /// Its id.
    pub event_id: Uuid,
    /// The canonical snake_case name (`unrecognized` for names no adapter knows).
    pub event: String,
    /// The name as the provider sent it.
    pub raw_name: Option<String>,
    /// The provider's time for it.
    pub event_time: Option<DateTime<Utc>>,
    /// When linkflow received it (shown; never used to order it).
    pub received_at: DateTime<Utc>,
    /// Whether the fold accepts it.
    pub accepted: bool,
    /// Why the fold rejects it, in words.
    pub rejection: Option<String>,
    /// It arrived after an event that the fold places after it.
    pub late: bool,
    /// The phase before it (session streams only).
    pub phase_before: Option<Phase>,
    /// The phase after it (session streams only; equal to `phase_before` for telemetry and
    /// rejected events).
    pub phase_after: Option<Phase>,
    /// The table row that took it; `None` for telemetry, unrecognized, rejected and
    /// non-session events.
    pub rule: Option<RuleKind>,
    /// The canonical event.
    pub body: EventBody,
    /// The payload as stored.
    pub raw: Option<RawJson>,
}

/// An event the fold of its stream rejects, with its stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedEvent {
    /// The stream (a session or an account).
    pub stream: SessionId,
    /// The event as its history shows it.
    #[serde(flatten)]
    pub entry: HistoryEntry,
}

/// The most rejected events one [`crate::Engine::rejected`] call returns.
pub const MAX_REJECTED_LISTED: usize = 1_000;

/// A page of a stream's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The page's entries, in the fold's order.
    pub entries: Vec<HistoryEntry>,
    /// Where the next page starts; `None` after the last entry.
    pub next: Option<Cursor>,
}

/// Up to `limit` (at most [`MAX_PAGE_SESSIONS`]) entries of a stream's history (in the order
/// its fold takes them) after `after`; `None` if the stream has no event. A cursor is a place
/// in that order: an event arriving between pages that sorts before it shifts what follows by
/// one, so a page can repeat the last entry of the one before.
pub(crate) fn history_page(
    store: &dyn EventStore,
    stream: &SessionId,
    limit: usize,
    after: Option<&Cursor>,
) -> Result<Option<HistoryPage>, EngineError> {
    let limit = limit.clamp(1, MAX_PAGE_SESSIONS);
    let skip = match after.map(Cursor::index_key).transpose()? {
        None => 0,
        Some([b'h', offset @ ..]) if offset.len() == 8 => {
            let offset = u64::from_be_bytes(offset.try_into().expect("8 bytes"));
            usize::try_from(offset).unwrap_or(usize::MAX)
        }
        Some(_) => {
            return Err(EngineError::WrongCursor {
                cursor: after.map(ToString::to_string).unwrap_or_default(),
            })
        }
    };
    let Some(history) = history(store, stream)? else {
        return Ok(None);
    };
    let total = history.len();
    let entries: Vec<HistoryEntry> = history.into_iter().skip(skip).take(limit).collect();
    let end = skip.saturating_add(entries.len());
    let next = (end < total).then(|| {
        let mut key = vec![b'h'];
        key.extend_from_slice(&(end as u64).to_be_bytes());
        Cursor(At::Index(key))
    });
    Ok(Some(HistoryPage { entries, next }))
}

/// Rejected events, in stream then event-time order, at most [`MAX_REJECTED_LISTED`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RejectedList {
    /// The events.
    pub events: Vec<RejectedEvent>,
    /// True when more are rejected than were listed.
    pub truncated: bool,
    /// Where the next page starts (a listing of every stream's: [`crate::Engine::rejected_page`]).
    #[serde(skip)]
    pub next: Option<Cursor>,
}

/// Which sessions [`crate::Engine::sessions`] returns. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only sessions in this phase.
    pub phase: Option<Phase>,
    /// Only sessions of this provider.
    pub provider: Option<Provider>,
    /// Only sessions whose last event time is at or after this.
    pub last_event_from: Option<DateTime<Utc>>,
    /// Only sessions whose last event time is before this.
    pub last_event_until: Option<DateTime<Utc>>,
    /// Only abandoned (`Some(true)`) or not abandoned (`Some(false)`) sessions, judged now
    /// with the engine's inactivity timeout.
    pub abandoned: Option<bool>,
    /// Only sessions whose institution is this id.
    pub institution: Option<String>,
    /// Only sessions of this end user (the integrator's id).
    pub external_user_id: Option<String>,
    /// Only sessions whose first event time is at or after this.
    pub first_event_from: Option<DateTime<Utc>>,
    /// Only sessions whose first event time is before this.
    pub first_event_until: Option<DateTime<Utc>>,
}

impl SessionFilter {
    fn matches(
        &self,
        provider: Provider,
        session: &Session,
        clock: (DateTime<Utc>, chrono::Duration),
    ) -> bool {
        self.abandoned.is_none_or(|wanted| {
            linkflow_core::funnel::abandoned(session, clock.0, clock.1) == wanted
        }) && self.phase.is_none_or(|phase| session.phase() == phase)
            && self.provider.is_none_or(|wanted| provider == wanted)
            && self
                .last_event_from
                .is_none_or(|from| session.last_event_at().is_some_and(|last| last >= from))
            && self
                .last_event_until
                .is_none_or(|until| session.last_event_at().is_some_and(|last| last < until))
            && self
                .first_event_from
                .is_none_or(|from| session.first_event_at().is_some_and(|first| first >= from))
            && self
                .first_event_until
                .is_none_or(|until| session.first_event_at().is_some_and(|first| first < until))
            && self.institution.as_deref().is_none_or(|wanted| {
                session
                    .institution()
                    .is_some_and(|institution| institution.id == wanted)
            })
            && self
                .external_user_id
                .as_deref()
                .is_none_or(|wanted| session.external_user_id() == Some(wanted))
    }
}

/// The most sessions one page holds ([`crate::Engine::sessions_page`]).
pub const MAX_PAGE_SESSIONS: usize = 1_000;

/// The most streams one page reads: a selective filter over a large store ends a page at this
/// many streams, with fewer sessions than asked and a cursor to go on from, so that one request
/// costs at most this much whatever the store holds.
pub const MAX_PAGE_SCAN: usize = 10_000;

/// Where a page ends: the next page starts after it. Opaque to callers: its text form
/// (`Display`, `FromStr`) is what the HTTP API and the CLI hand out. A page in stream id order
/// ends at a stream (`s1.`), a page read from an index at an index key (`i1.`); a cursor is
/// only good for the listing (and filter) that handed it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(At);

#[derive(Debug, Clone, PartialEq, Eq)]
enum At {
    Stream(SessionId),
    Index(Vec<u8>),
}

impl Cursor {
    /// The stream a page in id order ended at.
    fn stream(&self) -> Result<&SessionId, EngineError> {
        match &self.0 {
            At::Stream(id) => Ok(id),
            At::Index(_) => Err(EngineError::WrongCursor {
                cursor: self.to_string(),
            }),
        }
    }

    /// The index key a page read from an index ended at.
    fn index_key(&self) -> Result<&[u8], EngineError> {
        match &self.0 {
            At::Index(key) => Ok(key),
            At::Stream(_) => Err(EngineError::WrongCursor {
                cursor: self.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tag, bytes) = match &self.0 {
            At::Stream(id) => ("s1.", id.as_str().as_bytes()),
            At::Index(key) => ("i1.", &key[..]),
        };
        f.write_str(tag)?;
        for byte in bytes {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A text that is not a cursor this build hands out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cursor of this linkflow (pass the next_cursor of a previous page)")]
pub struct InvalidCursor(pub String);

impl std::str::FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidCursor(text.chars().take(80).collect());
        let (index, hex) = match (text.strip_prefix("s1."), text.strip_prefix("i1.")) {
            (Some(hex), _) => (false, hex),
            (None, Some(hex)) => (true, hex),
            (None, None) => return Err(invalid()),
        };
        if hex.len() % 2 != 0 || hex.len() > 2 * linkflow_store::MAX_INDEX_KEY_BYTES {
            return Err(invalid());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(hex.get(at..at + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| invalid())?;
        if index {
            return if bytes.is_empty() {
                Err(invalid())
            } else {
                Ok(Cursor(At::Index(bytes)))
            };
        }
        let id = String::from_utf8(bytes).map_err(|_| invalid())?;
        SessionId::new(id)
            .map(|id| Cursor(At::Stream(id)))
            .map_err(|_| invalid())
    }
}

/// One page of sessions, in session-id order.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPage {
    /// The page's sessions (at most the limit; fewer when the page ended at
    /// [`MAX_PAGE_SCAN`] streams or at the last one).
    pub sessions: Vec<SessionView>,
    /// Where the next page starts; `None` after the last stream.
    pub next: Option<Cursor>,
}

/// A page of the streams whose ids start with `prefix` (every stream for `""`), in id order
/// after `after`: up to `limit` of them that `keep` maps to an item, reading at most
/// [`MAX_PAGE_SCAN`] streams. The next page starts after the last stream read.
pub(crate) fn streams_page<T>(
    store: &dyn EventStore,
    prefix: &str,
    limit: usize,
    after: Option<&Cursor>,
    keep: &mut dyn FnMut(SessionId, Provider, Folded) -> Option<T>,
) -> Result<(Vec<T>, Option<Cursor>), EngineError> {
    let limit = limit.clamp(1, MAX_PAGE_SESSIONS);
    // The first id with the prefix sorts right after the prefix itself.
    let after = after.map(Cursor::stream).transpose()?;
    let start = match (after, SessionId::new(prefix)) {
        (Some(cursor), Ok(first)) if *cursor < first => Some(first),
        (Some(cursor), _) => Some(cursor.clone()),
        (None, Ok(first)) => Some(first),
        (None, Err(_)) => None,
    };
    let mut items = Vec::new();
    let mut scanned = 0;
    let mut last = None;
    let mut ended = true;
    let mut failed = None;
    store.for_each_snapshot(start.as_ref(), &mut |stream, snapshot| {
        if !stream.as_str().starts_with(prefix) {
            return ControlFlow::Break(());
        }
        scanned += 1;
        let state = match decode_snapshot(&snapshot) {
            Some(folded) => Some((snapshot.provider, folded)),
            None => match load_state(store, &stream) {
                Ok(state) => state.map(|state| (state.provider, state.folded)),
                Err(error) => {
                    failed = Some(error);
                    return ControlFlow::Break(());
                }
            },
        };
        if let Some(item) =
            state.and_then(|(provider, folded)| keep(stream.clone(), provider, folded))
        {
            items.push(item);
        }
        last = Some(stream);
        if items.len() == limit || scanned == MAX_PAGE_SCAN {
            ended = false;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if let Some(error) = failed {
        return Err(error);
    }
    Ok((
        items,
        if ended {
            None
        } else {
            last.map(|id| Cursor(At::Stream(id)))
        },
    ))
}

/// The index range a filter reads: the most selective indexed field it sets (user,
/// institution, abandoned, phase, first event window, provider), as the keys `[from, to)` and
/// where the stream id starts in each key; `None` when it sets none of them.
fn index_range(
    filter: &SessionFilter,
    clock: (DateTime<Utc>, chrono::Duration),
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let prefix = |prefix: Vec<u8>| {
        let end = index::prefix_end(&prefix);
        Some(vec![(prefix, end)])
    };
    if let Some(user) = &filter.external_user_id {
        return prefix(index::text_prefix(index::USER, user));
    }
    if let Some(institution) = &filter.institution {
        return prefix(index::text_prefix(index::INSTITUTION, institution));
    }
    if filter.abandoned == Some(true) {
        // Abandoned: declared so by the engine's marker (every one), or open and the last
        // event at or before now minus the timeout. The index holds minutes: the cutoff's
        // minute is read too, and each session checked exactly. Ranges in key order.
        let cutoff = index::grain_floor((clock.0 - clock.1).timestamp_micros());
        let declared = vec![index::ABANDONED];
        let declared_end = index::prefix_end(&declared);
        return Some(vec![
            (declared, declared_end),
            (
                vec![index::LAST_EVENT],
                index::time_from(
                    index::LAST_EVENT,
                    cutoff.saturating_add(index::LAST_EVENT_GRAIN_MICROS),
                ),
            ),
        ]);
    }
    if let Some(phase) = filter.phase {
        return prefix(match filter.provider {
            Some(provider) => index::phase_provider_prefix(phase, provider),
            None => index::phase_prefix(phase),
        });
    }
    if filter.first_event_from.is_some() || filter.first_event_until.is_some() {
        return Some(vec![first_event_range(filter)]);
    }
    if let Some(provider) = filter.provider {
        // A provider's sessions: its prefix under each phase, in phase order.
        return Some(
            Phase::ALL
                .iter()
                .map(|phase| {
                    let prefix = index::phase_provider_prefix(*phase, provider);
                    let end = index::prefix_end(&prefix);
                    (prefix, end)
                })
                .collect(),
        );
    }
    None
}

/// A page of the streams index ranges hold (in key order, the ranges too), after `after`: up
/// to `limit` that `keep` maps to an item, reading at most [`MAX_PAGE_SCAN`] keys. The next
/// page starts after the last key read.
pub(crate) fn index_streams_page<T>(
    store: &dyn EventStore,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    limit: usize,
    after: Option<&Cursor>,
    keep: &mut dyn FnMut(SessionId, SessionState) -> Option<T>,
) -> Result<(Vec<T>, Option<Cursor>), EngineError> {
    index_streams_walk(store, ranges, limit, after, false, keep)
}

/// [`index_streams_page`], the ranges walked forwards or (`descending`) from their ends: a
/// descending page resumes below its cursor's key.
fn index_streams_walk<T>(
    store: &dyn EventStore,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    limit: usize,
    after: Option<&Cursor>,
    descending: bool,
    keep: &mut dyn FnMut(SessionId, SessionState) -> Option<T>,
) -> Result<(Vec<T>, Option<Cursor>), EngineError> {
    let limit = limit.clamp(1, MAX_PAGE_SESSIONS);
    let resume = match after {
        Some(cursor) if descending => Some(cursor.index_key()?.to_vec()),
        Some(cursor) => {
            let mut next = cursor.index_key()?.to_vec();
            next.push(0);
            Some(next)
        }
        None => None,
    };
    let mut ranges = ranges;
    if descending {
        ranges.reverse();
    }
    let mut items = Vec::new();
    let mut scanned = 0;
    let mut last: Option<Vec<u8>> = None;
    let mut ended = true;
    let mut failed = None;
    for (from, to) in ranges {
        let (start, end) = match &resume {
            Some(below) if descending && *below <= from => continue,
            Some(below) if descending => (from, below.clone().min(to)),
            Some(next) if *next >= to => continue,
            Some(next) => (next.clone().max(from), to),
            None => (from, to),
        };
        let mut visit = |key: &[u8]| {
            scanned += 1;
            let found = index::id_in(key)
                .map_err(|error| EngineError::from(linkflow_store::StoreError::Corrupt(error)))
                .and_then(|id| Ok(load_state(store, &id)?.map(|state| (id, state))));
            match found {
                Ok(Some((id, state))) => items.extend(keep(id, state)),
                Ok(None) => {}
                Err(error) => {
                    failed = Some(error);
                    return ControlFlow::Break(());
                }
            }
            last = Some(key.to_vec());
            if items.len() == limit || scanned == MAX_PAGE_SCAN {
                ended = false;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        if descending {
            store.for_each_index_key_descending(&start, &end, &mut visit)?;
        } else {
            store.for_each_index_key(&start, &end, &mut visit)?;
        }
        if failed.is_some() || !ended {
            break;
        }
    }
    if let Some(error) = failed {
        return Err(error);
    }
    let next = if ended {
        None
    } else {
        last.map(|key| Cursor(At::Index(key)))
    };
    Ok((items, next))
}

/// A page of the sessions index ranges hold that `filter` keeps (every field checked on the
/// session itself).
fn index_page(
    store: &dyn EventStore,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    filter: &SessionFilter,
    limit: usize,
    after: Option<&Cursor>,
    clock: (DateTime<Utc>, chrono::Duration),
) -> Result<SessionPage, EngineError> {
    let (sessions, next) = index_streams_page(store, ranges, limit, after, &mut |id, state| {
        session_view(id, state.provider, state.folded)
            .filter(|view| filter.matches(state.provider, &view.state, clock))
    })?;
    Ok(SessionPage { sessions, next })
}

/// Up to `limit` sessions matching `filter` after `after`, reading at most [`MAX_PAGE_SCAN`]
/// streams or index keys: from an index when the filter sets an indexed field (in that
/// index's order: by first event time, then id, within a user, an institution, a phase or a
/// provider; by time for abandonment and first event windows), else every stream in id order.
/// A session that exists and matches for the whole paging is on exactly one page, whatever is
/// written meanwhile: its key does not move while it keeps matching (unless an event earlier
/// than its first arrives: see `Engine::sessions_page`), and pages start after the last key.
pub(crate) fn sessions_page(
    store: &dyn EventStore,
    filter: &SessionFilter,
    limit: usize,
    after: Option<&Cursor>,
    clock: (DateTime<Utc>, chrono::Duration),
) -> Result<SessionPage, EngineError> {
    if let Some(ranges) = index_range(filter, clock) {
        return index_page(store, ranges, filter, limit, after, clock);
    }
    let (sessions, next) = streams_page(
        store,
        "",
        limit,
        after,
        &mut |session_id, provider, folded| {
            session_view(session_id, provider, folded)
                .filter(|view| filter.matches(provider, &view.state, clock))
        },
    )?;
    Ok(SessionPage { sessions, next })
}

/// The first-event index keys of `filter`'s first-event window (all of them without one).
fn first_event_range(filter: &SessionFilter) -> (Vec<u8>, Vec<u8>) {
    let from = filter
        .first_event_from
        .map_or(i64::MIN, |at| at.timestamp_micros());
    let to = filter.first_event_until.map_or_else(
        || vec![index::FIRST_EVENT + 1],
        |at| index::time_from(index::FIRST_EVENT, at.timestamp_micros()),
    );
    (index::time_from(index::FIRST_EVENT, from), to)
}

/// Up to `limit` sessions matching `filter`, newest first by their first event time: the
/// first-event index walked from the end of `filter`'s first-event window (or from the end),
/// each session checked against the whole filter, at most [`MAX_PAGE_SCAN`] index keys read;
/// a page resumes below its cursor.
pub(crate) fn recent_sessions_page(
    store: &dyn EventStore,
    filter: &SessionFilter,
    limit: usize,
    before: Option<&Cursor>,
    clock: (DateTime<Utc>, chrono::Duration),
) -> Result<SessionPage, EngineError> {
    let ranges = vec![first_event_range(filter)];
    let (sessions, next) =
        index_streams_walk(store, ranges, limit, before, true, &mut |id, state| {
            session_view(id, state.provider, state.folded)
                .filter(|view| filter.matches(state.provider, &view.state, clock))
        })?;
    Ok(SessionPage { sessions, next })
}

/// Up to `limit` merchant availabilities (the streams `merchant:...`, a range of the store)
/// after `after`, and where the next page starts.
pub(crate) fn merchants_page(
    store: &dyn EventStore,
    limit: usize,
    after: Option<&Cursor>,
) -> Result<(Vec<MerchantStatus>, Option<Cursor>), EngineError> {
    streams_page(
        store,
        "merchant:",
        limit,
        after,
        &mut |_, _, folded| match folded {
            Folded::Merchant { status, .. } => status,
            _ => None,
        },
    )
}

/// One page of linked accounts, in stream-id order.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountPage {
    /// The page's accounts (existing ones: not `absent`).
    pub accounts: Vec<AccountView>,
    /// Where the next page starts; `None` after the last account.
    pub next: Option<Cursor>,
}

/// Up to `limit` existing accounts whose stream ids start with `prefix` (an account stream id
/// starts `account:`; one user's accounts of one provider share
/// `account:<provider>:<user id length>:<user id>:`), after `after`.
pub(crate) fn accounts_page(
    store: &dyn EventStore,
    prefix: &str,
    limit: usize,
    after: Option<&Cursor>,
) -> Result<AccountPage, EngineError> {
    let (accounts, next) = streams_page(store, prefix, limit, after, &mut |_, _, folded| {
        account_view(folded)
    })?;
    Ok(AccountPage { accounts, next })
}

/// One account stream's view, `None` when it is not an existing account.
pub(crate) fn account(
    store: &dyn EventStore,
    stream: &SessionId,
) -> Result<Option<AccountView>, EngineError> {
    Ok(load_state(store, stream)?.and_then(|state| account_view(state.folded)))
}

/// A session stream's view, `None` for other streams.
fn session_view(session_id: SessionId, provider: Provider, folded: Folded) -> Option<SessionView> {
    match folded {
        Folded::Session(timeline) => Some(SessionView {
            session_id,
            provider,
            events: timeline.arrivals,
            rejected: timeline.rejected,
            compacted_at: compacted_at(&timeline),
            state: timeline.state,
        }),
        _ => None,
    }
}

/// An existing account's view (not `absent`), `None` for other streams.
fn account_view(folded: Folded) -> Option<AccountView> {
    match folded {
        Folded::Account { key, timeline } if timeline.state.state() != AccountState::Absent => {
            Some(AccountView {
                rejected: timeline.rejected,
                key,
                account: timeline.state,
            })
        }
        _ => None,
    }
}

/// Decodes a snapshot's state; `None` when this build cannot use it or it does not match its
/// version (the caller folds the stream from its log).
pub(crate) fn decode_snapshot(snapshot: &Snapshot) -> Option<Folded> {
    decode_snapshot_state(&snapshot.state).filter(|folded| folded.version() == snapshot.version)
}

fn replay_error(stream: &SessionId, (version, reason): (u64, String)) -> EngineError {
    EngineError::Replay {
        session: stream.clone(),
        version: Version(version),
        reason,
    }
}

/// The version a session was compacted at, if it was.
pub(crate) fn compacted_at<M>(timeline: &linkflow_core::timeline::Timeline<M>) -> Option<Version> {
    (timeline.compacted > 0).then_some(Version(timeline.compacted))
}

/// The stream's events up to version `until` (all of them with `None`), in arrival order
/// (those of a compacted stream from the first after its compaction).
fn read_events(
    store: &dyn EventStore,
    stream: &SessionId,
    until: Option<Version>,
) -> Result<Vec<StoredEvent>, EngineError> {
    let mut events: Vec<StoredEvent> = Vec::new();
    let mut after = Version::EMPTY;
    loop {
        let limit = match until {
            Some(until) if until <= after => return Ok(events),
            Some(until) => READ_CHUNK.min((until.0 - after.0) as usize),
            None => READ_CHUNK,
        };
        let page = store.read_stream(stream, after, limit)?;
        let full = page.len() == limit;
        if let Some(last) = page.last() {
            after = last.version;
        }
        events.extend(
            page.into_iter()
                .filter(|event| until.is_none_or(|until| event.version <= until)),
        );
        if !full {
            return Ok(events);
        }
    }
}

/// The bodies of the stream's first `until` events, in arrival order: what a re-fold folds.
pub(crate) fn read_bodies(
    store: &dyn EventStore,
    stream: &SessionId,
    until: Version,
) -> Result<Vec<EventBody>, EngineError> {
    Ok(read_events(store, stream, Some(until))?
        .into_iter()
        .map(|stored| stored.data.body)
        .collect())
}

/// Folds the stream's first `until` events (all with `None`) from the start: the events read,
/// the fold, and the stream's provider. A compacted session, whose first events are no longer
/// stored, is its snapshot instead ([`compacted_fold`]).
fn fold_stream(
    store: &dyn EventStore,
    stream: &SessionId,
    until: Option<Version>,
) -> Result<Option<(Vec<StoredEvent>, FoldedStream, Provider)>, EngineError> {
    let events = read_events(store, stream, until)?;
    match events.first() {
        Some(first) if first.version == Version(1) => {
            let provider = first.data.provider;
            let bodies: Vec<&EventBody> = events.iter().map(|stored| &stored.data.body).collect();
            let folded =
                Folded::fold_all(&bodies).map_err(|failure| replay_error(stream, failure))?;
            Ok(folded.map(|folded| (events, folded, provider)))
        }
        _ => {
            let start = store.stream_start(stream)?;
            if start.version == Version::EMPTY {
                return Ok(None);
            }
            compacted_fold(stream, start, events, until).map(Some)
        }
    }
}

/// The fold of a stream whose first event is not stored: a compacted session (from its
/// snapshot, which says so), as of `until`; anything else is damage. Every event after the
/// compaction is rejected and leaves the state as it was, so the state at a version from the
/// compaction on is the snapshot's with that many arrivals and that many fewer rejections.
fn compacted_fold(
    stream: &SessionId,
    start: StreamStart,
    events: Vec<StoredEvent>,
    until: Option<Version>,
) -> Result<(Vec<StoredEvent>, FoldedStream, Provider), EngineError> {
    let missing = |reason: &str| EngineError::Replay {
        session: stream.clone(),
        version: Version(1),
        reason: format!("its first events are not stored, and {reason}"),
    };
    let snapshot = start
        .snapshot
        .ok_or_else(|| missing("it has no snapshot"))?;
    let folded = decode_state_any_rules(&snapshot.state)
        .filter(|folded| folded.version() == snapshot.version && snapshot.version == start.version)
        .ok_or_else(|| missing("its snapshot cannot be read at its version"))?;
    let Folded::Session(mut timeline) = folded else {
        return Err(missing("it is not a session"));
    };
    let compacted = timeline.compacted;
    if compacted == 0 {
        return Err(missing("its snapshot does not say it was compacted"));
    }
    let at = until.unwrap_or(start.version);
    if at.0 < compacted {
        return Err(EngineError::Compacted {
            session: stream.clone(),
            compacted: Version(compacted),
        });
    }
    let expected: Vec<Version> = (compacted + 1..=at.0).map(Version).collect();
    let stored: Vec<Version> = events.iter().map(|event| event.version).collect();
    if stored != expected || events.iter().any(|event| !event.rejected) {
        return Err(missing(&format!(
            "the events after its compaction at version {compacted} are not versions {}..={} all rejected",
            compacted + 1,
            at.0
        )));
    }
    let later = timeline.arrivals - at.0;
    timeline.rejected = timeline
        .rejected
        .checked_sub(u32::try_from(later).unwrap_or(u32::MAX))
        .ok_or_else(|| {
            missing("its snapshot counts fewer rejections than events after its compaction")
        })?;
    timeline.arrivals = at.0;
    let placements = events
        .iter()
        .map(|event| Placement {
            arrival: event.version.0,
            verdict: Err(crate::folded::COMPACTED_REJECTION.to_owned()),
            late: false,
        })
        .collect();
    Ok((
        events,
        FoldedStream {
            folded: Folded::Session(timeline),
            placements,
        },
        snapshot.provider,
    ))
}

/// Continues `folded` (the stream's state after `folded.version()` events) with its next
/// events `tail`. `None` when one of them sorts before events already folded: the stream must
/// be folded from the start.
fn continue_fold(
    stream: &SessionId,
    mut folded: Folded,
    tail: &[StoredEvent],
) -> Result<Option<Folded>, EngineError> {
    for stored in tail {
        match folded.append(&stored.data.body) {
            Ok(Append::Accepted(_) | Append::Rejected(_)) => {}
            Ok(Append::Refold) => return Ok(None),
            Err(reason) => return Err(replay_error(stream, (stored.version.0, reason))),
        }
    }
    Ok(Some(folded))
}

/// A stream's current state from its snapshot plus the events after it, or `None` if it has
/// no event. A snapshot this build cannot use (another layout, other rules) or a tail that
/// does not continue it in place falls back to a fold of the whole stream.
pub(crate) fn load_state(
    store: &dyn EventStore,
    stream: &SessionId,
) -> Result<Option<SessionState>, EngineError> {
    // One read instead of two for a stream the store knows is empty (a new session); the
    // same read brings the snapshot when the store keeps both together.
    let StreamStart { version, snapshot } = store.stream_start(stream)?;
    if version == Version::EMPTY {
        return Ok(None);
    }
    if let Some((snapshot, base)) = snapshot
        .as_ref()
        .and_then(|snapshot| decode_snapshot(snapshot).map(|base| (snapshot, base)))
    {
        // Every commit rewrites its streams' snapshots: a snapshot of the stream's version is
        // the state, with no tail to read.
        if base.version() == version {
            return Ok(Some(SessionState {
                provider: snapshot.provider,
                folded: base,
            }));
        }
        let tail = read_events_after(store, stream, base.version())?;
        if let Some(folded) = continue_fold(stream, base, &tail)? {
            return Ok(Some(SessionState {
                provider: snapshot.provider,
                folded,
            }));
        }
    }
    Ok(
        fold_stream(store, stream, None)?.map(|(_, folded, provider)| SessionState {
            provider,
            folded: folded.folded,
        }),
    )
}

/// The stream's events after version `after`.
fn read_events_after(
    store: &dyn EventStore,
    stream: &SessionId,
    after: Version,
) -> Result<Vec<StoredEvent>, EngineError> {
    let mut events: Vec<StoredEvent> = Vec::new();
    loop {
        let from = events.last().map_or(after, |last| last.version);
        let page = store.read_stream(stream, from, READ_CHUNK)?;
        let full = page.len() == READ_CHUNK;
        events.extend(page);
        if !full {
            return Ok(events);
        }
    }
}

/// [`load_state`] from what [`EventStore::read_streams`] returned for the stream. A snapshot
/// this build cannot use, or a tail that does not continue it, falls back to [`load_state`].
pub(crate) fn state_from_read(
    store: &dyn EventStore,
    stream: &SessionId,
    read: StreamRead,
) -> Result<Option<SessionState>, EngineError> {
    let provider = read
        .snapshot
        .as_ref()
        .map(|snapshot| snapshot.provider)
        .or_else(|| read.tail.first().map(|first| first.data.provider));
    let Some(provider) = provider else {
        return Ok(None);
    };
    let base = match &read.snapshot {
        None => read
            .tail
            .first()
            .map(|first| Folded::initial_for(&first.data.body)),
        Some(snapshot) => decode_snapshot(snapshot),
    };
    let Some(base) = base else {
        return load_state(store, stream);
    };
    match continue_fold(stream, base, &read.tail)? {
        Some(folded) => Ok(Some(SessionState { provider, folded })),
        None => load_state(store, stream),
    }
}

/// The session as of `version`: the fold of its first `version` arrivals; `None` if the
/// stream is empty or not a session.
pub(crate) fn session_at(
    store: &dyn EventStore,
    stream: &SessionId,
    version: Version,
) -> Result<Option<SessionView>, EngineError> {
    let current = store.stream_start(stream)?.version;
    if current == Version::EMPTY {
        return Ok(None);
    }
    if version > current {
        return Err(EngineError::VersionOutOfRange {
            session: stream.clone(),
            requested: version,
            current,
        });
    }
    Ok(match fold_stream(store, stream, Some(version))? {
        Some((
            _,
            FoldedStream {
                folded: Folded::Session(timeline),
                ..
            },
            provider,
        )) => Some(SessionView {
            session_id: stream.clone(),
            provider,
            events: timeline.arrivals,
            rejected: timeline.rejected,
            compacted_at: compacted_at(&timeline),
            state: timeline.state,
        }),
        _ => None,
    })
}

/// Every event of the stream, in the order its fold takes them, with what it did or why it
/// was rejected; `None` if the stream has no event.
pub(crate) fn history(
    store: &dyn EventStore,
    stream: &SessionId,
) -> Result<Option<Vec<HistoryEntry>>, EngineError> {
    let Some((events, folded, _)) = fold_stream(store, stream, None)? else {
        return Ok(None);
    };
    // A compacted session's events start after its compaction.
    let first = events.first().map_or(1, |event| event.version.0);
    let mut events: Vec<Option<StoredEvent>> = events.into_iter().map(Some).collect();
    let mut entries = Vec::with_capacity(events.len());
    // The session's phase where the fold is, for rejected events.
    let mut current = folded.folded.as_session().map(|_| Phase::Created);
    for placement in folded.placements {
        let Some(stored) = placement
            .arrival
            .checked_sub(first)
            .and_then(|index| events.get_mut(usize::try_from(index).ok()?))
            .and_then(Option::take)
        else {
            continue;
        };
        let (accepted, rejection, phase_before, phase_after, rule) = match placement.verdict {
            Ok(change) => {
                let before = change.phase_before().or(current);
                let after = change.phase_after().or(current);
                current = after;
                (
                    true,
                    None,
                    before,
                    after,
                    change.session.and_then(|applied| applied.rule),
                )
            }
            Err(reason) => (false, Some(reason), current, current, None),
        };
        entries.push(HistoryEntry {
            version: stored.version,
            position: stored.position,
            event_id: stored.data.event_id,
            event: stored.data.body.name().to_owned(),
            raw_name: stored.data.raw_name,
            event_time: stored.data.body.occurred_at(),
            received_at: stored.data.received_at,
            accepted,
            rejection,
            late: placement.late,
            phase_before,
            phase_after,
            rule,
            body: stored.data.body,
            raw: stored.data.raw,
        });
    }
    Ok(Some(entries))
}

/// The events the folds of their streams reject: of one stream, or of every stream (found by
/// their snapshots' rejected counts), at most [`MAX_REJECTED_LISTED`].
pub(crate) fn rejected(
    store: &dyn EventStore,
    stream: Option<&SessionId>,
) -> Result<RejectedList, EngineError> {
    match stream {
        None => rejected_page(store, MAX_REJECTED_LISTED, None),
        Some(stream) => {
            let mut list = RejectedList::default();
            for entry in history(store, stream)?.unwrap_or_default() {
                if entry.accepted {
                    continue;
                }
                if list.events.len() == MAX_REJECTED_LISTED {
                    list.truncated = true;
                    break;
                }
                list.events.push(RejectedEvent {
                    stream: stream.clone(),
                    entry,
                });
            }
            Ok(list)
        }
    }
}

/// A cursor inside a stream's rejected events: the stream's `r` key, 0xff (never in an id),
/// and how many of its rejected events earlier pages listed.
fn parked_cursor(stream: &SessionId, listed: usize) -> Cursor {
    let mut key = vec![index::PARKED];
    key.extend_from_slice(stream.as_str().as_bytes());
    key.push(0xff);
    key.extend_from_slice(&(listed as u64).to_be_bytes());
    Cursor(At::Index(key))
}

/// Up to `limit` (at most [`MAX_REJECTED_LISTED`]) rejected events of every stream, from the
/// index of streams with rejected events, after `after`: streams in id order, each stream's
/// events in event-time order; a stream's events may continue on the next page.
pub(crate) fn rejected_page(
    store: &dyn EventStore,
    limit: usize,
    after: Option<&Cursor>,
) -> Result<RejectedList, EngineError> {
    let limit = limit.clamp(1, MAX_REJECTED_LISTED);
    // Where to start: the cursor's stream again (skipping what was listed), or after its key.
    let (start, mut skip) = match after.map(Cursor::index_key).transpose()? {
        None => (vec![index::PARKED], 0),
        Some(key) if key.first() != Some(&index::PARKED) => {
            return Err(EngineError::WrongCursor {
                cursor: after.map(ToString::to_string).unwrap_or_default(),
            })
        }
        Some(key) => match key.iter().position(|byte| *byte == 0xff) {
            Some(at) if key.len() == at + 9 => {
                let listed = u64::from_be_bytes(key[at + 1..].try_into().expect("8 bytes"));
                (
                    key[..at].to_vec(),
                    usize::try_from(listed).unwrap_or(usize::MAX),
                )
            }
            _ => {
                let mut next = key.to_vec();
                next.push(0);
                (next, 0)
            }
        },
    };
    let mut list = RejectedList::default();
    let mut streams = Vec::new();
    store.for_each_index_key(&start, &[index::PARKED + 1], &mut |key| {
        streams.push(index::id_in(key));
        if streams.len() > limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    let count = streams.len();
    for (at, stream) in streams.into_iter().enumerate() {
        let more_streams = at + 1 < count;
        let stream = stream.map_err(linkflow_store::StoreError::Corrupt)?;
        let rejected: Vec<HistoryEntry> = history(store, &stream)?
            .unwrap_or_default()
            .into_iter()
            .filter(|entry| !entry.accepted)
            .collect();
        let total = rejected.len();
        for (listed, entry) in rejected.into_iter().enumerate().skip(skip) {
            if list.events.len() == limit {
                list.truncated = true;
                list.next = Some(parked_cursor(&stream, listed));
                return Ok(list);
            }
            list.events.push(RejectedEvent {
                stream: stream.clone(),
                entry,
            });
        }
        skip = 0;
        if list.events.len() == limit && total > 0 && more_streams {
            // Full after this stream's last event: the next page starts after the stream.
            let mut key = vec![index::PARKED];
            key.extend_from_slice(stream.as_str().as_bytes());
            list.next = Some(Cursor(At::Index(key)));
            list.truncated = true;
            return Ok(list);
        }
    }
    Ok(list)
}

/// Every stream's current state from its snapshot (each is current: every commit that changes
/// a stream rewrites its snapshot), falling back to a replay for undecodable snapshots.
fn all_states(store: &dyn EventStore) -> Result<Vec<(SessionId, Provider, Folded)>, EngineError> {
    let mut states = Vec::new();
    let mut undecodable = Vec::new();
    store.for_each_snapshot(None, &mut |stream, snapshot| {
        match decode_snapshot(&snapshot) {
            Some(folded) => states.push((stream, snapshot.provider, folded)),
            None => undecodable.push(stream),
        }
        ControlFlow::Continue(())
    })?;
    for stream in undecodable {
        if let Some(state) = load_state(store, &stream)? {
            states.push((stream, state.provider, state.folded));
        }
    }
    states.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(states)
}

/// Sessions matching `filter`, in session-id order.
pub(crate) fn sessions(
    store: &dyn EventStore,
    filter: &SessionFilter,
    clock: (DateTime<Utc>, chrono::Duration),
) -> Result<Vec<SessionView>, EngineError> {
    Ok(all_states(store)?
        .into_iter()
        .filter_map(|(session_id, provider, folded)| session_view(session_id, provider, folded))
        .filter(|view| filter.matches(view.provider, &view.state, clock))
        .collect())
}

/// Every session's (provider, state), from the snapshots (the incremental projection).
pub(crate) fn session_states(
    store: &dyn EventStore,
) -> Result<Vec<(Provider, Session)>, EngineError> {
    Ok(all_states(store)?
        .into_iter()
        .filter_map(|(_, provider, folded)| match folded {
            Folded::Session(timeline) => Some((provider, timeline.state)),
            _ => None,
        })
        .collect())
}

/// Every session's (provider, state), folded from the log alone (snapshots ignored).
pub(crate) fn session_states_from_log(
    store: &dyn EventStore,
) -> Result<Vec<(Provider, Session)>, EngineError> {
    let mut states = Vec::new();
    for_each_stream_folded(store, &mut |_, provider, folded| {
        if let Folded::Session(timeline) = folded {
            states.push((provider, timeline.state));
        }
    })?;
    Ok(states)
}

/// Folds every stream from its log (snapshots ignored), one stream at a time, and hands each
/// state to `visit`. Fails on the first stream that does not fold.
pub(crate) fn for_each_stream_folded(
    store: &dyn EventStore,
    visit: &mut dyn FnMut(SessionId, Provider, Folded),
) -> Result<RebuildStats, EngineError> {
    let mut stats = RebuildStats::default();
    let mut current: Option<(SessionId, Provider, StreamFold)> = None;
    let mut failure = None;
    let finish = |(stream, provider, fold): (SessionId, Provider, StreamFold),
                  visit: &mut dyn FnMut(SessionId, Provider, Folded)|
     -> Result<(), EngineError> {
        match fold.finish(store, &stream) {
            Ok(Some((provider_now, folded))) => {
                visit(stream, provider_now.unwrap_or(provider), folded)
            }
            Ok(None) => {}
            Err(error) => return Err(error),
        }
        Ok(())
    };
    store.for_each_event_by_stream(&mut |stored| {
        stats.events += 1;
        if current.as_ref().map(|(id, _, _)| id) != Some(&stored.stream) {
            stats.streams += 1;
            if let Some(done) = current.take() {
                if let Err(error) = finish(done, visit) {
                    failure = Some(error);
                    return ControlFlow::Break(());
                }
            }
            current = Some((
                stored.stream.clone(),
                stored.data.provider,
                StreamFold::starting_with(&stored),
            ));
        }
        let (_, _, fold) = current.as_mut().expect("set above");
        fold.push(stored);
        ControlFlow::Continue(())
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    if let Some(done) = current.take() {
        finish(done, visit)?;
    }
    let mut damaged = None;
    stats.streams += for_each_wholly_compacted(store, &mut |stream, folded| match folded {
        Ok((provider, folded)) => visit(stream, provider, folded),
        Err(error) => {
            damaged.get_or_insert(error);
        }
    })?;
    match damaged {
        Some(error) => Err(error),
        None => Ok(stats),
    }
}

/// A stream being folded from its events, stream by stream: from its first event, or (its
/// first event not stored) a compacted session's events after its compaction.
pub(crate) enum StreamFold {
    Whole(Box<StreamFolder>),
    Compacted(Vec<StoredEvent>),
}

impl StreamFold {
    pub(crate) fn starting_with(first: &StoredEvent) -> StreamFold {
        if first.version == Version(1) {
            StreamFold::Whole(Box::default())
        } else {
            StreamFold::Compacted(Vec::new())
        }
    }

    pub(crate) fn push(&mut self, stored: StoredEvent) {
        match self {
            StreamFold::Whole(folder) => folder.push(stored.data.body),
            StreamFold::Compacted(events) => events.push(stored),
        }
    }

    /// The stream's fold (and, for a compacted one, its provider as its snapshot says).
    pub(crate) fn finish(
        self,
        store: &dyn EventStore,
        stream: &SessionId,
    ) -> Result<Option<(Option<Provider>, Folded)>, EngineError> {
        match self {
            StreamFold::Whole(folder) => folder
                .finish()
                .map(|folded| folded.map(|folded| (None, folded)))
                .map_err(|failure| replay_error(stream, failure)),
            StreamFold::Compacted(events) => {
                let start = store.stream_start(stream)?;
                let (_, folded, provider) = compacted_fold(stream, start, events, None)?;
                Ok(Some((Some(provider), folded.folded)))
            }
        }
    }
}

/// Calls `visit` with every session compacted with no event after its compaction (none of its
/// events is read by stream, so a walk of the events never meets it) and its snapshot, which
/// is its fold. The store's mark says which snapshots are theirs (compacted at their version),
/// so no other snapshot is decoded; one whose state does not decode as a session compacted at
/// that version is handed over as damage (`EngineError::Replay`). Returns how many.
pub(crate) fn for_each_wholly_compacted(
    store: &dyn EventStore,
    visit: &mut dyn FnMut(SessionId, Result<(Provider, Folded), EngineError>),
) -> Result<u64, EngineError> {
    let mut count = 0;
    store.for_each_snapshot(None, &mut |stream, snapshot| {
        if snapshot.compacted == Version::EMPTY || snapshot.compacted != snapshot.version {
            return ControlFlow::Continue(());
        }
        count += 1;
        let folded = decode_state_any_rules(&snapshot.state).filter(|folded| {
            matches!(folded, Folded::Session(timeline)
                if timeline.compacted == snapshot.version.0 && timeline.arrivals == snapshot.version.0)
        });
        let result = folded.map(|folded| (snapshot.provider, folded)).ok_or_else(|| {
            EngineError::Replay {
                session: stream.clone(),
                version: snapshot.version,
                reason: "its snapshot, the whole of a session compacted at its version, cannot be read as one".into(),
            }
        });
        visit(stream, result);
        ControlFlow::Continue(())
    })?;
    Ok(count)
}

/// What a rebuild from the log folded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RebuildStats {
    /// Streams folded.
    pub streams: u64,
    /// Events folded.
    pub events: u64,
}

/// Folds every stream from its events (snapshots ignored), keeping one state at a time.
pub(crate) fn rebuild_from_log(store: &dyn EventStore) -> Result<RebuildStats, EngineError> {
    for_each_stream_folded(store, &mut |_, _, _| {})
}

/// Every linked account that exists (state `active` or `login_required`). Operations for an
/// account that does not exist are its rejected events.
pub(crate) fn accounts(store: &dyn EventStore) -> Result<Vec<AccountView>, EngineError> {
    let mut views: Vec<AccountView> = all_states(store)?
        .into_iter()
        .filter_map(|(_, _, folded)| account_view(folded))
        .collect();
    views.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(views)
}

/// Every merchant availability, newest status per (merchant, type, platform, sdk).
pub(crate) fn merchants(store: &dyn EventStore) -> Result<Vec<MerchantStatus>, EngineError> {
    Ok(all_states(store)?
        .into_iter()
        .filter_map(|(_, _, folded)| match folded {
            Folded::Merchant { status, .. } => status,
            _ => None,
        })
        .collect())
}

//! Reading streams back: states from snapshot plus tail, histories, lists of sessions,
//! accounts and merchants.

use std::collections::HashMap;
use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use linkflow_core::{
    Account, AccountKey, AccountState, EventBody, MerchantStatus, Phase, Position, Provider,
    RuleKind, Session, SessionId, Version,
};
use linkflow_store::{
    EventStore, ParkedEvent, RawJson, Snapshot, StoredEvent, StreamRead, StreamStart,
};
use serde::Serialize;
use uuid::Uuid;

use crate::cache::SessionState;
use crate::error::EngineError;
use crate::folded::{decode_snapshot_state, Folded};

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
    /// How many of its events are parked.
    pub parked: u32,
}

/// A linked account as the engine knows it now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountView {
    /// Which account.
    pub key: AccountKey,
    /// Its state.
    pub account: Account,
    /// How many of its events are parked (operations that came before the account existed).
    pub parked: u32,
}

/// One accepted event of a stream's history, with what it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// Its version in the stream.
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
    /// When linkflow received it.
    pub received_at: DateTime<Utc>,
    /// When the log accepted it (later than `received_at` if it was parked first).
    pub accepted_at: DateTime<Utc>,
    /// True if it was parked before a retry accepted it.
    pub was_parked: bool,
    /// The phase before it (session streams only).
    pub phase_before: Option<Phase>,
    /// The phase after it (session streams only; equal to `phase_before` for telemetry).
    pub phase_after: Option<Phase>,
    /// The table row that took it; `None` for telemetry, unrecognized and non-session events.
    pub rule: Option<RuleKind>,
    /// The canonical event.
    pub body: EventBody,
    /// The payload as stored.
    pub raw: Option<RawJson>,
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
    }
}

/// Decodes a snapshot's state; `None` when this build cannot read it or it does not match its
/// version (the caller falls back to a full replay).
pub(crate) fn decode_snapshot(snapshot: &Snapshot) -> Option<Folded> {
    decode_snapshot_state(&snapshot.state).filter(|folded| folded.version() == snapshot.version)
}

fn replay_error(stream: &SessionId, stored: &StoredEvent, reason: String) -> EngineError {
    EngineError::Replay {
        session: stream.clone(),
        version: stored.version,
        reason,
    }
}

/// Replays `stream`'s events after `folded`'s version onto it, up to `until` if given. With no
/// state yet, the first event decides the stream's kind.
fn replay_tail(
    store: &dyn EventStore,
    stream: &SessionId,
    mut folded: Option<Folded>,
    until: Option<Version>,
) -> Result<Option<Folded>, EngineError> {
    loop {
        let after = folded.as_ref().map_or(Version::EMPTY, Folded::version);
        let limit = match until {
            Some(until) if until <= after => return Ok(folded),
            Some(until) => READ_CHUNK.min((until.0 - after.0) as usize),
            None => READ_CHUNK,
        };
        let events = store.read_stream(stream, after, limit)?;
        if events.is_empty() {
            return Ok(folded);
        }
        folded = fold_events(stream, folded, &events)?;
    }
}

/// Applies `events` (the stream's next ones, in order) to `folded`; with no state yet, the
/// first event decides the stream's kind.
fn fold_events(
    stream: &SessionId,
    mut folded: Option<Folded>,
    events: &[StoredEvent],
) -> Result<Option<Folded>, EngineError> {
    for stored in events {
        let state = folded.get_or_insert_with(|| Folded::initial_for(&stored.data.body));
        state
            .apply_in_place(&stored.data.body)
            .map_err(|reason| replay_error(stream, stored, reason))?;
    }
    Ok(folded)
}

/// A stream's current state from its snapshot plus the events after it, or `None` if it has
/// neither events nor parked events. A snapshot this build cannot decode falls back to a full
/// replay.
pub(crate) fn load_state(
    store: &dyn EventStore,
    stream: &SessionId,
) -> Result<Option<SessionState>, EngineError> {
    // One read instead of three for a stream the store knows is empty (a new session); the
    // same read brings the snapshot when the store keeps both together.
    let StreamStart { empty, snapshot } = store.stream_start(stream)?;
    if empty == Some(true) {
        return Ok(None);
    }
    let base = snapshot.as_ref().and_then(decode_snapshot);
    let folded = replay_tail(store, stream, base, None)?;
    let parked = store.parked(Some(stream))?;
    let provider = match (&snapshot, &folded) {
        (Some(snapshot), _) => Some(snapshot.provider),
        (None, Some(_)) => store
            .read_stream(stream, Version::EMPTY, 1)?
            .first()
            .map(|first| first.data.provider),
        (None, None) => None,
    };
    Ok(assemble_state(provider, folded, &parked))
}

/// [`load_state`] from what [`EventStore::read_streams`] returned for the stream, with its
/// parked events. A snapshot this build cannot decode falls back to [`load_state`].
pub(crate) fn state_from_read(
    store: &dyn EventStore,
    stream: &SessionId,
    read: StreamRead,
) -> Result<(Option<SessionState>, Vec<ParkedEvent>), EngineError> {
    let base = match &read.snapshot {
        None => None,
        Some(snapshot) => match decode_snapshot(snapshot) {
            Some(folded) => Some(folded),
            None => {
                let state = load_state(store, stream)?;
                return Ok((state, store.parked(Some(stream))?));
            }
        },
    };
    let folded = fold_events(stream, base, &read.tail)?;
    let provider = read
        .snapshot
        .as_ref()
        .map(|snapshot| snapshot.provider)
        .or_else(|| read.tail.first().map(|first| first.data.provider));
    let state = assemble_state(provider, folded, &read.parked);
    Ok((state, read.parked))
}

/// The state of a stream with `folded` events from `provider` and `parked` events; `None`
/// when it has neither.
fn assemble_state(
    provider: Option<Provider>,
    folded: Option<Folded>,
    parked: &[ParkedEvent],
) -> Option<SessionState> {
    let parked_count = u32::try_from(parked.len()).unwrap_or(u32::MAX);
    let (provider, folded) = match (folded, provider, parked.first()) {
        (Some(folded), Some(provider), _) => (provider, folded),
        (Some(folded), None, first) => (first?.data.provider, folded),
        (None, _, Some(first)) => (first.data.provider, Folded::initial_for(&first.data.body)),
        (None, _, None) => return None,
    };
    Some(SessionState {
        provider,
        folded,
        parked: parked_count,
    })
}

/// The session as of `version` (a full fold of its first `version` events); `None` if the
/// stream is empty or not a session.
pub(crate) fn session_at(
    store: &dyn EventStore,
    stream: &SessionId,
    version: Version,
) -> Result<Option<Session>, EngineError> {
    let current = store.stream_version(stream)?;
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
    Ok(match replay_tail(store, stream, None, Some(version))? {
        Some(Folded::Session(session)) => Some(*session),
        _ => None,
    })
}

/// Every accepted event of the stream with what it did.
pub(crate) fn history(
    store: &dyn EventStore,
    stream: &SessionId,
) -> Result<Option<Vec<HistoryEntry>>, EngineError> {
    let mut folded: Option<Folded> = None;
    let mut entries = Vec::new();
    loop {
        let after = folded.as_ref().map_or(Version::EMPTY, Folded::version);
        let events = store.read_stream(stream, after, READ_CHUNK)?;
        if events.is_empty() {
            break;
        }
        for stored in events {
            let state = folded.get_or_insert_with(|| Folded::initial_for(&stored.data.body));
            let change = state
                .apply_in_place(&stored.data.body)
                .map_err(|reason| replay_error(stream, &stored, reason))?;
            entries.push(HistoryEntry {
                version: stored.version,
                position: stored.position,
                event_id: stored.data.event_id,
                event: stored.data.body.name().to_owned(),
                raw_name: stored.data.raw_name,
                event_time: stored.data.body.occurred_at(),
                received_at: stored.data.received_at,
                accepted_at: stored.accepted_at,
                was_parked: stored.was_parked,
                phase_before: change.phase_before(),
                phase_after: change.phase_after(),
                rule: change.session.and_then(|applied| applied.rule),
                body: stored.data.body,
                raw: stored.data.raw,
            });
        }
    }
    Ok(if entries.is_empty() {
        None
    } else {
        Some(entries)
    })
}

/// Every stream's current state from its snapshot (each is current: every commit that changes
/// a stream rewrites its snapshot), falling back to a replay for undecodable snapshots.
fn all_states(store: &dyn EventStore) -> Result<Vec<(SessionId, Provider, Folded)>, EngineError> {
    let mut states = Vec::new();
    let mut undecodable = Vec::new();
    store.for_each_snapshot(&mut |stream, snapshot| {
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

fn parked_counts(store: &dyn EventStore) -> Result<HashMap<SessionId, u32>, EngineError> {
    let mut counts: HashMap<SessionId, u32> = HashMap::new();
    for entry in store.parked(None)? {
        *counts.entry(entry.stream).or_default() += 1;
    }
    Ok(counts)
}

/// Sessions matching `filter`, in session-id order.
pub(crate) fn sessions(
    store: &dyn EventStore,
    filter: &SessionFilter,
    clock: (DateTime<Utc>, chrono::Duration),
) -> Result<Vec<SessionView>, EngineError> {
    let parked = parked_counts(store)?;
    Ok(all_states(store)?
        .into_iter()
        .filter_map(|(session_id, provider, folded)| match folded {
            Folded::Session(state) if filter.matches(provider, &state, clock) => {
                Some(SessionView {
                    parked: parked.get(&session_id).copied().unwrap_or(0),
                    session_id,
                    provider,
                    state: *state,
                })
            }
            _ => None,
        })
        .collect())
}

/// Every session's (provider, state), from the snapshots (the incremental projection).
pub(crate) fn session_states(
    store: &dyn EventStore,
) -> Result<Vec<(Provider, Session)>, EngineError> {
    Ok(all_states(store)?
        .into_iter()
        .filter_map(|(_, provider, folded)| match folded {
            Folded::Session(session) => Some((provider, *session)),
            _ => None,
        })
        .collect())
}

/// Every session's (provider, state), folded from the log alone (snapshots ignored).
pub(crate) fn session_states_from_log(
    store: &dyn EventStore,
) -> Result<Vec<(Provider, Session)>, EngineError> {
    let mut states: Vec<(SessionId, Provider, Folded)> = Vec::new();
    let mut failure = None;
    store.for_each_event_by_stream(&mut |stored| {
        if states.last().map(|(id, _, _)| id) != Some(&stored.stream) {
            states.push((
                stored.stream.clone(),
                stored.data.provider,
                Folded::initial_for(&stored.data.body),
            ));
        }
        let (_, _, folded) = states.last_mut().expect("pushed above");
        if let Err(reason) = folded.apply_in_place(&stored.data.body) {
            failure = Some(replay_error(&stored.stream, &stored, reason));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(states
        .into_iter()
        .filter_map(|(_, provider, folded)| match folded {
            Folded::Session(session) => Some((provider, *session)),
            _ => None,
        })
        .collect())
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
    let mut stats = RebuildStats::default();
    let mut current: Option<(SessionId, Folded)> = None;
    let mut failure = None;
    store.for_each_event_by_stream(&mut |stored| {
        stats.events += 1;
        if current.as_ref().map(|(id, _)| id) != Some(&stored.stream) {
            stats.streams += 1;
            current = Some((
                stored.stream.clone(),
                Folded::initial_for(&stored.data.body),
            ));
        }
        let (_, folded) = current.as_mut().expect("set above");
        if let Err(reason) = folded.apply_in_place(&stored.data.body) {
            failure = Some(replay_error(&stored.stream, &stored, reason));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    match failure {
        Some(error) => Err(error),
        None => Ok(stats),
    }
}

/// Every linked account that exists (state `active` or `login_required`). Operations waiting
/// for an account that does not exist yet are in the parked list.
pub(crate) fn accounts(store: &dyn EventStore) -> Result<Vec<AccountView>, EngineError> {
    let parked = parked_counts(store)?;
    let mut views: Vec<AccountView> = all_states(store)?
        .into_iter()
        .filter_map(|(stream, _, folded)| match folded {
            Folded::Account { key, account } if account.state() != AccountState::Absent => {
                Some(AccountView {
                    parked: parked.get(&stream).copied().unwrap_or(0),
                    key,
                    account,
                })
            }
            _ => None,
        })
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

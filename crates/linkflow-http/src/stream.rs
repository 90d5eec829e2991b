//! `GET /v1/stream`: committed events in global order as server-sent events, after a position
//! (`Last-Event-ID` or `?after=`: the events *after* it, the position itself excluded; none:
//! from the start): the log first (catch-up), then live. Each event's SSE id is its position,
//! so a reconnecting client resumes exactly where it stopped. `?session=` keeps one stream's
//! events (the others are read and skipped). A session's event carries `phase_before` and
//! `phase_after`: the session's phase after its arrivals up to the one before and up to this
//! one (`Engine::session_at`, each arrival folded in event-time order), so a late event shows
//! what it changed; `null` for other streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use linkflow::Engine;
use linkflow_core::{Phase, Position, SessionId, Version};
use serde::Deserialize;
use serde_json::json;

use crate::{ApiError, AppState};

/// Sessions whose last phase one event stream remembers (for the next event's
/// `phase_before`); past it, the memory starts over.
const PHASE_MEMORY: usize = 1_024;

/// The phase of `session` after its first `version` arrivals (`None`: not a session, or
/// version 0), from the connection's memory when it saw that version last.
async fn phase_at(
    engine: &Engine,
    memory: &mut HashMap<SessionId, (Version, Option<Phase>)>,
    session: &SessionId,
    version: Version,
) -> Option<Phase> {
    if version == Version::EMPTY {
        return None;
    }
    if let Some((known, phase)) = memory.get(session) {
        if *known == version {
            return *phase;
        }
    }
    let phase = engine
        .session_at(session, version)
        .await
        .ok()
        .flatten()
        .map(|view| view.state.phase());
    if memory.len() >= PHASE_MEMORY {
        memory.clear();
    }
    memory.insert(session.clone(), (version, phase));
    phase
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    after: Option<u64>,
    session: Option<String>,
}

pub(crate) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let from = match headers.get("Last-Event-ID") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_last_event_id",
                    "Last-Event-ID must be a position (a whole number)",
                )
            })?,
        None => query.after.unwrap_or(0),
    };
    let session = query.session.map(|id| crate::session_id(&id)).transpose()?;
    let subscription = state.engine.subscribe(Position(from));
    let shutting_down = state.shutting_down.clone();
    let engine = state.engine.clone();
    let events = stream::unfold(
        (subscription, shutting_down, HashMap::new()),
        move |(mut subscription, mut shutting_down, mut memory)| {
            let session = session.clone();
            let engine = engine.clone();
            async move {
                if *shutting_down.borrow() {
                    return None;
                }
                let event = loop {
                    let event = tokio::select! {
                        event = subscription.next() => event.ok()?,
                        _ = shutting_down.changed() => return None,
                    };
                    if session
                        .as_ref()
                        .is_none_or(|wanted| *wanted == event.stream)
                    {
                        break event;
                    }
                };
                let before = Version(event.version.0.saturating_sub(1));
                let phase_before = phase_at(&engine, &mut memory, &event.stream, before).await;
                let phase_after =
                    phase_at(&engine, &mut memory, &event.stream, event.version).await;
                let data = json!({
                    "position": event.position,
                    "phase_before": phase_before,
                    "phase_after": phase_after,
                    "session_id": event.stream,
                    "version": event.version,
                    "event": event.data.body.name(),
                    "raw_name": event.data.raw_name,
                    "event_time": event.data.body.occurred_at(),
                    // Rejected by its stream's fold as it stood when the event was stored (what its
                    // ingest outcome said); a later arrival may change it (see the history).
                    "rejected": event.rejected,
                    "body": event.data.body,
                });
                let sse = Event::default()
                    .id(event.position.to_string())
                    .event("event")
                    .data(data.to_string());
                Some((Ok(sse), (subscription, shutting_down, memory)))
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

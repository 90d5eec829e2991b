//! `GET /v1/stream`: committed events in global order as server-sent events, after a position
//! (`Last-Event-ID` or `?after=`: the events *after* it, the position itself excluded; none:
//! from the start): the log first (catch-up), then live. Each event's SSE id is its position,
//! so a reconnecting client resumes exactly where it stopped. `?session=` keeps one stream's
//! events (the others are read and skipped). A session's event carries `phase_before` and
//! `phase_after`: the session's phase after its arrivals up to the one before and up to this
//! one (`Engine::session_at`, each arrival folded in event-time order), so a late event shows
//! what it changed; `null` for other streams.
//!
//! Bounds: at most `HttpConfig::max_subscribers` streams at once (503 `too_many_subscribers`
//! past it); each subscriber's events wait in a buffer of [`SUBSCRIBER_BUFFER_EVENTS`] while
//! its client reads, and a client that reads nothing for [`SUBSCRIBER_STALL`] while its
//! buffer is full is cut off (its connection closed, so hyper's buffers go too). The engine
//! reads the log for catching-up subscribers a few at a time (`linkflow::Subscription`), so a
//! crowd of them does not starve the writer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use linkflow::Engine;
use linkflow_core::{Phase, Position, SessionId, Version};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::server::CutConnection;
use crate::{ApiError, AppState};

/// Subscribers catching up (further than [`CATCH_UP_LAG`] behind the log) at once; the others
/// wait their turn, connected.
pub const CATCHING_UP: usize = 4;
/// How far behind the log a subscriber is catching up.
pub const CATCH_UP_LAG: u64 = 1_024;
/// Events a catching-up subscriber sends in one turn.
pub const TURN_EVENTS: usize = 1_024;

/// The rate at which catching-up subscribers, all together, may be sent events: a turn of
/// [`TURN_EVENTS`] starts when the budget has them (a virtual clock: each turn moves the time
/// the next may start by its share).
#[derive(Debug)]
pub(crate) struct CatchUpBudget {
    per_event: Duration,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl CatchUpBudget {
    pub(crate) fn new(events_per_second: u64) -> Self {
        CatchUpBudget {
            per_event: Duration::from_secs(1)
                / u32::try_from(events_per_second.max(1)).unwrap_or(u32::MAX),
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// When a turn of `events` may start.
    fn spend(&self, events: usize) -> tokio::time::Instant {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = (*next).max(tokio::time::Instant::now());
        *next = start + self.per_event * u32::try_from(events).unwrap_or(u32::MAX);
        start
    }
}

/// Events buffered for one subscriber while its client reads (hyper's connection buffer,
/// 128 KiB, holds more behind it).
pub const SUBSCRIBER_BUFFER_EVENTS: usize = 32;
/// How long a subscriber's buffer may stay full before the subscriber is cut off, by default
/// (`HttpConfig::subscriber_stall`).
pub const SUBSCRIBER_STALL: Duration = Duration::from_secs(30);

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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    after: Option<u64>,
    session: Option<String>,
}

/// `GET /v1/stream`.
#[utoipa::path(get, path = "/v1/stream", tag = "read",
    description = "Committed events in global order as server-sent events, after a position (`Last-Event-ID` or `after`; exclusive), then live.",
    params(StreamQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position")),
    responses(
        (status = 200, description = "`text/event-stream`: one `event` per stored event, its id the position", content_type = "text/event-stream"),
        (status = 400, description = "`invalid_last_event_id`, `invalid_session_id`, `bad_request`", body = crate::ErrorBody),
        (status = 401, description = "`unauthorized`", body = crate::ErrorBody),
        (status = 503, description = "`too_many_subscribers`: past the subscriber limit", body = crate::ErrorBody),
    ))]
pub(crate) async fn events(
    State(state): State<AppState>,
    cut: Option<axum::Extension<CutConnection>>,
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
    let Ok(permit) = Arc::clone(&state.shared.subscribers).try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!(
                "{} event streams are open, the most this server serves; try again later",
                state.config.max_subscribers
            ),
        ));
    };
    let metrics = Arc::clone(&state.shared.metrics);
    let subscribers = Arc::clone(&state.shared.subscribers);
    let max = state.config.max_subscribers;
    metrics.sse_subscribers(max - subscribers.available_permits());
    let (sender, receiver) = mpsc::channel::<Event>(SUBSCRIBER_BUFFER_EVENTS);
    let subscription = state.engine.subscribe(Position(from));
    let mut shutting_down = state.shared.closing.subscribe();
    let engine = state.engine.clone();
    let cut = cut.map(|axum::Extension(cut)| cut);
    let rendered = Arc::clone(&state.shared.rendered);
    let stall = state.config.subscriber_stall;
    let catching_up = Arc::clone(&state.shared.catching_up);
    let budget = state.shared.catch_up_budget.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut subscription = subscription;
        let mut memory = HashMap::new();
        // A catch-up turn while far behind, and the events sent in it.
        let mut turn: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let mut in_turn = 0usize;
        let send = |sse: Event| {
            let sender = sender.clone();
            async move {
                match tokio::time::timeout(stall, sender.send(sse)).await {
                    Ok(Ok(())) => Sent::Yes,
                    // The client went away.
                    Ok(Err(_)) => Sent::Gone,
                    Err(_) => Sent::Stalled,
                }
            }
        };
        'events: loop {
            // Far behind the log: catch up in turns of TURN_EVENTS with at most CATCHING_UP
            // others, so that a crowd starting from 0 is a few busy subscribers at a time,
            // not hundreds competing with the writers.
            let behind =
                engine.visible().0.saturating_sub(subscription.position().0) > CATCH_UP_LAG;
            if turn.is_some() && (!behind || in_turn >= TURN_EVENTS) {
                turn = None;
                tokio::task::yield_now().await;
            }
            if behind && turn.is_none() {
                turn = tokio::select! {
                    permit = Arc::clone(&catching_up).acquire_owned() => permit.ok(),
                    _ = shutting_down.changed() => break,
                    () = sender.closed() => break,
                };
                in_turn = 0;
                // Every turn spends its events from the catch-up budget, all turns together.
                if let Some(budget) = &budget {
                    let start = budget.spend(TURN_EVENTS);
                    tokio::select! {
                        () = tokio::time::sleep_until(start) => {}
                        _ = shutting_down.changed() => break,
                        () = sender.closed() => break,
                    }
                }
            }
            // Positions other subscribers had rendered are sent from the shared cache without
            // reading the log (positions are contiguous: the next one is the last plus one).
            if subscription.buffered() == 0 {
                let mut after = subscription.position().0;
                let start = after;
                while let Some(next) = after.checked_add(1) {
                    if turn.is_some() && in_turn >= TURN_EVENTS {
                        break;
                    }
                    let Some((stream, data)) = rendered.get(next) else {
                        break;
                    };
                    after = next;
                    in_turn += 1;
                    if session.as_ref().is_some_and(|wanted| *wanted != stream) {
                        continue;
                    }
                    match send(sse_event(after, &data)).await {
                        Sent::Yes => {}
                        Sent::Gone => break 'events,
                        Sent::Stalled => {
                            stalled(&metrics, cut.as_ref(), stall);
                            break 'events;
                        }
                    }
                }
                if after != start {
                    subscription = engine.subscribe(Position(after));
                    continue;
                }
            }
            let event = tokio::select! {
                event = subscription.next() => match event {
                    Ok(event) => event,
                    Err(_) => break,
                },
                _ = shutting_down.changed() => break,
                () = sender.closed() => break,
            };
            if session
                .as_ref()
                .is_some_and(|wanted| *wanted != event.stream)
            {
                continue;
            }
            in_turn += 1;
            let sse = rendered.event(&engine, &mut memory, event).await;
            match send(sse).await {
                Sent::Yes => {}
                Sent::Gone => break,
                Sent::Stalled => {
                    stalled(&metrics, cut.as_ref(), stall);
                    break;
                }
            }
        }
        drop(_permit);
        metrics.sse_subscribers(max - subscribers.available_permits());
    });
    let events = stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((Ok(event), receiver))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Events rendered as SSE data, shared by every subscriber: an event is rendered once (its
/// phases folded, its JSON written) however many subscribers send it, and misses are rendered
/// one at a time, so that a crowd of subscribers costs at most one core of rendering. An
/// event's rendering never changes (the arrivals up to a version are fixed once stored).
#[derive(Debug)]
pub(crate) struct Rendered {
    cache: std::sync::Mutex<RenderCache>,
    turn: tokio::sync::Semaphore,
}

/// Rendered events kept for other subscribers.
pub const RENDERED_EVENTS: usize = 8_192;

#[derive(Debug, Default)]
struct RenderCache {
    data: HashMap<u64, (SessionId, Arc<str>)>,
    order: std::collections::VecDeque<u64>,
}

impl Default for Rendered {
    fn default() -> Self {
        Rendered {
            cache: std::sync::Mutex::default(),
            turn: tokio::sync::Semaphore::new(1),
        }
    }
}

impl Rendered {
    fn get(&self, position: u64) -> Option<(SessionId, Arc<str>)> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .data
            .get(&position)
            .cloned()
    }

    fn put(&self, position: u64, stream: SessionId, data: Arc<str>) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.data.insert(position, (stream, data)).is_none() {
            cache.order.push_back(position);
            if cache.order.len() > RENDERED_EVENTS {
                if let Some(oldest) = cache.order.pop_front() {
                    cache.data.remove(&oldest);
                }
            }
        }
    }

    /// The SSE event of a stored event.
    async fn event(
        &self,
        engine: &Engine,
        memory: &mut HashMap<SessionId, (Version, Option<Phase>)>,
        event: linkflow::store::StoredEvent,
    ) -> Event {
        let position = event.position.0;
        let data = match self.get(position) {
            Some((_, data)) => data,
            None => {
                let _turn = self.turn.acquire().await;
                match self.get(position) {
                    Some((_, data)) => data,
                    None => {
                        let data: Arc<str> = render(engine, memory, &event).await.into();
                        self.put(position, event.stream.clone(), Arc::clone(&data));
                        data
                    }
                }
            }
        };
        match engine.privacy() {
            // The cache holds the sealed form: fields are opened for each sending, so that an
            // erasure shows at once.
            Some(_) => {
                let mut value: serde_json::Value =
                    serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
                engine.show_json(&mut value);
                sse_event(position, &value.to_string())
            }
            None => sse_event(position, &data),
        }
    }
}

/// What became of an event sent to a subscriber.
enum Sent {
    Yes,
    /// The client went away.
    Gone,
    /// The buffer stayed full for the stall timeout.
    Stalled,
}

/// Cuts off a subscriber that read nothing with a full buffer (its connection too).
fn stalled(metrics: &crate::Metrics, cut: Option<&CutConnection>, stall: Duration) {
    tracing::info!(
        stall_s = stall.as_secs_f64(),
        "an event-stream subscriber read nothing with a full buffer: cut off"
    );
    metrics.sse_cut();
    if let Some(cut) = cut {
        cut.cut();
    }
}

/// An SSE event with its position as id.
fn sse_event(position: u64, data: &str) -> Event {
    Event::default()
        .id(position.to_string())
        .event("event")
        .data(data)
}

/// One event's SSE data.
async fn render(
    engine: &Engine,
    memory: &mut HashMap<SessionId, (Version, Option<Phase>)>,
    event: &linkflow::store::StoredEvent,
) -> String {
    let before = Version(event.version.0.saturating_sub(1));
    let phase_before = phase_at(engine, memory, &event.stream, before).await;
    let phase_after = phase_at(engine, memory, &event.stream, event.version).await;
    json!({
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
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_catch_up_budget_spaces_turns_by_their_events() {
        let budget = CatchUpBudget::new(1_000);
        let now = tokio::time::Instant::now();
        // The first turn starts at once; each next one after its predecessor's share.
        assert_eq!(budget.spend(500), now);
        assert_eq!(budget.spend(500), now + Duration::from_millis(500));
        assert_eq!(budget.spend(1_000), now + Duration::from_secs(1));
        // Unused time is not saved up: after a pause the next turn starts when asked.
        tokio::time::advance(Duration::from_secs(10)).await;
        let later = tokio::time::Instant::now();
        assert_eq!(budget.spend(1), later);
    }
}

//! `GET /v1/stream`: committed events in global order as server-sent events, after a position
//! (`Last-Event-ID` or `?after=`: the events *after* it, the position itself excluded; none:
//! from the start): the log first (catch-up), then live. Each event's SSE id is its position,
//! so a reconnecting client resumes exactly where it stopped. `?session=` keeps one stream's
//! events (the others are read and skipped).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use linkflow_core::Position;
use serde::Deserialize;
use serde_json::json;

use crate::{ApiError, AppState};

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
    let events = stream::unfold(
        (subscription, shutting_down),
        move |(mut subscription, mut shutting_down)| {
            let session = session.clone();
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
                let data = json!({
                    "position": event.position,
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
                Some((Ok(sse), (subscription, shutting_down)))
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

//! What goes into an ingest and what comes out.

use chrono::{DateTime, Utc};
use linkflow_core::{
    Event, EventBody, InvalidSessionId, Origin, Phase, Position, Provider, Quarantined, SessionId,
    Version,
};
use linkflow_store::{DedupeHit, DedupeKey, RawJson};
use serde::Serialize;
use uuid::Uuid;

use crate::error::EventError;

/// One decoded event on its way into the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    /// The stream it belongs to: a session id, or an account's or merchant's stream id.
    pub session: SessionId,
    /// The provider that sent it.
    pub provider: Provider,
    /// What it says.
    pub body: EventBody,
    /// The event name as the provider sent it.
    pub raw_name: Option<String>,
    /// The payload exactly as delivered.
    pub raw: Option<RawJson>,
    /// The provider's event id; `None` mints a UUID v7 on receipt.
    pub event_id: Option<Uuid>,
    /// Identifies this delivery; `None` derives one from the provider, the session and the
    /// canonical event (see [`default_dedupe_key`]).
    pub dedupe_key: Option<DedupeKey>,
    /// When it was received; `None` is the engine's clock at ingest.
    pub received_at: Option<DateTime<Utc>>,
}

impl IncomingEvent {
    /// A decoded provider payload on its way in: its stream, body, name, id, dedupe key and
    /// payload text, received at `received_at`. Fails only if the stream id is not usable,
    /// which the adapters rule out (they quarantine such payloads).
    pub fn from_decoded(
        decoded: linkflow_providers::Decoded,
        received_at: DateTime<Utc>,
    ) -> Result<Self, InvalidSessionId> {
        use linkflow_providers::Target;
        let stream = decoded.target.stream_id()?;
        let body = match decoded.target {
            Target::Session { event, .. } => EventBody::Session(event),
            Target::Account { account, event } => EventBody::Account { account, event },
            Target::Merchant(status) => EventBody::Merchant(status),
        };
        Ok(IncomingEvent {
            session: stream,
            provider: decoded.provider,
            body,
            raw_name: Some(decoded.raw_name),
            raw: Some(raw_json(decoded.raw)),
            event_id: decoded.event_id,
            dedupe_key: Some(decoded.dedupe_key),
            received_at: Some(received_at),
        })
    }

    /// A payload that names no stream, on its way into its own quarantine stream, with the
    /// feed that decodes it again and where it came from.
    pub fn quarantined(
        unrouted: linkflow_providers::Unrouted,
        feed: linkflow_providers::Feed,
        origin: Origin,
        received_at: DateTime<Utc>,
    ) -> Self {
        IncomingEvent {
            session: unrouted.stream_id(),
            provider: unrouted.provider,
            body: EventBody::Quarantined(Quarantined {
                feed: feed.as_str().to_owned(),
                reason: unrouted.reason,
                origin,
            }),
            raw_name: unrouted.raw_name,
            raw: Some(raw_json(unrouted.raw)),
            event_id: None,
            dedupe_key: Some(unrouted.dedupe_key),
            received_at: Some(received_at),
        }
    }

    /// The session event, if this is one.
    pub fn session_event_mut(&mut self) -> Option<&mut Event> {
        match &mut self.body {
            EventBody::Session(event) => Some(event),
            _ => None,
        }
    }

    /// A session event for `session` with everything optional left to the engine.
    pub fn new(session: SessionId, provider: Provider, event: Event) -> Self {
        IncomingEvent::with_body(session, provider, EventBody::Session(event))
    }

    /// An event of any stream kind with everything optional left to the engine.
    pub fn with_body(stream: SessionId, provider: Provider, body: EventBody) -> Self {
        IncomingEvent {
            session: stream,
            provider,
            body,
            raw_name: None,
            raw: None,
            event_id: None,
            dedupe_key: None,
            received_at: None,
        }
    }
}

/// A payload text the adapter parsed: kept as it is.
fn raw_json(text: String) -> RawJson {
    RawJson::from_string(text)
        .expect("an adapter's payload text is the JSON it parsed, or that JSON re-serialized")
}

/// The dedupe key of an event whose adapter supplied none: a hash of the provider, the
/// session and the canonical event (kind, time, attributes). Two deliveries of the same
/// canonical event are one event; two events differing in anything, time included, are two.
pub fn default_dedupe_key(incoming: &IncomingEvent) -> DedupeKey {
    let canonical =
        serde_json::to_vec(&incoming.body).expect("serializing an event to memory cannot fail");
    DedupeKey::derive(&[
        incoming.provider.as_str().as_bytes(),
        incoming.session.as_str().as_bytes(),
        &canonical,
    ])
}

/// What happened to one ingested event.
///
/// An event stored in a session or account stream is `Accepted` or `Rejected` as that
/// stream's fold stands once it is in: the classification is **provisional**. A later arrival
/// that sorts before it in event time can change it (and the events around it), exactly as if
/// the events had arrived in order; `history` always shows the classification of the fold of
/// everything stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum IngestOutcome {
    /// Stored in its stream, and accepted by the stream's fold as it stands now.
    Accepted {
        /// The stream.
        session: SessionId,
        /// Its version (arrival number) in the stream.
        version: Version,
        /// Its global position (left out of JSON while pending: on PostgreSQL the sequencer
        /// numbers it a moment after the commit, docs/deploy.md).
        #[serde(skip_serializing_if = "Position::pending")]
        position: Position,
        /// The session's phase before it arrived (session events only).
        phase_before: Option<Phase>,
        /// The session's phase once it is folded in (session events only).
        phase_after: Option<Phase>,
        /// It sorts before events that arrived earlier: the stream was folded again.
        late: bool,
        /// Events of the stream the fold rejects now (a late event can change that count).
        rejected: u32,
        /// What the session's linked account did because of it.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        accounts: Vec<AccountFollow>,
    },
    /// Stored in its stream, and rejected by the stream's fold as it stands now: kept, shown
    /// with the reason, and accepted later if an event that makes it legal arrives.
    Rejected {
        /// The stream.
        session: SessionId,
        /// Its version (arrival number) in the stream.
        version: Version,
        /// Its global position (left out of JSON while pending: on PostgreSQL the sequencer
        /// numbers it a moment after the commit, docs/deploy.md).
        #[serde(skip_serializing_if = "Position::pending")]
        position: Position,
        /// Why the state machine refuses it where the fold places it.
        reason: String,
        /// It sorts before events that arrived earlier.
        late: bool,
        /// Events of the stream the fold rejects now, this one included.
        rejected: u32,
    },
    /// Already stored: nothing was written.
    Duplicate {
        /// The session.
        session: SessionId,
        /// Where the first delivery went.
        original: DedupeHit,
    },
    /// A payload that names no stream, kept in its own quarantine stream (`entry`) until a
    /// redrive decodes it into one.
    Quarantined {
        /// The quarantine entry's stream.
        entry: SessionId,
        /// Why no stream could take the payload.
        reason: String,
        /// The entry's global position (left out of JSON while pending).
        #[serde(skip_serializing_if = "Position::pending")]
        position: Position,
    },
    /// Not stored, for the reason given.
    Refused {
        /// Why.
        error: EventError,
    },
}

/// What a session's linked account did because of an event of the session: its fold gained
/// an accepted success with a known user and institution (the account is linked), lost it or
/// changed the user or institution (the link is withdrawn), or succeeded without what a link
/// needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "account", rename_all = "snake_case")]
pub enum AccountFollow {
    /// A `linked` event was stored in the account's stream.
    Linked {
        /// The account's stream.
        stream: SessionId,
        /// The event's version in it.
        version: Version,
        /// Its global position (left out of JSON while pending: on PostgreSQL the sequencer
        /// numbers it a moment after the commit, docs/deploy.md).
        #[serde(skip_serializing_if = "Position::pending")]
        position: Position,
    },
    /// A `link_withdrawn` event was stored in the account's stream.
    Withdrawn {
        /// The account's stream.
        stream: SessionId,
        /// The event's version in it.
        version: Version,
        /// Its global position (left out of JSON while pending: on PostgreSQL the sequencer
        /// numbers it a moment after the commit, docs/deploy.md).
        #[serde(skip_serializing_if = "Position::pending")]
        position: Position,
    },
    /// The session succeeded, but no account was linked, for the reason given (the session
    /// names no user or no institution, or the account's stream refused the event).
    NotLinked {
        /// Why.
        reason: String,
    },
}

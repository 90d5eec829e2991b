//! What goes into an ingest and what comes out.

use chrono::{DateTime, Utc};
use linkflow_core::{Event, Phase, Position, Provider, SessionId, Version};
use linkflow_store::{DedupeHit, DedupeKey, RawJson};
use serde::Serialize;
use uuid::Uuid;

use crate::error::EventError;

/// One decoded event on its way into the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    /// The session stream it belongs to.
    pub session: SessionId,
    /// The provider that sent it.
    pub provider: Provider,
    /// The canonical event.
    pub event: Event,
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
    /// An event for `session` with everything optional left to the engine.
    pub fn new(session: SessionId, provider: Provider, event: Event) -> Self {
        IncomingEvent {
            session,
            provider,
            event,
            raw_name: None,
            raw: None,
            event_id: None,
            dedupe_key: None,
            received_at: None,
        }
    }
}

/// The dedupe key of an event whose adapter supplied none: a hash of the provider, the
/// session and the canonical event (kind, time, attributes). Two deliveries of the same
/// canonical event are one event; two events differing in anything, time included, are two.
pub fn default_dedupe_key(incoming: &IncomingEvent) -> DedupeKey {
    let canonical =
        serde_json::to_vec(&incoming.event).expect("serializing an event to memory cannot fail");
    DedupeKey::derive(&[
        incoming.provider.as_str().as_bytes(),
        incoming.session.as_str().as_bytes(),
        &canonical,
    ])
}

/// What happened to one ingested event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum IngestOutcome {
    /// Appended to its session.
    Accepted {
        /// The session.
        session: SessionId,
        /// Its version in the session.
        version: Version,
        /// Its global position.
        position: Position,
        /// The phase before it.
        phase_before: Phase,
        /// The phase after it.
        phase_after: Phase,
        /// Parked events of the session that this event made legal, accepted right after it.
        redriven: Vec<Redriven>,
    },
    /// Already stored: nothing was written.
    Duplicate {
        /// The session.
        session: SessionId,
        /// Where the first delivery went.
        original: DedupeHit,
    },
    /// Refused by the state machine and parked with the reason; retried after each later
    /// accepted event of the session.
    Parked {
        /// The session.
        session: SessionId,
        /// The event's id (the key of its parked entry).
        event_id: Uuid,
        /// Why the session refused it.
        reason: String,
    },
    /// Not stored, for the reason given.
    Refused {
        /// Why.
        error: EventError,
    },
}

/// A parked event that a retry accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redriven {
    /// The session.
    pub session: SessionId,
    /// The event's id.
    pub event_id: Uuid,
    /// Its version in the session.
    pub version: Version,
    /// Its global position.
    pub position: Position,
    /// The phase after it.
    pub phase_after: Phase,
}

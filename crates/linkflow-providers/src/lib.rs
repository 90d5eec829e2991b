//! `linkflow-providers`: turns each provider's payloads into canonical events.
//!
//! One delivered payload is one [`Decoded`] event, with the stream it belongs to (a link
//! session, a linked account, or a merchant's availability), its event time, its dedupe key,
//! the provider's event name, and the payload text verbatim. Unknown event names become
//! `unrecognized` (stored, never an error); malformed payloads are a [`DecodeError`] naming the
//! JSON path of the problem.
//!
//! Modules: [`moneykit`] (Connect `onEvent` payloads), [`benji`] (linkflow's envelope around
//! the Connect SDK callbacks), [`knot`] (webhooks), [`signature`] (Knot's HMAC-SHA256
//! `Knot-Signature`), `json` (path-tracking field access), [`error`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod benji;
pub mod error;
mod json;
pub mod knot;
pub mod moneykit;
pub mod signature;

use chrono::{DateTime, Utc};
use linkflow_core::{AccountEvent, AccountKey, DedupeKey, Event, Provider, SessionId};
pub use linkflow_core::{Availability, MerchantStatus};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

pub use error::DecodeError;

/// The most events one delivery (a JSON array or JSON Lines) may hold.
pub const MAX_EVENTS_PER_DELIVERY: usize = 10_000;

/// What the caller knows about a delivery that the payload may not say.
#[derive(Debug, Clone)]
pub struct DecodeContext {
    /// When linkflow received it (Benji's event time; everyone's `received_at`).
    pub received_at: DateTime<Utc>,
    /// The session the integrator opened the flow for (Benji payloads carry none).
    pub session_id: Option<SessionId>,
    /// The integrator's id for the end user, when the payload does not carry it (MoneyKit).
    pub external_user_id: Option<String>,
}

impl DecodeContext {
    /// A context with only the receive time.
    pub fn received_at(received_at: DateTime<Utc>) -> Self {
        DecodeContext {
            received_at,
            session_id: None,
            external_user_id: None,
        }
    }
}

/// One decoded delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The provider.
    pub provider: Provider,
    /// Where it goes and what it says.
    pub target: Target,
    /// The event name as the provider sent it (`submit_credentials`, `onSuccess`,
    /// `AUTHENTICATED`).
    pub raw_name: String,
    /// The provider's event id, when it has one.
    pub event_id: Option<Uuid>,
    /// Identifies this delivery (see `docs/providers.md` for each provider's recipe).
    pub dedupe_key: DedupeKey,
    /// The payload text, verbatim.
    pub raw: String,
}

/// The stream a decoded event belongs to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A link-session event.
    Session {
        /// The session.
        session: SessionId,
        /// The canonical event.
        event: Event,
    },
    /// An event of a linked account's own stream.
    Account {
        /// The account.
        account: AccountKey,
        /// The account event.
        event: AccountEvent,
    },
    /// A merchant availability update.
    Merchant(MerchantStatus),
}

/// Decodes one event of `provider` from its JSON text.
pub fn decode(
    provider: Provider,
    text: &str,
    context: &DecodeContext,
) -> Result<Decoded, DecodeError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| DecodeError::not_json(&error))?;
    match provider {
        Provider::Moneykit => moneykit::decode(&value, text, context),
        Provider::Benji => benji::decode(&value, text, context),
        Provider::Knot => knot::decode(&value, text, context),
    }
}

/// Splits a body into the JSON texts of its events: a JSON array gives its elements, a
/// single value gives itself, and several values one per line (JSON Lines) give each line.
/// Each text is the delivered bytes verbatim.
pub fn split_events(body: &str) -> Result<Vec<&str>, DecodeError> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(body).map_err(|error| DecodeError::not_json(&error))?;
        if items.len() > MAX_EVENTS_PER_DELIVERY {
            return Err(DecodeError::invalid(
                "$",
                format!(
                    "{} events; at most {MAX_EVENTS_PER_DELIVERY} per delivery",
                    items.len()
                ),
            ));
        }
        return Ok(items.into_iter().map(RawValue::get).collect());
    }
    let mut texts = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(body).into_iter::<&RawValue>();
    for item in &mut stream {
        let item = item.map_err(|error| DecodeError::not_json(&error))?;
        texts.push(item.get());
        if texts.len() > MAX_EVENTS_PER_DELIVERY {
            return Err(DecodeError::invalid(
                "$",
                format!("more than {MAX_EVENTS_PER_DELIVERY} events in one delivery"),
            ));
        }
    }
    Ok(texts)
}

/// Where an event sits in a delivery, for messages about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// The 0-based index in a JSON array.
    Index(usize),
    /// The 1-based line of a JSON Lines body (or of a single value).
    Line(usize),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Index(index) => write!(f, "index {index}"),
            Location::Line(line) => write!(f, "line {line}"),
        }
    }
}

/// One event of a delivery: where it is, and its JSON text or why it is not JSON.
pub type LocatedEvent<'a> = (Location, Result<&'a str, DecodeError>);

/// Splits a body like [`split_events`], keeping where each event is. A JSON array must be
/// valid as a whole (else the error is the whole body's); JSON Lines are taken line by line,
/// so one bad line is one invalid event and the others still count.
pub fn split_located(body: &str) -> Result<Vec<LocatedEvent<'_>>, DecodeError> {
    if body.trim_start().starts_with('[') {
        return Ok(split_events(body)?
            .into_iter()
            .enumerate()
            .map(|(index, text)| (Location::Index(index), Ok(text)))
            .collect());
    }
    // Whole values, possibly pretty-printed over several lines, one after another.
    let mut located = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(body).into_iter::<&RawValue>();
    let mut start = 0;
    let mut clean = true;
    while let Some(item) = stream.next() {
        match item {
            Ok(value) => {
                let leading = body[start..].len() - body[start..].trim_start().len();
                let line = body[..start + leading].matches('\n').count() + 1;
                located.push((Location::Line(line), Ok(value.get())));
                start = stream.byte_offset();
            }
            Err(_) => {
                clean = false;
                break;
            }
        }
        if located.len() > MAX_EVENTS_PER_DELIVERY {
            return Err(DecodeError::invalid(
                "$",
                format!("more than {MAX_EVENTS_PER_DELIVERY} events in one delivery"),
            ));
        }
    }
    if clean {
        return Ok(located);
    }
    // Not a clean sequence of values: JSON Lines, each line on its own.
    let mut located = Vec::new();
    for (index, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let result = serde_json::from_str::<&RawValue>(line)
            .map(|value| value.get())
            .map_err(|error| DecodeError::not_json(&error));
        located.push((Location::Line(index + 1), result));
        if located.len() > MAX_EVENTS_PER_DELIVERY {
            return Err(DecodeError::invalid(
                "$",
                format!("more than {MAX_EVENTS_PER_DELIVERY} events in one delivery"),
            ));
        }
    }
    Ok(located)
}

/// The dedupe key of a delivery without a provider event id: provider, stream key, event
/// name, event time and the canonical payload (keys sorted, whitespace dropped), so that a
/// redelivery is recognised however it is formatted.
pub(crate) fn dedupe_key(
    provider: Provider,
    stream: &str,
    name: &str,
    time: Option<DateTime<Utc>>,
    payload: &serde_json::Value,
) -> DedupeKey {
    let canonical = serde_json::to_vec(payload).expect("serializing a value to memory cannot fail");
    let time = time.map(|time| time.timestamp_micros().to_be_bytes());
    DedupeKey::derive(&[
        provider.as_str().as_bytes(),
        stream.as_bytes(),
        name.as_bytes(),
        time.as_ref().map_or(&[][..], |bytes| &bytes[..]),
        &canonical,
    ])
}

/// Parses an ISO-8601 time at `path`.
pub(crate) fn iso_time(path: &str, text: &str) -> Result<DateTime<Utc>, DecodeError> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| {
            DecodeError::invalid(path, format!("`{text}` is not an ISO-8601 time: {error}"))
        })
}

/// Parses epoch milliseconds, as a number or a string of digits, at `path`.
pub(crate) fn epoch_millis(
    path: &str,
    value: &serde_json::Value,
) -> Result<DateTime<Utc>, DecodeError> {
    let millis = match value {
        serde_json::Value::Number(number) => number.as_i64(),
        serde_json::Value::String(text) => text.trim().parse::<i64>().ok(),
        other => {
            return Err(DecodeError::wrong_type(
                path,
                "epoch milliseconds (a number or a string of digits)",
                other,
            ))
        }
    }
    .ok_or_else(|| {
        DecodeError::invalid(
            path,
            format!("`{value}` is not a whole number of milliseconds"),
        )
    })?;
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| DecodeError::invalid(path, format!("{millis} ms is out of range")))
}

pub(crate) fn session_id(path: &str, text: &str) -> Result<SessionId, DecodeError> {
    SessionId::new(text).map_err(|error| DecodeError::invalid(path, error.to_string()))
}

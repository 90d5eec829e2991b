//! `linkflow-providers`: turns each provider's payloads into canonical events.
//!
//! One payload is one [`Decoded`] event, with the stream it belongs to (a link session, a
//! linked account, or a merchant's availability), its event time, its dedupe key, the
//! provider's event name, the payload text, and a [`Warning`] for every field the adapter
//! could not read. The intake rule (`docs/providers.md`): a payload is refused only when it is
//! not JSON or breaks a size limit ([`DecodeError`]); a field of an unexpected type or value is
//! a warning, kept in the raw text; an unknown event name is `unrecognized`; and a payload that
//! names no stream it can go to is [`Decoding::Quarantine`]d, never dropped.
//!
//! Modules: [`moneykit`] (Connect `onEvent` payloads from every SDK), [`benji`] (linkflow's
//! envelope around the Connect SDK callbacks, 2024 and current vocabularies), [`knot`]
//! (webhooks of every product), [`knot_sdk`] (linkflow's envelope around Knot's client SDK
//! callbacks), [`plaid`] (Plaid Link's `onEvent`, `onSuccess` and `onExit` callbacks),
//! [`plaid_webhook`] (Plaid's `LINK` and `ITEM` webhooks, and [`expand`], which splits an
//! `EVENTS` webhook into its events), [`plaid_jwt`] (the `Plaid-Verification` ES256 JWT),
//! `envelope` (what the two envelopes share),
//! [`signature`] (Knot's HMAC-SHA256 `Knot-Signature`), [`split`] (bodies and
//! streams into payload texts, in bounded memory), `json` (lenient field access), `secrets`
//! (tokens withheld from stored payloads), [`error`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod benji;
mod envelope;
pub mod error;
mod json;
pub mod knot;
pub mod knot_sdk;
pub mod moneykit;
pub mod plaid;
pub mod plaid_jwt;
pub mod plaid_webhook;
mod secrets;
pub mod signature;
pub mod split;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use linkflow_core::{
    AccountEvent, AccountKey, DedupeKey, Event, InvalidSessionId, Provider, SessionId,
};
pub use linkflow_core::{Availability, MerchantStatus};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

pub use error::DecodeError;
pub use split::{split_all, Location, Split, Splitter, MAX_PAYLOAD_BYTES};

use json::Notes;

/// The most payloads one HTTP delivery (a JSON array or JSON Lines body) may hold. Files given
/// to `linkflow ingest` have no such cap: they are read a chunk at a time.
pub const MAX_EVENTS_PER_DELIVERY: usize = 10_000;

/// What a body holds: a provider's payloads, from one of its outputs. A provider can have two
/// (Knot's webhooks and its client SDK's callbacks); both feed the same provider's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feed {
    /// MoneyKit Connect `onEvent` payloads, from any of its SDKs.
    Moneykit,
    /// Benji Connect callbacks in linkflow's envelope.
    Benji,
    /// Knot webhooks.
    Knot,
    /// Knot client SDK callbacks in linkflow's envelope.
    KnotSdk,
    /// Plaid Link client callbacks (`onEvent`, `onSuccess`, `onExit`), forwarded by the
    /// frontend.
    Plaid,
    /// Plaid webhooks (`LINK` and `ITEM`).
    PlaidWebhook,
}

impl Feed {
    /// Every feed.
    pub const ALL: [Feed; 6] = [
        Feed::Moneykit,
        Feed::Benji,
        Feed::Knot,
        Feed::KnotSdk,
        Feed::Plaid,
        Feed::PlaidWebhook,
    ];

    /// The provider whose streams the feed's payloads go to.
    pub const fn provider(self) -> Provider {
        match self {
            Feed::Moneykit => Provider::Moneykit,
            Feed::Benji => Provider::Benji,
            Feed::Knot | Feed::KnotSdk => Provider::Knot,
            Feed::Plaid | Feed::PlaidWebhook => Provider::Plaid,
        }
    }

    /// The name used on the command line (`--provider knot-sdk`) and in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Feed::Moneykit => "moneykit",
            Feed::Benji => "benji",
            Feed::Knot => "knot",
            Feed::KnotSdk => "knot-sdk",
            Feed::Plaid => "plaid",
            Feed::PlaidWebhook => "plaid-webhook",
        }
    }
}

impl fmt::Display for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a feed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider `{0}`; expected moneykit, benji, knot (webhooks), knot-sdk, plaid (client callbacks) or plaid-webhook")]
pub struct UnknownFeed(pub String);

impl FromStr for Feed {
    type Err = UnknownFeed;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Feed::ALL
            .into_iter()
            .find(|feed| feed.as_str() == text)
            .ok_or_else(|| UnknownFeed(text.to_owned()))
    }
}

impl From<Provider> for Feed {
    /// The provider's main feed (Knot's webhooks, Plaid's client callbacks).
    fn from(provider: Provider) -> Self {
        match provider {
            Provider::Moneykit => Feed::Moneykit,
            Provider::Benji => Feed::Benji,
            Provider::Knot => Feed::Knot,
            Provider::Plaid => Feed::Plaid,
        }
    }
}

/// What the caller knows about a delivery that the payload may not say.
#[derive(Debug, Clone)]
pub struct DecodeContext {
    /// When linkflow received it (the event time of payloads that carry none).
    pub received_at: DateTime<Utc>,
    /// The session the integrator opened the flow for, for payloads that carry none (Benji,
    /// Knot's SDK, MoneyKit's Android bridge). A payload's own session id wins over it.
    pub session_id: Option<SessionId>,
    /// The integrator's id for the end user, when the payload does not carry it.
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

/// A field the adapter could not read as documented: kept in the raw payload, reported here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The JSON path of the field (`$.meta.link_type`).
    pub path: String,
    /// What was odd about it and what the adapter did.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What one payload decodes to.
#[derive(Debug, Clone, PartialEq)]
// One value per payload, moved once into an event: a box would cost an allocation per payload
// to save bytes that are never many at a time.
#[allow(clippy::large_enum_variant)]
pub enum Decoding {
    /// An event for a stream.
    Event(Decoded),
    /// A payload that names no stream it can go to: to be kept in quarantine.
    Quarantine(Unrouted),
}

/// One decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The provider.
    pub provider: Provider,
    /// Where it goes and what it says.
    pub target: Target,
    /// The event name as the provider sent it (`submit_credentials`, `onSuccess`,
    /// `AUTHENTICATED`); empty when the payload names none.
    pub raw_name: String,
    /// The provider's event id, when it has one.
    pub event_id: Option<Uuid>,
    /// Identifies this delivery (see `docs/providers.md` for each provider's recipe).
    pub dedupe_key: DedupeKey,
    /// The payload text: verbatim, unless a token had to be withheld.
    pub raw: String,
    /// Every field the adapter could not read.
    pub warnings: Vec<Warning>,
}

/// A payload that names no stream: no session id, no user, nothing the adapter can key it by.
#[derive(Debug, Clone, PartialEq)]
pub struct Unrouted {
    /// The provider.
    pub provider: Provider,
    /// Why no stream could take it.
    pub reason: String,
    /// The event name, when the payload has one.
    pub raw_name: Option<String>,
    /// Identifies the payload: the feed and its content, so a retried delivery is kept once.
    pub dedupe_key: DedupeKey,
    /// The payload text: verbatim, unless a token had to be withheld.
    pub raw: String,
    /// Every field the adapter could not read.
    pub warnings: Vec<Warning>,
}

impl Unrouted {
    /// The id of the quarantine stream that keeps this payload:
    /// `quarantine:<provider>:<dedupe key as hex>`, so a retried delivery finds its entry.
    pub fn stream_id(&self) -> SessionId {
        let hex: String = self
            .dedupe_key
            .as_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        SessionId::new(format!("quarantine:{}:{hex}", self.provider))
            .expect("a provider name and hex digits make a valid id")
    }

    /// A decoded payload that its stream turned away (the session belongs to another provider,
    /// the id names a stream of another kind, the session holds the most refused events
    /// allowed), to be kept in quarantine instead with `reason`. `raw` is the stored payload
    /// text (JSON: the adapter produced it).
    pub fn turned_away(
        feed: Feed,
        raw: &str,
        raw_name: Option<String>,
        reason: String,
    ) -> Result<Unrouted, DecodeError> {
        let value: Value =
            serde_json::from_str(raw).map_err(|error| DecodeError::not_json(&error))?;
        Ok(Unrouted {
            provider: feed.provider(),
            reason,
            raw_name,
            dedupe_key: quarantine_key(feed, &value),
            raw: raw.to_owned(),
            warnings: Vec::new(),
        })
    }
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
    /// An event of a linked account's own stream (or, with an empty institution id, of the
    /// user's stream for notices that name no merchant).
    Account {
        /// The account.
        account: AccountKey,
        /// The account event.
        event: AccountEvent,
    },
    /// A merchant availability update.
    Merchant(MerchantStatus),
}

impl Target {
    /// The id of the stream the event goes to.
    pub fn stream_id(&self) -> Result<SessionId, InvalidSessionId> {
        match self {
            Target::Session { session, .. } => Ok(session.clone()),
            Target::Account { account, .. } => account.stream_id(),
            Target::Merchant(status) => status.stream_id(),
        }
    }
}

/// The payloads one split text of `feed` holds: itself, except a Plaid `EVENTS` webhook,
/// which holds one per event ([`plaid_webhook::expand`]). Call it between splitting and
/// decoding.
pub fn expand(feed: Feed, text: String) -> Vec<String> {
    match feed {
        Feed::PlaidWebhook => plaid_webhook::expand(text),
        _ => vec![text],
    }
}

/// Decodes one payload of `feed` from its JSON text. Only text that is not JSON is an error.
pub fn decode(feed: Feed, text: &str, context: &DecodeContext) -> Result<Decoding, DecodeError> {
    let mut value: Value =
        serde_json::from_str(text).map_err(|error| DecodeError::not_json(&error))?;
    let mut notes = Notes::default();
    let withheld = secrets::withhold(&mut value);
    let raw = if withheld.is_empty() {
        text.to_owned()
    } else {
        for path in withheld {
            notes.warn(path, "a token: withheld, not stored");
        }
        value.to_string()
    };
    let payload = Payload {
        feed,
        value: &value,
        raw: &raw,
        context,
    };
    let routed = match feed {
        Feed::Moneykit => moneykit::decode(payload, &mut notes),
        Feed::Benji => benji::decode(payload, &mut notes),
        Feed::Knot => knot::decode(payload, &mut notes),
        Feed::KnotSdk => knot_sdk::decode(payload, &mut notes),
        Feed::Plaid => plaid::decode(payload, &mut notes),
        Feed::PlaidWebhook => plaid_webhook::decode(payload, &mut notes),
    };
    Ok(finish(payload, routed, notes))
}

/// A payload on its way through an adapter.
#[derive(Clone, Copy)]
pub(crate) struct Payload<'a> {
    pub feed: Feed,
    pub value: &'a Value,
    /// The text to store.
    pub raw: &'a str,
    pub context: &'a DecodeContext,
}

/// What an adapter decided: an event, or no stream and why.
#[allow(clippy::large_enum_variant)] // as for `Decoding`
pub(crate) enum Routed {
    Event {
        target: Target,
        raw_name: String,
        event_id: Option<Uuid>,
        dedupe_key: DedupeKey,
    },
    Nowhere {
        reason: String,
        raw_name: Option<String>,
    },
}

impl Payload<'_> {
    /// A payload that names no stream.
    pub fn nowhere(&self, reason: impl Into<String>, raw_name: Option<&str>) -> Routed {
        Routed::Nowhere {
            reason: reason.into(),
            raw_name: raw_name.map(str::to_owned),
        }
    }
}

/// Turns an adapter's decision into a [`Decoding`], quarantining an event whose stream id is
/// not usable (an account key holding a control character, say).
fn finish(payload: Payload<'_>, routed: Routed, notes: Notes) -> Decoding {
    let provider = payload.feed.provider();
    match routed {
        Routed::Event {
            target,
            raw_name,
            event_id,
            dedupe_key,
        } => match target.stream_id() {
            Ok(_) => Decoding::Event(Decoded {
                provider,
                target,
                raw_name,
                event_id,
                dedupe_key,
                raw: payload.raw.to_owned(),
                warnings: notes.warnings,
            }),
            Err(error) => quarantine(
                payload,
                format!("the stream it names is not usable: {error}"),
                Some(raw_name),
                notes,
            ),
        },
        Routed::Nowhere { reason, raw_name } => quarantine(payload, reason, raw_name, notes),
    }
}

fn quarantine(
    payload: Payload<'_>,
    reason: String,
    raw_name: Option<String>,
    notes: Notes,
) -> Decoding {
    Decoding::Quarantine(Unrouted {
        provider: payload.feed.provider(),
        reason,
        raw_name,
        dedupe_key: quarantine_key(payload.feed, payload.value),
        raw: payload.raw.to_owned(),
        warnings: notes.warnings,
    })
}

/// A quarantined payload's key: the feed and the canonical payload, so that a retried
/// delivery finds its entry however it is formatted.
fn quarantine_key(feed: Feed, value: &Value) -> DedupeKey {
    let canonical = serde_json::to_vec(value).expect("serializing a value to memory cannot fail");
    DedupeKey::derive(&[b"quarantine", feed.as_str().as_bytes(), &canonical])
}

/// The dedupe key of a delivery without a provider event id: provider, stream key, event
/// name, event time and the canonical payload (keys sorted, whitespace dropped), so that a
/// redelivery is recognised however it is formatted.
pub(crate) fn dedupe_key(
    provider: Provider,
    stream: &str,
    name: &str,
    time: Option<DateTime<Utc>>,
    payload: &Value,
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

/// An event time in any of the shapes providers send: an ISO-8601 string, or epoch
/// milliseconds as a number or a string of digits. Anything else is noted and skipped.
pub(crate) fn event_time(path: &str, value: &Value, notes: &mut Notes) -> Option<DateTime<Utc>> {
    let parsed = match value {
        Value::Number(number) => number.as_i64().and_then(DateTime::from_timestamp_millis),
        Value::String(text) if text.trim().bytes().all(|byte| byte.is_ascii_digit()) => text
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis),
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|time| time.with_timezone(&Utc)),
        _ => None,
    };
    if parsed.is_none() {
        notes.warn(
            path,
            format!("`{value}` is not an ISO-8601 time or epoch milliseconds; the event has no provider time"),
        );
    }
    parsed
}

/// The session a payload goes to: its own id (`found`: path and text) when usable, else the
/// one the caller supplied. A payload id that differs from the caller's wins, with a warning.
/// `Err` is why there is none (the payload is quarantined).
pub(crate) fn session_for(
    found: Option<(String, String)>,
    context: &DecodeContext,
    notes: &mut Notes,
) -> Result<SessionId, String> {
    let supplied = context.session_id.as_ref();
    match found {
        Some((path, text)) => match SessionId::new(text.as_str()) {
            Ok(own) => {
                if let Some(supplied) = supplied.filter(|supplied| **supplied != own) {
                    notes.warn(
                        path,
                        format!("the payload's session `{own}` is used; the request named `{supplied}`"),
                    );
                }
                Ok(own)
            }
            Err(error) => match supplied {
                Some(supplied) => {
                    notes.warn(
                        path,
                        format!("not a usable session id ({error}); the request's `{supplied}` is used"),
                    );
                    Ok(supplied.clone())
                }
                None => Err(format!("{path} is not a usable session id: {error}")),
            },
        },
        None => supplied.cloned().ok_or_else(|| {
            "no session id in the payload, and none given with the request (`--session`, `?session_id=`)".to_owned()
        }),
    }
}

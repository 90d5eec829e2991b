//! Benji Connect: the SDK's callbacks run in the browser, so the integrator's frontend forwards
//! each one in linkflow's envelope (documented in `docs/providers.md`):
//!
//! ```json
//! {"callback": "onEvent", "session_id": "...", "event": "user_partner_select",
//!  "metadata": {"partner_id": "...", "external_user_id": "...", "screen_name": "..."},
//!  "event_id": "optional, stable across retries", "timestamp": "optional browser time"}
//! ```
//!
//! `onSuccess`, `onExit`, `onEvent(event, metadata)`, `onError(error, error_id)`. There is no
//! provider time: the receive time is the event time unless the frontend stamped one.

use linkflow_core::{ErrorInfo, Event, EventKind, Provider};
use serde_json::Value;
use uuid::Uuid;

use crate::json::{At, Obj};
use crate::{
    dedupe_key, epoch_millis, iso_time, session_id, DecodeContext, DecodeError, Decoded, Target,
};

/// Every documented `onEvent` name and its canonical kind.
pub const EVENT_NAMES: [(&str, EventKind); 4] = [
    ("user_partner_select", EventKind::InstitutionSelected),
    ("user_authenticated_with_partner", EventKind::Authenticated),
    ("go_back_clicked", EventKind::WentBack),
    ("user_inactive", EventKind::Inactive),
];

/// The documented `onError` codes.
pub const ERROR_CODES: [&str; 2] = ["unexpected_error", "partner_connect_error"];

/// Decodes one forwarded Benji callback.
pub fn decode(value: &Value, text: &str, context: &DecodeContext) -> Result<Decoded, DecodeError> {
    let root = Obj::new(At::root(value))?;
    let callback = root.str("callback")?;
    let session = match root.opt_str("session_id")? {
        Some(id) => session_id(&root.path_of("session_id"), id)?,
        None => context
            .session_id
            .clone()
            .ok_or_else(|| DecodeError::Missing {
                path: root.path_of("session_id"),
            })?,
    };
    let stamped = match root.value("timestamp") {
        None => None,
        Some(Value::String(text)) if text.contains('-') => {
            Some(iso_time(&root.path_of("timestamp"), text)?)
        }
        Some(value) => Some(epoch_millis(&root.path_of("timestamp"), value)?),
    };
    let event_id_text = root.opt_str("event_id")?;
    let metadata = root.opt_obj("metadata")?;

    let (kind, raw_name) = match callback {
        "onSuccess" => (EventKind::Succeeded, callback.to_owned()),
        "onExit" => (EventKind::Exited, callback.to_owned()),
        "onError" => (EventKind::Error, callback.to_owned()),
        "onEvent" => {
            let name = root.str("event")?;
            let kind = EVENT_NAMES
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, kind)| kind.clone())
                .unwrap_or_else(|| EventKind::Unrecognized {
                    raw_name: name.to_owned(),
                });
            (kind, name.to_owned())
        }
        other => (
            EventKind::Unrecognized {
                raw_name: other.to_owned(),
            },
            other.to_owned(),
        ),
    };
    let mut event = Event::new(kind.clone()).at(stamped.unwrap_or(context.received_at));
    if let Some(metadata) = &metadata {
        if let Some(partner) = metadata.opt_id("partner_id")? {
            event = event.with_institution(partner, None);
        }
        event.attributes.external_user_id =
            metadata.opt_str("external_user_id")?.map(str::to_owned);
        event.attributes.screen_name = metadata.opt_str("screen_name")?.map(str::to_owned);
    }
    if event.attributes.external_user_id.is_none() {
        event.attributes.external_user_id = context.external_user_id.clone();
    }
    if kind == EventKind::Error {
        event.attributes.error = Some(ErrorInfo {
            id: root.opt_str("error_id")?.map(str::to_owned),
            code: Some(root.str("error")?.to_owned()),
            message: None,
            request_id: None,
        });
    }
    let dedupe = match event_id_text {
        Some(id) => linkflow_core::DedupeKey::derive(&[
            b"benji",
            session.as_str().as_bytes(),
            id.as_bytes(),
        ]),
        None => dedupe_key(Provider::Benji, session.as_str(), &raw_name, stamped, value),
    };
    Ok(Decoded {
        provider: Provider::Benji,
        raw_name,
        event_id: event_id_text.and_then(|id| Uuid::parse_str(id).ok()),
        dedupe_key: dedupe,
        raw: text.to_owned(),
        target: Target::Session { session, event },
    })
}

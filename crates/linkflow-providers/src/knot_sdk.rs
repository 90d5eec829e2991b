//! Knot's client SDK callbacks (web, iOS, Android, React Native, Flutter), forwarded by the
//! integrator's frontend in linkflow's envelope, the second Knot input next to webhooks
//! (`POST /v1/events/knot`, `linkflow ingest --provider knot-sdk`):
//!
//! ```json
//! {"callback": "onEvent", "session_id": "the Knot session the SDK was opened with",
//!  "product": "card_switcher", "event": "MERCHANT_CLICKED", "merchant": "Uber",
//!  "merchant_id": 10, "task_id": "25605", "payload": {}, "event_id": "optional",
//!  "timestamp": "optional"}
//! ```
//!
//! The callbacks' own arguments keep their names, in either spelling: the web SDK's
//! `onEvent(product, event, merchant, merchantId, payload, taskId)`, `onSuccess(product,
//! details{merchantName})`, `onError(product, errorCode, message)`, `onExit(product)`; the
//! React Native bridge's `{event, merchant, taskId, sendCard}`, `{merchant}`, `{error,
//! message}`. The callbacks carry no session id (the integrator opened the SDK with it) and no
//! time: the receive time is the event time unless the frontend stamped one.

use linkflow_core::{ErrorInfo, Event, EventKind, Institution, Provider};
use uuid::Uuid;

use crate::json::{Notes, Obj};
use crate::{dedupe_key, event_time, session_for, Payload, Routed, Target};

/// Every documented `onEvent` name and its canonical kind.
pub const EVENT_NAMES: [(&str, EventKind); 9] = [
    ("REFRESH_SESSION_REQUEST", EventKind::ProviderEvent),
    ("MERCHANT_CLICKED", EventKind::InstitutionSelected),
    ("LOGIN_STARTED", EventKind::CredentialsSubmitted),
    ("AUTHENTICATED", EventKind::Authenticated),
    ("OTP_REQUIRED", EventKind::StepUpRequired),
    ("QUESTIONS_REQUIRED", EventKind::StepUpRequired),
    ("APPROVAL_REQUIRED", EventKind::StepUpRequired),
    ("ZIPCODE_REQUIRED", EventKind::StepUpRequired),
    ("LICENSE_REQUIRED", EventKind::StepUpRequired),
];

/// Decodes one forwarded Knot SDK callback.
pub(crate) fn decode(payload: Payload<'_>, notes: &mut Notes) -> Routed {
    let Some(root) = Obj::root(payload.value) else {
        return payload.nowhere(
            "the payload is not a JSON object, so it names no session",
            None,
        );
    };
    let callback = callback_of(&root, notes);
    let name = match callback.as_str() {
        "onEvent" => root.text("event", notes).unwrap_or_else(|| {
            notes.warn("$.event", "missing: the event is kept as unrecognized");
            String::new()
        }),
        other => other.to_owned(),
    };
    let found = root
        .first_of(&["session_id", "sessionId"])
        .and_then(|(key, _)| Some((root.path_of(key), root.text(key, notes)?)));
    let session = match session_for(found, payload.context, notes) {
        Ok(session) => session,
        Err(reason) => return payload.nowhere(reason, Some(&name)),
    };
    let stamped = root
        .first_of(&["timestamp"])
        .and_then(|(key, value)| event_time(&root.path_of(key), value, notes));
    let kind = match callback.as_str() {
        "onSuccess" => EventKind::Succeeded,
        "onExit" => EventKind::Exited,
        "onError" => EventKind::Error,
        "onEvent" => EVENT_NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, kind)| kind.clone())
            .unwrap_or_else(|| EventKind::Unrecognized {
                raw_name: name.clone(),
            }),
        _ => EventKind::Unrecognized {
            raw_name: name.clone(),
        },
    };
    let mut event = Event::new(kind.clone()).at(stamped.unwrap_or(payload.context.received_at));
    event.attributes.institution = merchant(&root, notes);
    event.attributes.external_user_id = payload.context.external_user_id.clone();
    if kind == EventKind::Error {
        event.attributes.error = Some(ErrorInfo {
            code: root.text_of(&["error_code", "errorCode", "error"], notes),
            message: root.text_of(&["message", "errorDescription", "error_description"], notes),
            ..ErrorInfo::default()
        });
    }
    let event_id_text = root.text("event_id", notes);
    let dedupe = match &event_id_text {
        Some(id) => linkflow_core::DedupeKey::derive(&[
            b"knot-sdk",
            session.as_str().as_bytes(),
            id.as_bytes(),
        ]),
        None => dedupe_key(
            Provider::Knot,
            session.as_str(),
            &name,
            stamped,
            payload.value,
        ),
    };
    Routed::Event {
        target: Target::Session { session, event },
        raw_name: name,
        event_id: event_id_text.and_then(|id| Uuid::parse_str(&id).ok()),
        dedupe_key: dedupe,
    }
}

/// The envelope's callback; without one, an `event` means `onEvent` and an `error` (or
/// `errorCode`) means `onError` (noted); otherwise the event is unrecognized.
fn callback_of(root: &Obj<'_>, notes: &mut Notes) -> String {
    if let Some(callback) = root.text("callback", notes) {
        return callback;
    }
    let inferred = if root.value("event").is_some() {
        "onEvent"
    } else if root
        .first_of(&["error", "errorCode", "error_code"])
        .is_some()
    {
        "onError"
    } else {
        notes.warn("$.callback", "missing: the event is kept as unrecognized");
        return String::new();
    };
    notes.warn(
        "$.callback",
        format!("missing: read as `{inferred}` from the fields present"),
    );
    inferred.to_owned()
}

/// The merchant as the institution: its id (`merchant_id`, `merchantId`) and name
/// (`merchant`, or `details.merchantName` of a web `onSuccess`). Without an id there is no
/// institution: the name alone is kept in the raw payload. A `merchant` object (`{id, name}`,
/// as in the webhooks) is read too.
fn merchant(root: &Obj<'_>, notes: &mut Notes) -> Option<Institution> {
    if let Some(serde_json::Value::Object(_)) = root.value("merchant") {
        // A merchant object, as in the webhooks.
        let merchant = root.obj("merchant", notes)?;
        return Some(Institution {
            id: merchant.id_of(&["id"], notes)?,
            name: merchant.text("name", notes),
        });
    }
    let id = root.id_of(&["merchant_id", "merchantId"], notes)?;
    let name = match root.value("merchant") {
        Some(_) => root.text("merchant", notes),
        None => root
            .obj("details", notes)
            .and_then(|details| details.text_of(&["merchantName", "merchant_name"], notes)),
    };
    Some(Institution { id, name })
}

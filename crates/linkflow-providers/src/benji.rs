//! Benji Connect: the SDK's callbacks run in the browser or the app, so the integrator's
//! frontend forwards each one in linkflow's envelope (documented in `docs/providers.md`):
//!
//! ```json
//! {"callback": "onEvent", "session_id": "...", "event": "AUTH_SUCCESS",
//!  "metadata": {"context": {"namespace": "benji-connect-sdk", "version": "1.0.7"}},
//!  "error": ..., "error_id": "...", "event_id": "optional, stable across retries",
//!  "timestamp": "optional browser time"}
//! ```
//!
//! Two vocabularies: the 2024 SDK (`onEvent` names `user_partner_select`,
//! `user_authenticated_with_partner`, `go_back_clicked`, `user_inactive`; `onError(error code,
//! error_id)`) and the current one (`onEvent` types `AUTH_SUCCESS` and `EVENT`; the partner
//! comes from the connect token, so no selection is sent; `onExit({trigger, step})`;
//! `onError(error, error_id)` with a JavaScript `Error` that serializes as `{}`, or
//! `{name, message, stack}` from iOS). There is no provider time: the receive time is the
//! event time unless the frontend stamped one.

use linkflow_core::{ErrorInfo, Event, EventKind, Institution, Provider};
use serde_json::Value;
use uuid::Uuid;

use crate::json::{as_text, Notes, Obj};
use crate::{dedupe_key, event_time, session_for, Payload, Routed, Target};

/// Every documented `onEvent` name and its canonical kind: the 2024 names, the current SDK's
/// event types, and the transport types the SDK forwards to `onEvent` when it does not route
/// them itself.
pub const EVENT_NAMES: [(&str, EventKind); 9] = [
    ("user_partner_select", EventKind::InstitutionSelected),
    ("user_authenticated_with_partner", EventKind::Authenticated),
    ("go_back_clicked", EventKind::WentBack),
    ("user_inactive", EventKind::Inactive),
    ("AUTH_SUCCESS", EventKind::Authenticated),
    ("EVENT", EventKind::ProviderEvent),
    ("FLOW_SUCCESS", EventKind::Succeeded),
    ("FLOW_EXIT", EventKind::Exited),
    ("ERROR", EventKind::Error),
];

/// The documented `onError` codes (2024) and error names (current SDK).
pub const ERROR_CODES: [&str; 2] = ["unexpected_error", "partner_connect_error"];

/// Decodes one forwarded Benji callback.
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
        .first_of(&["session_id"])
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
    if let Some(metadata) = root.obj("metadata", notes) {
        read_metadata(&metadata, &mut event, notes);
    }
    if event.attributes.external_user_id.is_none() {
        event.attributes.external_user_id = payload.context.external_user_id.clone();
    }
    if kind == EventKind::Error {
        event.attributes.error = Some(read_error(&root, notes));
    }
    let event_id_text = root.text("event_id", notes);
    let dedupe = match &event_id_text {
        Some(id) => linkflow_core::DedupeKey::derive(&[
            b"benji",
            session.as_str().as_bytes(),
            id.as_bytes(),
        ]),
        None => dedupe_key(
            Provider::Benji,
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

/// The envelope's callback. A forward without one is read by what it carries: an `event` is
/// an `onEvent`, an `error` an `onError` (both noted); otherwise it is unrecognized.
fn callback_of(root: &Obj<'_>, notes: &mut Notes) -> String {
    if let Some(callback) = root.text("callback", notes) {
        return callback;
    }
    let inferred = if root.value("event").is_some() {
        "onEvent"
    } else if root.value("error").is_some() {
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

fn read_metadata(metadata: &Obj<'_>, event: &mut Event, notes: &mut Notes) {
    if let Some(partner) = metadata.id_of(&["partner_id"], notes) {
        event.attributes.institution = Some(Institution {
            id: partner,
            name: None,
        });
    }
    event.attributes.external_user_id = metadata.text("external_user_id", notes);
    event.attributes.screen_name = metadata.text("screen_name", notes);
    // The current SDK's onExit: why the UI closed and the step the user was on.
    event.attributes.exit_status = metadata.text("trigger", notes);
    event.attributes.exit_step = metadata.text("step", notes);
}

/// The error of an `onError`: a code string (2024), or any JSON value (current SDK): an
/// object's `name` / `code` / `error` is the code and `message` the message; a JavaScript
/// `Error` serialized as `{}` says nothing but is still an error. `error_id` is a string or a
/// number.
fn read_error(root: &Obj<'_>, notes: &mut Notes) -> ErrorInfo {
    let mut error = ErrorInfo {
        id: root.text("error_id", notes),
        ..ErrorInfo::default()
    };
    match root.value("error") {
        None => {}
        Some(Value::Object(map)) => {
            let object = root
                .obj("error", notes)
                .expect("the value was just seen to be an object");
            error.code = object.text_of(&["name", "code", "error"], notes);
            error.message = object.text("message", notes);
            if map.is_empty() {
                notes.warn(
                    "$.error",
                    "an empty object (a serialized JavaScript Error): no code or message",
                );
            }
        }
        Some(Value::Array(_)) => {
            notes.warn("$.error", "an array: kept in the raw payload");
        }
        Some(value) => error.code = as_text(value, "$.error", notes),
    }
    error
}

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

use linkflow_core::{ErrorInfo, Event, EventKind, Institution};
use serde_json::Value;

use crate::envelope::{Envelope, Spelling};
use crate::json::{as_text, Notes, Obj};
use crate::{Payload, Routed};

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

/// How Benji's envelope is spelled.
const SPELLING: Spelling = Spelling {
    session_keys: &["session_id"],
    error_keys: &["error"],
};

/// Decodes one forwarded Benji callback.
pub(crate) fn decode(payload: Payload<'_>, notes: &mut Notes) -> Routed {
    let envelope = match Envelope::read(payload, &SPELLING, notes) {
        Ok(envelope) => envelope,
        Err(nowhere) => return *nowhere,
    };
    let kind = envelope.kind(&EVENT_NAMES);
    let mut event = envelope.event(kind.clone(), &payload);
    if let Some(metadata) = envelope.root.obj("metadata", notes) {
        read_metadata(&metadata, &mut event, notes);
    }
    if event.attributes.external_user_id.is_none() {
        event.attributes.external_user_id = payload.context.external_user_id.clone();
    }
    if kind == EventKind::Error {
        event.attributes.error = Some(read_error(&envelope.root, notes));
    }
    envelope.route(event, b"benji", payload, notes)
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

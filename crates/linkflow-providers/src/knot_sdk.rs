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

use linkflow_core::{ErrorInfo, EventKind, Institution};

use crate::envelope::{Envelope, Spelling};
use crate::json::{Notes, Obj};
use crate::{Payload, Routed};

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

/// How the envelope of Knot's SDK callbacks is spelled.
const SPELLING: Spelling = Spelling {
    session_keys: &["session_id", "sessionId"],
    error_keys: &["error", "errorCode", "error_code"],
};

/// Decodes one forwarded Knot SDK callback.
pub(crate) fn decode(payload: Payload<'_>, notes: &mut Notes) -> Routed {
    let envelope = match Envelope::read(payload, &SPELLING, notes) {
        Ok(envelope) => envelope,
        Err(nowhere) => return *nowhere,
    };
    let root = &envelope.root;
    let kind = envelope.kind(&EVENT_NAMES);
    let mut event = envelope.event(kind.clone(), &payload);
    event.attributes.institution = merchant(root, notes);
    event.attributes.external_user_id = payload.context.external_user_id.clone();
    if kind == EventKind::Error {
        event.attributes.error = Some(ErrorInfo {
            code: root.text_of(&["error_code", "errorCode", "error"], notes),
            message: root.text_of(&["message", "errorDescription", "error_description"], notes),
            ..ErrorInfo::default()
        });
    }
    envelope.route(event, b"knot-sdk", payload, notes)
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

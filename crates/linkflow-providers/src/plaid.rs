//! Plaid Link's client callbacks, forwarded by the integrator's frontend (feed `plaid`), and
//! the event mapping Plaid's `EVENTS` webhook shares with them. Shapes (sources in
//! `docs/providers.md`):
//!
//! - `onEvent`: `{eventName, metadata}`, the metadata in snake_case as the web SDK gives it
//!   (`plaid/react-plaid-link` `src/types/index.ts`, `PlaidLinkOnEventMetadata`) or in
//!   camelCase as the React Native SDK does (`plaid/react-native-plaid-link-sdk`
//!   `src/Types.ts`, `LinkEventMetadata`); event names in Plaid's UPPER_SNAKE_CASE or, from
//!   some wrappers, camelCase (`selectInstitution`);
//! - `onSuccess`: `{public_token, metadata}` (web) or `{publicToken, metadata}` (React
//!   Native), the metadata holding `institution`, `accounts` and the session id; the token is
//!   withheld, never stored; an `item_id` the integrator's backend got from
//!   `/item/public_token/exchange` may ride along (top level or in `metadata`): it links the
//!   Plaid item to the session;
//! - `onExit`: `{error, metadata}`, `error` null or `{error_type, error_code, error_message,
//!   display_message}` (camelCase from React Native), `metadata` `{institution, status,
//!   link_session_id, request_id}`.
//!
//! A `callback` field (`onEvent`, `onSuccess`, `onExit`) says which one a payload is; without
//! it the shape does (`eventName` an event, a public token or `accounts` a success, `error` or
//! an exit `status` an exit). Session key: `metadata.link_session_id` (`linkSessionId`), else
//! a top-level `link_session_id`, else the caller's; none: quarantined. Event time:
//! `metadata.timestamp` (ISO 8601); Plaid delivers most events in one burst at the end of the
//! flow, in no guaranteed order, and says to order them by it. `onSuccess` and `onExit` carry no
//! time: they end the flow, so they are dated when linkflow receives them, after every event
//! of the flow (as an event without a time they would be placed by arrival, and one that came
//! first in the burst would put the flow's later steps after the session's end).

use linkflow_core::{ErrorInfo, Event, EventKind, Institution, Provider, SessionId};

use crate::json::{Notes, Obj};
use crate::{dedupe_key, event_time, session_for, Payload, Routed, Target};

/// What a Plaid Link event name means for the session, in the order of the table in
/// `docs/providers.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// A phase event or a known telemetry kind.
    Kind(EventKind),
    /// A selection when the event names an institution, else telemetry (`SELECT_BRAND`: large
    /// banks pick a brand first, and some brands name the institution).
    SelectionIfNamed,
    /// Documented, but not a step of the session: kept as a provider event.
    Telemetry,
}

/// Every event name Plaid documents and what it means. Names not listed are kept as
/// unrecognized (Plaid adds names "without notice").
pub const EVENT_NAMES: &[(&str, Meaning)] = &[
    ("OPEN", Meaning::Kind(EventKind::Opened)),
    (
        "SELECT_INSTITUTION",
        Meaning::Kind(EventKind::InstitutionSelected),
    ),
    (
        "MATCHED_SELECT_INSTITUTION",
        Meaning::Kind(EventKind::InstitutionSelected),
    ),
    (
        "SELECT_DEGRADED_INSTITUTION",
        Meaning::Kind(EventKind::InstitutionSelected),
    ),
    ("SELECT_BRAND", Meaning::SelectionIfNamed),
    (
        "SEARCH_INSTITUTION",
        Meaning::Kind(EventKind::InstitutionSearched),
    ),
    (
        "SUBMIT_CREDENTIALS",
        Meaning::Kind(EventKind::CredentialsSubmitted),
    ),
    ("OPEN_OAUTH", Meaning::Kind(EventKind::OauthOpened)),
    ("SUBMIT_MFA", Meaning::Kind(EventKind::MfaSubmitted)),
    ("HANDOFF", Meaning::Kind(EventKind::Succeeded)),
    ("EXIT", Meaning::Kind(EventKind::Exited)),
    ("ERROR", Meaning::Kind(EventKind::Error)),
    ("FAIL_OAUTH", Meaning::Kind(EventKind::Error)),
    ("TRANSITION_VIEW", Meaning::Kind(EventKind::ScreenChanged)),
    ("CLOSE_OAUTH", Meaning::Telemetry),
    ("SELECT_DOWN_INSTITUTION", Meaning::Telemetry),
    ("SELECT_FILTERED_INSTITUTION", Meaning::Telemetry),
    ("SELECT_AUTH_TYPE", Meaning::Telemetry),
    ("MATCHED_SELECT_VERIFY_METHOD", Meaning::Telemetry),
    ("MATCHED_CONSENT", Meaning::Telemetry),
    ("OPEN_MY_PLAID", Meaning::Telemetry),
    ("SUBMIT_PHONE", Meaning::Telemetry),
    ("VERIFY_PHONE", Meaning::Telemetry),
    ("SKIP_SUBMIT_PHONE", Meaning::Telemetry),
    ("SUBMIT_ACCOUNT_NUMBER", Meaning::Telemetry),
    ("SUBMIT_ROUTING_NUMBER", Meaning::Telemetry),
    ("SUBMIT_DOCUMENTS", Meaning::Telemetry),
    ("SUBMIT_DOCUMENTS_SUCCESS", Meaning::Telemetry),
    ("SUBMIT_DOCUMENTS_ERROR", Meaning::Telemetry),
    ("VIEW_DATA_TYPES", Meaning::Telemetry),
    ("CONNECT_NEW_INSTITUTION", Meaning::Telemetry),
    ("BANK_INCOME_INSIGHTS_COMPLETED", Meaning::Telemetry),
    ("LAYER_READY", Meaning::Telemetry),
    ("LAYER_NOT_AVAILABLE", Meaning::Telemetry),
];

/// Identity Verification's events (`IDENTITY_VERIFICATION_START_STEP`, `..._PASS_SESSION`,
/// `..._CLOSE_UI`, ...): another product's steps inside Link, kept as provider events.
const IDENTITY_VERIFICATION: &str = "IDENTITY_VERIFICATION_";

/// A name in Plaid's UPPER_SNAKE_CASE, whatever case it came in (`selectInstitution`,
/// `select_institution`, `SELECT_INSTITUTION`).
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_uppercase() && previous_lower {
            out.push('_');
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        out.extend(c.to_uppercase());
    }
    out
}

/// What a (normalized) event name means; `None` for a name Plaid does not document.
pub fn meaning_of(name: &str) -> Option<Meaning> {
    EVENT_NAMES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, meaning)| meaning.clone())
        .or_else(|| {
            name.starts_with(IDENTITY_VERIFICATION)
                .then_some(Meaning::Telemetry)
        })
}

/// Reads a field in snake_case or camelCase.
fn text(
    object: &Obj<'_>,
    snake: &'static str,
    camel: &'static str,
    notes: &mut Notes,
) -> Option<String> {
    object
        .text_of(&[snake, camel], notes)
        .filter(|text| !text.is_empty())
}

/// The canonical event of one Plaid Link event: its normalized `name` and its `metadata`
/// (the client's `metadata` or the webhook's `event_metadata`).
pub(crate) fn link_event(
    name: &str,
    metadata: Option<&Obj<'_>>,
    time: Option<chrono::DateTime<chrono::Utc>>,
    received_at: chrono::DateTime<chrono::Utc>,
    notes: &mut Notes,
) -> Event {
    let institution = metadata.and_then(|meta| institution_in_metadata(meta, notes));
    let kind = match meaning_of(name) {
        Some(Meaning::Kind(kind)) => kind,
        Some(Meaning::SelectionIfNamed) if institution.is_some() => EventKind::InstitutionSelected,
        Some(Meaning::SelectionIfNamed | Meaning::Telemetry) => EventKind::ProviderEvent,
        None => EventKind::Unrecognized {
            raw_name: name.to_owned(),
        },
    };
    let mut event = Event::new(kind.clone()).at_or_received(time, received_at);
    event.attributes.institution = institution;
    let Some(meta) = metadata else {
        return event;
    };
    // Every event names the view it happened on: the session's current screen follows it, so
    // the funnel can group by the view users stopped on.
    event.attributes.screen_name = text(meta, "view_name", "viewName", notes);
    match kind {
        EventKind::InstitutionSearched => {
            event.attributes.search_term = text(
                meta,
                "institution_search_query",
                "institutionSearchQuery",
                notes,
            );
        }
        EventKind::Exited => {
            event.attributes.exit_status = text(meta, "exit_status", "exitStatus", notes);
            event.attributes.error = error_in_metadata(meta, notes);
        }
        EventKind::Error => {
            let mut error = error_in_metadata(meta, notes).unwrap_or_default();
            // FAIL_OAUTH carries no error code of its own: its name is the code.
            error.code = error.code.or_else(|| Some(name.to_owned()));
            event.attributes.error = Some(error);
        }
        _ => {}
    }
    event
}

fn institution_in_metadata(meta: &Obj<'_>, notes: &mut Notes) -> Option<Institution> {
    let id = meta.id_of(&["institution_id", "institutionId"], notes)?;
    Some(Institution {
        id,
        name: text(meta, "institution_name", "institutionName", notes),
    })
}

/// An `onEvent` metadata's error fields; `None` when it names no error.
fn error_in_metadata(meta: &Obj<'_>, notes: &mut Notes) -> Option<ErrorInfo> {
    let error = ErrorInfo {
        id: text(meta, "error_type", "errorType", notes),
        code: text(meta, "error_code", "errorCode", notes),
        message: text(meta, "error_message", "errorMessage", notes),
        request_id: text(meta, "request_id", "requestId", notes),
    };
    (error.code.is_some() || error.message.is_some()).then_some(error)
}

/// The dedupe key of a Plaid Link event with a time, the same whether it came by `onEvent` or
/// in an `EVENTS` webhook: the session, the normalized name, the time to the microsecond and
/// the view, so that the two routes store one event once. Without a time, `None`: the caller
/// keys the delivery itself.
pub(crate) fn event_key(
    session: &SessionId,
    name: &str,
    time: Option<chrono::DateTime<chrono::Utc>>,
    event: &Event,
) -> Option<linkflow_core::DedupeKey> {
    let micros = time?.timestamp_micros().to_be_bytes();
    Some(linkflow_core::DedupeKey::derive(&[
        b"plaid-link-event",
        session.as_str().as_bytes(),
        name.as_bytes(),
        &micros,
        event
            .attributes
            .screen_name
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    ]))
}

/// Which callback a payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callback {
    Event,
    Success,
    Exit,
}

fn callback_of(root: &Obj<'_>, meta: Option<&Obj<'_>>, notes: &mut Notes) -> Option<Callback> {
    if let Some(named) = root.text("callback", notes) {
        match named.as_str() {
            "onEvent" => return Some(Callback::Event),
            "onSuccess" => return Some(Callback::Success),
            "onExit" => return Some(Callback::Exit),
            other => notes.warn(
                "$.callback",
                format!(
                    "`{other}` is not onEvent, onSuccess or onExit; the payload's shape decides"
                ),
            ),
        }
    }
    let has =
        |object: &Obj<'_>, keys: &[&str]| keys.iter().any(|key| object.map.contains_key(*key));
    if has(root, &["eventName", "event_name"]) {
        Some(Callback::Event)
    } else if has(root, &["public_token", "publicToken"])
        || meta.is_some_and(|meta| has(meta, &["accounts"]))
    {
        Some(Callback::Success)
    } else if has(root, &["error"]) || meta.is_some_and(|meta| has(meta, &["status"])) {
        Some(Callback::Exit)
    } else {
        None
    }
}

/// Decodes one forwarded Plaid Link callback.
pub(crate) fn decode(payload: Payload<'_>, notes: &mut Notes) -> Routed {
    let Some(root) = Obj::root(payload.value) else {
        return payload.nowhere(
            "the payload is not a JSON object, so it names no session",
            None,
        );
    };
    let meta = root.obj("metadata", notes);
    let callback = callback_of(&root, meta.as_ref(), notes);
    let raw_name = match callback {
        Some(Callback::Event) => root
            .text_of(&["eventName", "event_name"], notes)
            .unwrap_or_else(|| {
                notes.warn("$.eventName", "not text: the event is kept as unrecognized");
                String::new()
            }),
        Some(Callback::Success) => "onSuccess".to_owned(),
        Some(Callback::Exit) => "onExit".to_owned(),
        None => {
            notes.warn(
                "$",
                "neither an onEvent, an onSuccess nor an onExit payload: kept as unrecognized",
            );
            String::new()
        }
    };
    let keys = ["link_session_id", "linkSessionId"];
    let found = meta
        .as_ref()
        .and_then(|meta| meta.found_text(&keys, notes))
        .or_else(|| root.found_text(&keys, notes));
    let session = match session_for(found, payload.context, notes) {
        Ok(session) => session,
        Err(reason) => return payload.nowhere(reason, Some(&raw_name)),
    };
    let received_at = payload.context.received_at;
    let (event, key) = match callback {
        Some(Callback::Event) => {
            let time = meta.as_ref().and_then(|meta| {
                let (key, value) = meta.first_of(&["timestamp"])?;
                event_time(&meta.path_of(key), value, notes)
            });
            let name = normalize_name(&raw_name);
            let event = link_event(&name, meta.as_ref(), time, received_at, notes);
            let key = event_key(&session, &name, time, &event);
            (event, key)
        }
        Some(Callback::Success) => (success(&root, meta.as_ref(), received_at, notes), None),
        Some(Callback::Exit) => (exit(&root, meta.as_ref(), received_at, notes), None),
        None => {
            let kind = EventKind::Unrecognized {
                raw_name: String::new(),
            };
            (Event::new(kind).at_or_received(None, received_at), None)
        }
    };
    let mut event = event;
    event.attributes.external_user_id = payload.context.external_user_id.clone();
    session_event(payload, session, event, raw_name, key)
}

/// A Plaid event for `session`, keyed by `key` or else by the delivery itself (provider,
/// session, name, canonical payload).
pub(crate) fn session_event(
    payload: Payload<'_>,
    session: SessionId,
    event: Event,
    raw_name: String,
    key: Option<linkflow_core::DedupeKey>,
) -> Routed {
    let dedupe_key = key.unwrap_or_else(|| {
        dedupe_key(
            Provider::Plaid,
            session.as_str(),
            &raw_name,
            None,
            payload.value,
        )
    });
    Routed::Event {
        dedupe_key,
        target: Target::Session { session, event },
        raw_name,
        event_id: None,
    }
}

/// `metadata.institution`: `{institution_id, name}` (web) or `{id, name}` (React Native).
fn callback_institution(meta: &Obj<'_>, notes: &mut Notes) -> Option<Institution> {
    let institution = meta.obj("institution", notes)?;
    Some(Institution {
        id: institution.id_of(&["institution_id", "id"], notes)?,
        name: text(&institution, "name", "name", notes),
    })
}

fn success(
    root: &Obj<'_>,
    meta: Option<&Obj<'_>>,
    received_at: chrono::DateTime<chrono::Utc>,
    notes: &mut Notes,
) -> Event {
    let mut event = Event::new(EventKind::Succeeded).at(received_at);
    if let Some(meta) = meta {
        event.attributes.institution = callback_institution(meta, notes);
    }
    event.attributes.item_id = root
        .id_of(&["item_id", "itemId"], notes)
        .or_else(|| meta.and_then(|meta| meta.id_of(&["item_id", "itemId"], notes)));
    event
}

fn exit(
    root: &Obj<'_>,
    meta: Option<&Obj<'_>>,
    received_at: chrono::DateTime<chrono::Utc>,
    notes: &mut Notes,
) -> Event {
    let mut event = Event::new(EventKind::Exited).at(received_at);
    if let Some(meta) = meta {
        event.attributes.institution = callback_institution(meta, notes);
        event.attributes.exit_status = text(meta, "status", "status", notes);
    }
    if let Some(error) = root.obj("error", notes) {
        let info = ErrorInfo {
            id: text(&error, "error_type", "errorType", notes),
            code: text(&error, "error_code", "errorCode", notes),
            message: text(&error, "display_message", "displayMessage", notes)
                .or_else(|| text(&error, "error_message", "errorMessage", notes)),
            request_id: meta.and_then(|meta| text(meta, "request_id", "requestId", notes)),
        };
        if info != ErrorInfo::default() {
            event.attributes.error = Some(info);
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_from_every_case() {
        for (given, expected) in [
            ("SELECT_INSTITUTION", "SELECT_INSTITUTION"),
            ("selectInstitution", "SELECT_INSTITUTION"),
            ("select_institution", "SELECT_INSTITUTION"),
            ("open", "OPEN"),
            ("handoff", "HANDOFF"),
            ("transitionView", "TRANSITION_VIEW"),
            (
                "identityVerificationPassStep",
                "IDENTITY_VERIFICATION_PASS_STEP",
            ),
        ] {
            assert_eq!(normalize_name(given), expected, "{given}");
        }
    }

    #[test]
    fn every_documented_name_has_one_meaning_and_the_rest_are_unrecognized() {
        for (index, (name, _)) in EVENT_NAMES.iter().enumerate() {
            assert!(
                EVENT_NAMES[index + 1..]
                    .iter()
                    .all(|(other, _)| other != name),
                "{name} is listed twice"
            );
            assert_eq!(normalize_name(name), *name, "{name} is not in Plaid's case");
        }
        assert_eq!(
            meaning_of("IDENTITY_VERIFICATION_FAIL_SESSION"),
            Some(Meaning::Telemetry)
        );
        assert_eq!(meaning_of("SOMETHING_NEW"), None);
    }
}

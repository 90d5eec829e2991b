//! Plaid's webhooks (feed `plaid-webhook`): every body has `webhook_type` and `webhook_code`
//! (shapes from Plaid's API reference as its OpenAPI-generated clients carry them, e.g. the
//! `plaid` crate's `LinkEventsWebhook`, `LinkSessionFinishedWebhook`, `ItemErrorWebhook`,
//! `PendingExpirationWebhook`; sources in `docs/providers.md`).
//!
//! - `LINK` `EVENTS` (`{link_session_id, link_token, events: [{event_name, timestamp,
//!   event_id, event_metadata}]}`) is split by [`expand`] into one payload per event before
//!   decoding, each mapped as the client's `onEvent` is ([`crate::plaid::link_event`]) and keyed
//!   the same way, so an event that came both ways, or in a webhook Plaid re-sent with every
//!   event so far, is stored once. An event without a time is keyed by its `event_id`.
//! - `LINK` `SESSION_FINISHED` (`status` `SUCCESS` or `EXITED`) is the session's success or
//!   exit; `ITEM_ADD_RESULT` and other `LINK` codes are kept on the session as provider
//!   events.
//! - `ITEM` webhooks go to the item's account ([`linkflow_core::AccountKey::plaid_item`]):
//!   `ERROR` with `ITEM_LOGIN_REQUIRED` requires a login (another error code is kept as
//!   unrecognized with the code as its reason), `LOGIN_REPAIRED` repairs it,
//!   `PENDING_EXPIRATION` (`consent_expiration_time`) and `PENDING_DISCONNECT` (7 days ahead,
//!   as Plaid sends it, with its `reason`) warn of the end, `USER_PERMISSION_REVOKED` and
//!   `USER_ACCOUNT_REVOKED` revoke it, `NEW_ACCOUNTS_AVAILABLE` is a notice recorded on the
//!   account. Other webhook types that name an item (`TRANSACTIONS`, `AUTH`, ...) are kept on
//!   its account as unrecognized.
//!
//! A webhook that names neither a session nor an item is quarantined. Check the
//! `Plaid-Verification` header first: [`crate::plaid_jwt`].

use chrono::{DateTime, Duration, Utc};
use linkflow_core::{
    AccountEvent, AccountEventKind, AccountKey, DedupeKey, Event, EventKind, NoticeKind, Provider,
};
use serde_json::{Map, Value};

use crate::json::{Notes, Obj};
use crate::plaid::{event_key, link_event, normalize_name, session_event};
use crate::{dedupe_key, event_time, session_for, Payload, Routed, Target};

/// How long before the disconnection Plaid sends `PENDING_DISCONNECT`: its documented notice.
pub const PENDING_DISCONNECT_NOTICE: Duration = Duration::days(7);

/// The one event of an `EVENTS` webhook that [`expand`] split, under this key.
pub const EXPANDED_EVENT: &str = "event";

/// The most events an `EVENTS` webhook is split into (a delivery's bound).
pub const MAX_SPLIT_EVENTS: usize = crate::MAX_EVENTS_PER_DELIVERY;

/// The largest envelope (the webhook without its events) copied into each split event: Plaid's
/// are a few hundred bytes; a larger one would be copied once per event.
pub const MAX_SPLIT_ENVELOPE_BYTES: usize = 16 * 1024;

/// Splits an `EVENTS` webhook into one payload text per event: the webhook's other fields,
/// the event under [`EXPANDED_EVENT`], and `event_index` / `event_count` (where it was in the
/// webhook). Any other text is returned as it is, one payload (so that a body that is not
/// JSON is refused by the decoder, with its reason), and so is an `EVENTS` webhook past
/// [`MAX_SPLIT_EVENTS`] or [`MAX_SPLIT_ENVELOPE_BYTES`] (kept whole, with a warning, or
/// refused by the record size limit: never copied without bound).
pub fn expand(text: String) -> Vec<String> {
    let Ok(Value::Object(mut root)) = serde_json::from_str::<Value>(&text) else {
        return vec![text];
    };
    let is_events = root.get("webhook_type").and_then(Value::as_str) == Some("LINK")
        && root.get("webhook_code").and_then(Value::as_str) == Some("EVENTS");
    let events = match root.get("events") {
        Some(Value::Array(events)) if is_events && !events.is_empty() => events.clone(),
        _ => return vec![text],
    };
    root.remove("events");
    let envelope = Value::Object(root.clone()).to_string().len();
    if events.len() > MAX_SPLIT_EVENTS || envelope > MAX_SPLIT_ENVELOPE_BYTES {
        return vec![text];
    }
    let count = events.len();
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            let mut one: Map<String, Value> = root.clone();
            one.insert(EXPANDED_EVENT.into(), event);
            one.insert("event_index".into(), index.into());
            one.insert("event_count".into(), count.into());
            Value::Object(one).to_string()
        })
        .collect()
}

/// Decodes one Plaid webhook (an `EVENTS` webhook as [`expand`] split it).
pub(crate) fn decode(payload: Payload<'_>, notes: &mut Notes) -> Routed {
    let Some(root) = Obj::root(payload.value) else {
        return payload.nowhere(
            "the payload is not a JSON object, so it names no session or item",
            None,
        );
    };
    let kind = root.text("webhook_type", notes).unwrap_or_default();
    let code = root.text("webhook_code", notes).unwrap_or_default();
    let raw_name = format!("{kind}:{code}");
    if kind == "LINK" {
        return link_webhook(&root, &code, raw_name, payload, notes);
    }
    let Some(item) = root.id_of(&["item_id"], notes) else {
        return payload.nowhere(
            format!("`{raw_name}` names no item_id and no link_session_id"),
            Some(&raw_name),
        );
    };
    let event = if kind == "ITEM" {
        item_event(&root, &code, payload.context.received_at, notes)
    } else {
        AccountEvent::new(AccountEventKind::Unrecognized {
            raw_name: raw_name.clone(),
        })
        .at(payload.context.received_at)
    };
    Routed::Event {
        dedupe_key: dedupe_key(Provider::Plaid, &item, &raw_name, None, payload.value),
        target: Target::Account {
            account: AccountKey::plaid_item(&item),
            event,
        },
        raw_name,
        event_id: None,
    }
}

fn item_event(
    root: &Obj<'_>,
    code: &str,
    received_at: DateTime<Utc>,
    notes: &mut Notes,
) -> AccountEvent {
    let error_code = root
        .obj("error", notes)
        .and_then(|error| error.text("error_code", notes));
    let (kind, reason) = match code {
        "ERROR" if error_code.as_deref() == Some("ITEM_LOGIN_REQUIRED") => {
            (AccountEventKind::LoginRequired, error_code)
        }
        "ERROR" => (
            AccountEventKind::Unrecognized {
                raw_name: "ERROR".into(),
            },
            error_code,
        ),
        "LOGIN_REPAIRED" => (AccountEventKind::LoginRepaired, None),
        "PENDING_EXPIRATION" | "PENDING_DISCONNECT" => {
            (AccountEventKind::ExpiryPending, root.text("reason", notes))
        }
        "USER_PERMISSION_REVOKED" | "USER_ACCOUNT_REVOKED" => {
            let account = root.text("account_id", notes);
            (
                AccountEventKind::Revoked,
                Some(match account {
                    Some(account) => format!("{code} (account {account})"),
                    None => code.to_owned(),
                }),
            )
        }
        "NEW_ACCOUNTS_AVAILABLE" => (
            AccountEventKind::Notice(NoticeKind::NewAccountsAvailable),
            None,
        ),
        other => (
            AccountEventKind::Unrecognized {
                raw_name: other.to_owned(),
            },
            error_code,
        ),
    };
    // Item webhooks carry no time; Plaid sends each when its change happens: dated at receipt.
    let mut event = AccountEvent::new(kind).at(received_at);
    event.reason = reason;
    event.expires_at = match code {
        "PENDING_EXPIRATION" => root
            .value("consent_expiration_time")
            .and_then(|value| event_time("$.consent_expiration_time", value, notes)),
        "PENDING_DISCONNECT" => Some(received_at + PENDING_DISCONNECT_NOTICE),
        _ => None,
    };
    if code == "PENDING_EXPIRATION" && event.expires_at.is_none() {
        notes.warn(
            "$.consent_expiration_time",
            "missing: the expiry date is unknown",
        );
    }
    event
}

fn link_webhook(
    root: &Obj<'_>,
    code: &str,
    raw_name: String,
    payload: Payload<'_>,
    notes: &mut Notes,
) -> Routed {
    let found = root.found_text(&["link_session_id"], notes);
    let session = match session_for(found, payload.context, notes) {
        Ok(session) => session,
        Err(reason) => return payload.nowhere(reason, Some(&raw_name)),
    };
    let received_at = payload.context.received_at;
    let (event, key, raw_name) = match code {
        "EVENTS" => match root.obj(EXPANDED_EVENT, notes) {
            Some(one) => {
                let name = one.text("event_name", notes).unwrap_or_default();
                let normalized = normalize_name(&name);
                let time = one
                    .value("timestamp")
                    .and_then(|value| event_time(&one.path_of("timestamp"), value, notes));
                let meta = one.obj("event_metadata", notes);
                let event = link_event(&normalized, meta.as_ref(), time, received_at, notes);
                let key = event_key(&session, &normalized, time, &event).or_else(|| {
                    let id = one.text("event_id", notes)?;
                    Some(DedupeKey::derive(&[
                        b"plaid-link-event-id",
                        session.as_str().as_bytes(),
                        id.as_bytes(),
                    ]))
                });
                (event, key, name)
            }
            None => {
                notes.warn(
                    "$.events",
                    "not split into events (none, or past the split's bounds): the webhook is kept whole as a provider event",
                );
                (
                    Event::new(EventKind::ProviderEvent).at_or_received(None, received_at),
                    None,
                    raw_name,
                )
            }
        },
        "SESSION_FINISHED" => {
            let status = root.text("status", notes);
            let kind = match status.as_deref() {
                Some("SUCCESS") => EventKind::Succeeded,
                Some("EXITED") => EventKind::Exited,
                other => {
                    notes.warn(
                        "$.status",
                        format!(
                            "{other:?} is neither SUCCESS nor EXITED: kept as a provider event"
                        ),
                    );
                    EventKind::ProviderEvent
                }
            };
            // It ends the session and carries no time: dated at receipt, after the session's
            // events, whichever webhook comes first.
            let mut event = Event::new(kind.clone()).at(received_at);
            if kind == EventKind::Exited {
                event.attributes.exit_status = status;
            }
            (event, None, raw_name)
        }
        _ => (
            Event::new(EventKind::ProviderEvent).at_or_received(None, received_at),
            None,
            raw_name,
        ),
    };
    session_event(payload, session, event, raw_name, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_webhook_splits_into_one_payload_per_event_and_anything_else_stays_whole() {
        let body = r#"{"webhook_type":"LINK","webhook_code":"EVENTS","link_session_id":"s","link_token":"t","events":[{"event_name":"OPEN","event_id":"a"},{"event_name":"EXIT","event_id":"b"}]}"#;
        let parts = expand(body.to_owned());
        assert_eq!(parts.len(), 2);
        let second: Value = serde_json::from_str(&parts[1]).unwrap();
        assert_eq!(second["event"]["event_id"], "b");
        assert_eq!(second["event_index"], 1);
        assert_eq!(second["event_count"], 2);
        assert_eq!(second["link_session_id"], "s");
        assert!(second.get("events").is_none());
        // Past the bounds: kept whole, not copied once per event.
        let big_envelope = format!(
            r#"{{"webhook_type":"LINK","webhook_code":"EVENTS","link_session_id":"s","padding":"{}","events":[{{}},{{}}]}}"#,
            "x".repeat(MAX_SPLIT_ENVELOPE_BYTES)
        );
        assert_eq!(expand(big_envelope.clone()), vec![big_envelope]);
        let many = serde_json::json!({"webhook_type": "LINK", "webhook_code": "EVENTS", "events": vec![serde_json::json!({}); MAX_SPLIT_EVENTS + 1]}).to_string();
        assert_eq!(expand(many.clone()).len(), 1);
        for whole in [
            "not json",
            r#"{"webhook_type":"LINK","webhook_code":"EVENTS","events":[]}"#,
            r#"{"webhook_type":"ITEM","webhook_code":"ERROR","events":[1]}"#,
        ] {
            assert_eq!(expand(whole.to_owned()), vec![whole.to_owned()]);
        }
    }
}

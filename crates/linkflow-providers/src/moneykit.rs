//! MoneyKit Connect: the `onEvent` payloads of every MoneyKit SDK, forwarded by the
//! integrator's frontend. Shapes (sources in `docs/providers.md`):
//!
//! - the vendor doc and the web SDK (`@moneykit/connect`): `{name, properties, meta}`, `meta`
//!   = `{link_type, timestamp, link_session_id, institution_id?, institution_name?}`, the web
//!   SDK's link types in lowercase (`"link"`, `"relink"`), optional fields null;
//! - the React Native types and older iOS SDKs: `{name, sessionId, properties}`, no `meta`;
//! - the React Native iOS bridge: `{name, meta, properties}`;
//! - the React Native Android bridge: `{name, properties}`: the session comes from the caller.
//!
//! Session key: `meta.link_session_id` (or `meta.linkSessionId`), else `sessionId` /
//! `session_id`, else the caller's; none: quarantined. Event time: `meta.timestamp`
//! (ISO-8601). Institution: `select_institution`'s properties, or `meta` once one is selected.

use linkflow_core::{ErrorInfo, Event, EventKind, Institution, LinkType, Provider};

use crate::json::{Notes, Obj};
use crate::{dedupe_key, event_time, session_for, Payload, Routed, Target};

/// Every documented event name and its canonical kind.
pub const EVENT_NAMES: [(&str, EventKind); 21] = [
    ("open", EventKind::Opened),
    ("exit", EventKind::Exited),
    ("success", EventKind::Succeeded),
    ("error", EventKind::Error),
    ("change_screen", EventKind::ScreenChanged),
    ("select_institution", EventKind::InstitutionSelected),
    ("search_institution", EventKind::InstitutionSearched),
    (
        "acknowledge_institution_alert",
        EventKind::InstitutionAlertAcknowledged,
    ),
    (
        "dismiss_institution_alert",
        EventKind::InstitutionAlertDismissed,
    ),
    (
        "open_institution_website",
        EventKind::InstitutionWebsiteOpened,
    ),
    ("submit_credentials", EventKind::CredentialsSubmitted),
    ("select_help", EventKind::HelpSelected),
    ("select_reset_password", EventKind::ResetPasswordSelected),
    ("open_oauth", EventKind::OauthOpened),
    ("submit_otp_device", EventKind::OtpDeviceSubmitted),
    ("submit_otp", EventKind::OtpSubmitted),
    ("submit_mfa", EventKind::MfaSubmitted),
    ("submit_permissions", EventKind::PermissionsGranted),
    ("submit_accounts", EventKind::AccountsSelected),
    ("select_report_issue", EventKind::ReportIssueSelected),
    ("submit_report_issue", EventKind::ReportIssueSubmitted),
];

fn kind_of(name: &str) -> EventKind {
    EVENT_NAMES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, kind)| kind.clone())
        .unwrap_or_else(|| EventKind::Unrecognized {
            raw_name: name.to_owned(),
        })
}

/// A link type in any SDK's spelling (`Link`, `link`, `Failover Link`, `failover_link`);
/// `None` for one this build does not know.
fn link_type(text: &str) -> Option<LinkType> {
    let normalized: String = text
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    match normalized.as_str() {
        "link" => Some(LinkType::Link),
        "relink" => Some(LinkType::Relink),
        "failoverlink" => Some(LinkType::FailoverLink),
        _ => None,
    }
}

/// Decodes one MoneyKit event.
pub(crate) fn decode(payload: Payload<'_>, notes: &mut Notes) -> Routed {
    let Some(root) = Obj::root(payload.value) else {
        return payload.nowhere(
            "the payload is not a JSON object, so it names no session",
            None,
        );
    };
    let name = root.text("name", notes).unwrap_or_else(|| {
        notes.warn("$.name", "missing: the event is kept as unrecognized");
        String::new()
    });
    let meta = root.obj("meta", notes);
    let found = meta
        .as_ref()
        .and_then(|meta| meta.found_text(&["link_session_id", "linkSessionId"], notes))
        .or_else(|| root.found_text(&["sessionId", "session_id"], notes));
    let session = match session_for(found, payload.context, notes) {
        Ok(session) => session,
        Err(reason) => return payload.nowhere(reason, Some(&name)),
    };
    let occurred_at = meta.as_ref().and_then(|meta| {
        let (key, value) = meta.first_of(&["timestamp"])?;
        event_time(&meta.path_of(key), value, notes)
    });

    let kind = kind_of(&name);
    let mut event =
        Event::new(kind.clone()).at_or_received(occurred_at, payload.context.received_at);
    if let Some(meta) = &meta {
        read_meta(meta, &mut event, notes);
    }
    event.attributes.external_user_id = payload.context.external_user_id.clone();
    if let Some(properties) = root.obj("properties", notes) {
        read_properties(&kind, &properties, &mut event, notes);
    }
    Routed::Event {
        dedupe_key: dedupe_key(
            Provider::Moneykit,
            session.as_str(),
            &name,
            occurred_at,
            payload.value,
        ),
        target: Target::Session { session, event },
        raw_name: name,
        event_id: None,
    }
}

fn read_meta(meta: &Obj<'_>, event: &mut Event, notes: &mut Notes) {
    if let Some(text) = meta.text_of(&["link_type", "linkType"], notes) {
        match link_type(&text) {
            Some(link_type) => event.attributes.link_type = Some(link_type),
            None => notes.warn(
                meta.path_of("link_type"),
                format!("`{text}` is not a link type this build knows (link, relink, failover link); kept in the raw payload"),
            ),
        }
    }
    if let Some(id) = meta.id_of(&["institution_id", "institutionId"], notes) {
        event.attributes.institution = Some(Institution {
            id,
            name: meta.text_of(&["institution_name", "institutionName"], notes),
        });
    }
}

fn read_properties(kind: &EventKind, properties: &Obj<'_>, event: &mut Event, notes: &mut Notes) {
    match kind {
        // The web SDK passes the error to the exit callback too; forwarded exits may carry it.
        EventKind::Error | EventKind::Exited => {
            let error = read_error(properties, notes);
            if *kind == EventKind::Error || error != ErrorInfo::default() {
                event.attributes.error = Some(error);
            }
            if *kind == EventKind::Exited {
                event.attributes.exit_status =
                    properties.text_of(&["status", "exit_status"], notes);
            }
        }
        EventKind::ScreenChanged => {
            // The doc's list says `current_screen_name`, its prose example `current_screen`.
            event.attributes.screen_name =
                properties.text_of(&["current_screen_name", "current_screen"], notes);
        }
        EventKind::InstitutionSelected => {
            if let Some(id) = properties.id_of(&["institution_id", "institutionId"], notes) {
                event.attributes.institution = Some(Institution {
                    id,
                    name: properties.text_of(&["institution_name", "institutionName"], notes),
                });
            }
        }
        EventKind::InstitutionSearched => {
            event.attributes.search_term =
                properties.text_of(&["search_term", "searchTerm"], notes);
        }
        _ => {}
    }
}

/// The error fields in the web SDK's snake_case or the React Native types' camelCase; empty
/// strings count as absent.
fn read_error(properties: &Obj<'_>, notes: &mut Notes) -> ErrorInfo {
    let mut text = |keys: &[&'static str]| {
        properties
            .text_of(keys, notes)
            .filter(|text| !text.is_empty())
    };
    ErrorInfo {
        id: text(&["error_id", "identifier", "errorId"]),
        code: text(&["error_code", "errorCode"]),
        message: text(&["displayed_message", "displayedMessage"]),
        request_id: text(&["request_id", "requestId"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_types_are_read_in_every_sdk_spelling() {
        for (text, expected) in [
            ("Link", LinkType::Link),
            ("link", LinkType::Link),
            ("Relink", LinkType::Relink),
            ("relink", LinkType::Relink),
            ("Failover Link", LinkType::FailoverLink),
            ("failover_link", LinkType::FailoverLink),
        ] {
            assert_eq!(link_type(text), Some(expected), "{text}");
        }
        assert_eq!(link_type("update"), None);
    }
}

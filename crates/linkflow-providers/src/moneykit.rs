//! MoneyKit Connect: `{name, properties, meta}` objects from the SDK's `onEvent` callback,
//! forwarded by the integrator's frontend.
//!
//! Session key `meta.link_session_id`; event time `meta.timestamp` (ISO-8601); link type
//! `meta.link_type` (`Link`, `Relink`, `Failover Link`); institution from
//! `select_institution`'s properties or from `meta` once one is selected.

use linkflow_core::{ErrorInfo, Event, EventKind, LinkType, Provider};
use serde_json::Value;

use crate::json::{At, Obj};
use crate::{dedupe_key, iso_time, session_id, DecodeContext, DecodeError, Decoded, Target};

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

fn link_type(path: &str, text: &str) -> Result<LinkType, DecodeError> {
    match text {
        "Link" => Ok(LinkType::Link),
        "Relink" => Ok(LinkType::Relink),
        "Failover Link" => Ok(LinkType::FailoverLink),
        other => Err(DecodeError::invalid(
            path,
            format!("`{other}` is not a link type (Link, Relink, Failover Link)"),
        )),
    }
}

/// Decodes one MoneyKit event.
pub fn decode(value: &Value, text: &str, context: &DecodeContext) -> Result<Decoded, DecodeError> {
    let root = Obj::new(At::root(value))?;
    let name = root.str("name")?;
    let meta = root.obj("meta")?;
    let properties = root.opt_obj("properties")?;
    let session = session_id(
        &meta.path_of("link_session_id"),
        meta.str("link_session_id")?,
    )?;
    let occurred_at = meta
        .opt_str("timestamp")?
        .map(|time| iso_time(&meta.path_of("timestamp"), time))
        .transpose()?;

    let kind = kind_of(name);
    let mut event = Event::new(kind.clone());
    event.occurred_at = occurred_at;
    if let Some(text) = meta.opt_str("link_type")? {
        event = event.with_link_type(link_type(&meta.path_of("link_type"), text)?);
    }
    if let Some(id) = meta.opt_id("institution_id")? {
        event = event.with_institution(id, meta.opt_str("institution_name")?);
    }
    if let Some(user) = &context.external_user_id {
        event.attributes.external_user_id = Some(user.clone());
    }
    if let Some(properties) = &properties {
        read_properties(&kind, properties, &mut event)?;
    }
    Ok(Decoded {
        provider: Provider::Moneykit,
        raw_name: name.to_owned(),
        event_id: None,
        dedupe_key: dedupe_key(
            Provider::Moneykit,
            session.as_str(),
            name,
            occurred_at,
            value,
        ),
        raw: text.to_owned(),
        target: Target::Session { session, event },
    })
}

fn read_properties(
    kind: &EventKind,
    properties: &Obj<'_>,
    event: &mut Event,
) -> Result<(), DecodeError> {
    match kind {
        EventKind::Error => {
            event.attributes.error = Some(ErrorInfo {
                id: properties
                    .opt_str("error_id")?
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned),
                code: properties.opt_str("error_code")?.map(str::to_owned),
                message: properties
                    .opt_str("displayed_message")?
                    .filter(|message| !message.is_empty())
                    .map(str::to_owned),
                request_id: properties
                    .opt_str("request_id")?
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned),
            });
        }
        EventKind::ScreenChanged => {
            // The doc's list says `current_screen_name`, its prose example `current_screen`.
            let screen = match properties.opt_str("current_screen_name")? {
                Some(screen) => Some(screen),
                None => properties.opt_str("current_screen")?,
            };
            event.attributes.screen_name = screen.map(str::to_owned);
        }
        EventKind::InstitutionSelected => {
            if let Some(id) = properties.opt_id("institution_id")? {
                event.attributes.institution = Some(linkflow_core::Institution {
                    id,
                    name: properties.opt_str("institution_name")?.map(str::to_owned),
                });
            }
        }
        EventKind::InstitutionSearched => {
            event.attributes.search_term = properties.opt_str("search_term")?.map(str::to_owned);
        }
        EventKind::Exited => {
            let status = match properties.opt_str("status")? {
                Some(status) => Some(status),
                None => properties.opt_str("exit_status")?,
            };
            event.attributes.exit_status = status.map(str::to_owned);
        }
        _ => {}
    }
    Ok(())
}

//! Canonical events: what any provider's payload means, once decoded.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::phase::Phase;

/// One thing that happened in a link session, in provider-neutral terms.
///
/// Provider adapters turn payloads into events; [`crate::Session::apply`] folds them. The
/// provider timestamp is optional because some SDKs (Benji) send none: the adapter then puts
/// the receive time here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// When it happened, by the provider's clock, if known. The only time that orders events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// When linkflow received it, kept for an event without a provider time (the adapters set
    /// it then; Benji's callbacks carry none). Such an event has only its arrival to go by:
    /// this time is shown, and stands in for the event time in the session's first and last
    /// event time and in time in phase ([`Event::time`]), but never orders events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
    /// The attributes the provider sent with it.
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
}

impl Event {
    /// An event of `kind` with no time and no attributes.
    pub fn new(kind: EventKind) -> Self {
        Event {
            kind,
            occurred_at: None,
            received_at: None,
            attributes: Attributes::default(),
        }
    }

    /// Sets the provider time.
    pub fn at(mut self, occurred_at: DateTime<Utc>) -> Self {
        self.occurred_at = Some(occurred_at);
        self
    }

    /// Sets the provider time when there is one, else the receive time (what the adapters do).
    pub fn at_or_received(
        mut self,
        occurred_at: Option<DateTime<Utc>>,
        received_at: DateTime<Utc>,
    ) -> Self {
        match occurred_at {
            Some(at) => self.occurred_at = Some(at),
            None => self.received_at = Some(received_at),
        }
        self
    }

    /// The provider time, else the receive time: what the session's first and last event time
    /// and its phases' entry times record. Only the provider time orders events.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        self.occurred_at.or(self.received_at)
    }

    /// Sets the institution (id and optional display name).
    pub fn with_institution(mut self, id: impl Into<String>, name: Option<&str>) -> Self {
        self.attributes.institution = Some(Institution {
            id: id.into(),
            name: name.map(str::to_owned),
        });
        self
    }

    /// Sets the link type.
    pub fn with_link_type(mut self, link_type: LinkType) -> Self {
        self.attributes.link_type = Some(link_type);
        self
    }

    /// Sets the screen the user is on.
    pub fn with_screen(mut self, screen_name: impl Into<String>) -> Self {
        self.attributes.screen_name = Some(screen_name.into());
        self
    }

    /// Sets the error details.
    pub fn with_error(mut self, error: ErrorInfo) -> Self {
        self.attributes.error = Some(error);
        self
    }

    /// Sets the exit status.
    pub fn with_exit_status(mut self, status: impl Into<String>) -> Self {
        self.attributes.exit_status = Some(status.into());
        self
    }

    /// Sets the step of the flow the user left from.
    pub fn with_exit_step(mut self, step: impl Into<String>) -> Self {
        self.attributes.exit_step = Some(step.into());
        self
    }
}

/// The attributes the provider docs name. Every one is optional: which ones arrive depends on
/// the provider and the event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// A first link, a repair of a broken one, or a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_type: Option<LinkType>,
    /// The institution (bank, merchant, loyalty partner) the event names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution: Option<Institution>,
    /// The screen the user moved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_name: Option<String>,
    /// What the user typed into the institution search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_term: Option<String>,
    /// The error an `error` event reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// The integrator's id for the end user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_user_id: Option<String>,
    /// Why or how the user left, as the provider words it (MoneyKit `status`, Benji's exit
    /// `trigger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<String>,
    /// The step of the flow the user left from, as the provider names it (Benji's exit `step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_step: Option<String>,
    /// The provider's id of the linked account a success created, when the flow has one apart
    /// from the user and institution (Plaid's `item_id`, which the integrator's backend gets
    /// from `/item/public_token/exchange` and forwards with `onSuccess`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
}

impl Attributes {
    /// True when no attribute is set.
    pub fn is_empty(&self) -> bool {
        *self == Attributes::default()
    }
}

/// Whether the session creates a new link or repairs an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkType {
    /// A first link.
    Link,
    /// A repair of a link that broke (for example after `ACCOUNT_LOGIN_REQUIRED`).
    Relink,
    /// A link made through a fallback route after the primary one failed.
    FailoverLink,
}

impl LinkType {
    /// The snake_case name, as serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            LinkType::Link => "link",
            LinkType::Relink => "relink",
            LinkType::FailoverLink => "failover_link",
        }
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bank, merchant or loyalty partner, by the provider's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Institution {
    /// The provider's id for it (MoneyKit `institution_id`, Knot `merchant.id`, Benji `partner_id`).
    pub id: String,
    /// Its display name, when the provider sends one.
    #[serde(default)]
    pub name: Option<String>,
}

/// An error reported inside the flow. Errors are recorded, never fatal to the session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The provider's id for this occurrence (MoneyKit `error_id`, Benji `error_id`).
    #[serde(default)]
    pub id: Option<String>,
    /// The kind of error (Benji `unexpected_error`, `partner_connect_error`).
    #[serde(default)]
    pub code: Option<String>,
    /// The message shown to the user (MoneyKit `displayed_message`).
    #[serde(default)]
    pub message: Option<String>,
    /// The provider's id for the request that failed (MoneyKit `request_id`), for support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What kind of thing happened. The snake_case names are the canonical event names shown in
/// history output.
///
/// Phase events move the session through its [`Phase`]s according to the transition table;
/// telemetry and `Unrecognized` never change the phase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    // Phase events.
    /// The backend created the session.
    Created,
    /// The user opened the flow (MoneyKit `open`).
    Opened,
    /// The user picked an institution (MoneyKit `select_institution`, Benji `user_partner_select`).
    InstitutionSelected,
    /// The user submitted credentials (MoneyKit `submit_credentials`).
    CredentialsSubmitted,
    /// The user went to an OAuth login (MoneyKit `open_oauth`).
    OauthOpened,
    /// The user chose where to receive a one-time password (MoneyKit `submit_otp_device`).
    OtpDeviceSubmitted,
    /// The user submitted a one-time password (MoneyKit `submit_otp`).
    OtpSubmitted,
    /// The user answered an MFA challenge (MoneyKit `submit_mfa`).
    MfaSubmitted,
    /// The institution accepted the login (Benji `user_authenticated_with_partner`).
    Authenticated,
    /// The user agreed to the permissions (MoneyKit `submit_permissions`).
    PermissionsGranted,
    /// The user picked accounts (MoneyKit `submit_accounts`).
    AccountsSelected,
    /// The link succeeded (MoneyKit `success`, Benji `onSuccess`, Knot `AUTHENTICATED`).
    Succeeded,
    /// The user left the flow (MoneyKit `exit`, Benji `onExit`).
    Exited,

    // Telemetry.
    /// The user moved to another screen (MoneyKit `change_screen`).
    ScreenChanged,
    /// The user searched for an institution (MoneyKit `search_institution`).
    InstitutionSearched,
    /// The user continued past an institution alert (MoneyKit `acknowledge_institution_alert`).
    InstitutionAlertAcknowledged,
    /// The user closed an institution alert (MoneyKit `dismiss_institution_alert`).
    InstitutionAlertDismissed,
    /// The user opened the institution's website (MoneyKit `open_institution_website`).
    InstitutionWebsiteOpened,
    /// The user opened help (MoneyKit `select_help`).
    HelpSelected,
    /// The user chose to reset the password (MoneyKit `select_reset_password`).
    ResetPasswordSelected,
    /// The user opened the issue report (MoneyKit `select_report_issue`).
    ReportIssueSelected,
    /// The user sent an issue report (MoneyKit `submit_report_issue`).
    ReportIssueSubmitted,
    /// The user went back a screen (Benji `go_back_clicked`).
    WentBack,
    /// The user has been idle (Benji `user_inactive`).
    Inactive,
    /// An error happened in the flow (MoneyKit `error`, Benji `onError`).
    Error,

    /// The institution asked for more than the login: a one-time code, security questions, an
    /// approval, a zip code or a license (Knot `OTP_REQUIRED`, `QUESTIONS_REQUIRED`,
    /// `APPROVAL_REQUIRED`, ...). The user is in the MFA step.
    StepUpRequired,
    /// A documented provider event with no canonical meaning of its own (Benji `EVENT`, Knot
    /// `REFRESH_SESSION_REQUEST`); its name is kept as the raw name. Telemetry.
    ProviderEvent,

    /// The engine's marker that the session went silent for the inactivity timeout: written by
    /// the abandonment timer, never by a provider adapter. Its provider time is the last event
    /// time the timer saw (`since`), its receive time when the engine declared the
    /// abandonment. It takes effect only if, where it folds, the session is open and its last
    /// event time is still `since`; an accepted event after it revives the session. Never
    /// changes the phase.
    Abandoned,

    /// A name no adapter knows (a provider added it, or misspelled it). Kept, never fatal.
    Unrecognized {
        /// The name as the provider sent it.
        raw_name: String,
    },
}

/// How an [`EventKind`] takes part in the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventClass {
    /// Moves the session according to the transition table.
    Phase(Step),
    /// Recorded; never changes the phase.
    Telemetry,
    /// An unknown name: recorded; never changes the phase.
    Unrecognized,
    /// A marker the engine writes (`abandoned`): recorded; never changes the phase, not
    /// counted as activity (first and last event times, event counts).
    Marker,
}

impl EventKind {
    /// Every known kind (all but `Unrecognized`), phase events first. A kind's index here is
    /// its code in stored event records (see [`crate::EventBody`]'s compact form): add new
    /// kinds at the end, never reorder.
    pub const KNOWN: [EventKind; 28] = [
        EventKind::Created,
        EventKind::Opened,
        EventKind::InstitutionSelected,
        EventKind::CredentialsSubmitted,
        EventKind::OauthOpened,
        EventKind::OtpDeviceSubmitted,
        EventKind::OtpSubmitted,
        EventKind::MfaSubmitted,
        EventKind::Authenticated,
        EventKind::PermissionsGranted,
        EventKind::AccountsSelected,
        EventKind::Succeeded,
        EventKind::Exited,
        EventKind::ScreenChanged,
        EventKind::InstitutionSearched,
        EventKind::InstitutionAlertAcknowledged,
        EventKind::InstitutionAlertDismissed,
        EventKind::InstitutionWebsiteOpened,
        EventKind::HelpSelected,
        EventKind::ResetPasswordSelected,
        EventKind::ReportIssueSelected,
        EventKind::ReportIssueSubmitted,
        EventKind::WentBack,
        EventKind::Inactive,
        EventKind::Error,
        EventKind::StepUpRequired,
        EventKind::ProviderEvent,
        EventKind::Abandoned,
    ];

    /// The canonical snake_case name (`unrecognized` for unknown names).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Opened => "opened",
            EventKind::InstitutionSelected => "institution_selected",
            EventKind::CredentialsSubmitted => "credentials_submitted",
            EventKind::OauthOpened => "oauth_opened",
            EventKind::OtpDeviceSubmitted => "otp_device_submitted",
            EventKind::OtpSubmitted => "otp_submitted",
            EventKind::MfaSubmitted => "mfa_submitted",
            EventKind::Authenticated => "authenticated",
            EventKind::PermissionsGranted => "permissions_granted",
            EventKind::AccountsSelected => "accounts_selected",
            EventKind::Succeeded => "succeeded",
            EventKind::Exited => "exited",
            EventKind::ScreenChanged => "screen_changed",
            EventKind::InstitutionSearched => "institution_searched",
            EventKind::InstitutionAlertAcknowledged => "institution_alert_acknowledged",
            EventKind::InstitutionAlertDismissed => "institution_alert_dismissed",
            EventKind::InstitutionWebsiteOpened => "institution_website_opened",
            EventKind::HelpSelected => "help_selected",
            EventKind::ResetPasswordSelected => "reset_password_selected",
            EventKind::ReportIssueSelected => "report_issue_selected",
            EventKind::ReportIssueSubmitted => "report_issue_submitted",
            EventKind::WentBack => "went_back",
            EventKind::Inactive => "inactive",
            EventKind::Error => "error",
            EventKind::StepUpRequired => "step_up_required",
            EventKind::ProviderEvent => "provider_event",
            EventKind::Abandoned => "abandoned",
            EventKind::Unrecognized { .. } => "unrecognized",
        }
    }

    /// Whether this kind is a phase event (and which step), telemetry, or unrecognized.
    pub fn class(&self) -> EventClass {
        match self {
            EventKind::Created => EventClass::Phase(Step::Create),
            EventKind::Opened => EventClass::Phase(Step::Open),
            EventKind::InstitutionSelected => EventClass::Phase(Step::SelectInstitution),
            EventKind::CredentialsSubmitted | EventKind::OauthOpened => {
                EventClass::Phase(Step::StartAuthentication)
            }
            EventKind::OtpDeviceSubmitted
            | EventKind::OtpSubmitted
            | EventKind::MfaSubmitted
            | EventKind::StepUpRequired => EventClass::Phase(Step::SubmitMfa),
            EventKind::Authenticated => EventClass::Phase(Step::Authenticate),
            EventKind::PermissionsGranted => EventClass::Phase(Step::GrantPermissions),
            EventKind::AccountsSelected => EventClass::Phase(Step::SelectAccounts),
            EventKind::Succeeded => EventClass::Phase(Step::Succeed),
            EventKind::Exited => EventClass::Phase(Step::Exit),
            EventKind::ScreenChanged
            | EventKind::InstitutionSearched
            | EventKind::InstitutionAlertAcknowledged
            | EventKind::InstitutionAlertDismissed
            | EventKind::InstitutionWebsiteOpened
            | EventKind::HelpSelected
            | EventKind::ResetPasswordSelected
            | EventKind::ReportIssueSelected
            | EventKind::ReportIssueSubmitted
            | EventKind::WentBack
            | EventKind::Inactive
            | EventKind::Error
            | EventKind::ProviderEvent => EventClass::Telemetry,
            EventKind::Abandoned => EventClass::Marker,
            EventKind::Unrecognized { .. } => EventClass::Unrecognized,
        }
    }

    /// The step of a phase event, `None` for telemetry and unrecognized kinds.
    pub fn step(&self) -> Option<Step> {
        match self.class() {
            EventClass::Phase(step) => Some(step),
            EventClass::Telemetry | EventClass::Unrecognized | EventClass::Marker => None,
        }
    }

    /// Parses a canonical name; any other name becomes `Unrecognized` with that raw name.
    pub fn from_name(name: &str) -> EventKind {
        EventKind::KNOWN
            .into_iter()
            .find(|kind| kind.name() == name)
            .unwrap_or_else(|| EventKind::Unrecognized {
                raw_name: name.to_owned(),
            })
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::Unrecognized { raw_name } => write!(f, "unrecognized `{raw_name}`"),
            known => f.write_str(known.name()),
        }
    }
}

/// The step a phase event takes: several event kinds can take the same step (credentials and
/// OAuth both start authentication). The transition table is written in steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// `created`.
    Create,
    /// `opened`.
    Open,
    /// `institution_selected`.
    SelectInstitution,
    /// `credentials_submitted`, `oauth_opened`.
    StartAuthentication,
    /// `otp_device_submitted`, `otp_submitted`, `mfa_submitted`, `step_up_required`.
    SubmitMfa,
    /// `authenticated`.
    Authenticate,
    /// `permissions_granted`.
    GrantPermissions,
    /// `accounts_selected`.
    SelectAccounts,
    /// `succeeded`.
    Succeed,
    /// `exited`.
    Exit,
}

impl Step {
    /// Every step, in the order of the phases they lead to.
    pub const ALL: [Step; 10] = [
        Step::Create,
        Step::Open,
        Step::SelectInstitution,
        Step::StartAuthentication,
        Step::SubmitMfa,
        Step::Authenticate,
        Step::GrantPermissions,
        Step::SelectAccounts,
        Step::Succeed,
        Step::Exit,
    ];

    /// The snake_case name, as serialized and shown on diagram edges.
    pub const fn as_str(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Open => "open",
            Step::SelectInstitution => "select_institution",
            Step::StartAuthentication => "start_authentication",
            Step::SubmitMfa => "submit_mfa",
            Step::Authenticate => "authenticate",
            Step::GrantPermissions => "grant_permissions",
            Step::SelectAccounts => "select_accounts",
            Step::Succeed => "succeed",
            Step::Exit => "exit",
        }
    }

    /// The phase this step leads to when it moves forward.
    pub const fn phase(self) -> Phase {
        match self {
            Step::Create => Phase::Created,
            Step::Open => Phase::Opened,
            Step::SelectInstitution => Phase::InstitutionSelected,
            Step::StartAuthentication => Phase::Authenticating,
            Step::SubmitMfa => Phase::Mfa,
            Step::Authenticate => Phase::Authenticated,
            Step::GrantPermissions => Phase::PermissionsGranted,
            Step::SelectAccounts => Phase::AccountsSelected,
            Step::Succeed => Phase::Succeeded,
            Step::Exit => Phase::Exited,
        }
    }

    /// The event kinds that take this step.
    pub fn event_kinds(self) -> impl Iterator<Item = EventKind> {
        EventKind::KNOWN
            .into_iter()
            .filter(move |kind| kind.step() == Some(self))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_round_trip_and_unknown_names_are_kept() {
        for kind in EventKind::KNOWN {
            assert_eq!(EventKind::from_name(kind.name()), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
        }
        assert_eq!(
            EventKind::from_name("submit_credentails"),
            EventKind::Unrecognized {
                raw_name: "submit_credentails".into()
            }
        );
    }

    #[test]
    fn every_step_has_at_least_one_event_kind_and_targets_its_phase() {
        for step in Step::ALL {
            assert!(step.event_kinds().count() >= 1, "{step} has no event kind");
        }
        assert_eq!(
            Step::StartAuthentication.event_kinds().collect::<Vec<_>>(),
            vec![EventKind::CredentialsSubmitted, EventKind::OauthOpened]
        );
    }

    #[test]
    fn event_round_trips_through_json() {
        let event = Event::new(EventKind::Unrecognized {
            raw_name: "new_thing".into(),
        })
        .with_institution("ins_1", Some("Bank"))
        .with_link_type(LinkType::FailoverLink);
        let json = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);
    }
}

//! The JSON shapes of the CLI's `--json` output and the HTTP API. Scripts depend on these
//! field names: they are a contract, shared by both front doors.

use chrono::{DateTime, Utc};
use linkflow_core::{EventBody, MerchantStatus, Phase, Position, Provider, SessionId, Version};
use linkflow_store::RawJson;
use serde::Serialize;
use uuid::Uuid;

use crate::query::{AccountView, HistoryEntry, RejectedEvent, SessionView};

/// `show SESSION --json` and `GET /v1/sessions/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionJson {
    /// The session id.
    pub session_id: SessionId,
    /// `moneykit`, `benji` or `knot`.
    pub provider: Provider,
    /// The phase.
    pub phase: Phase,
    /// `link`, `relink`, `failover_link`, or null.
    pub link_type: Option<&'static str>,
    /// `{id, name}` or null.
    pub institution: Option<InstitutionJson>,
    /// Events stored for it, accepted and rejected: its version (`show --at` counts these).
    pub version: Version,
    /// Events its fold accepts.
    pub accepted: u64,
    /// Events its fold rejects (listed by `parked`).
    pub rejected: u32,
    /// `{code, id, message, request_id}` or null.
    pub last_error: Option<ErrorJson>,
    /// `{phase, status, step}` or null.
    pub exit: Option<ExitJson>,
    /// Accepted events by class: `{phase, telemetry, unrecognized, errors}`.
    pub counts: linkflow_core::EventCounts,
    /// Every phase the session entered, in the table's order.
    pub visited: Vec<Phase>,
    /// The earliest event time.
    pub first_event_at: Option<DateTime<Utc>>,
    /// The latest event time.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Whether the session is abandoned: not terminal and silent for the inactivity timeout.
    pub abandoned: bool,
    /// The screen of the latest event naming one.
    pub current_screen: Option<String>,
    /// The end user's id.
    pub external_user_id: Option<String>,
    /// The provider's id of the linked account the session created (Plaid's `item_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// The version it was compacted at (`docs/privacy.md`, "Compaction"): its history up to
    /// it is no longer stored. Absent when it never was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compacted_at: Option<Version>,
}

/// An institution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstitutionJson {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
}

/// An error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorJson {
    /// The error code.
    pub code: Option<String>,
    /// The provider's id for it.
    pub id: Option<String>,
    /// The message shown.
    pub message: Option<String>,
    /// The provider's id for the request that failed.
    pub request_id: Option<String>,
}

/// How the user left.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExitJson {
    /// The phase they left from.
    pub phase: Phase,
    /// The provider's status (or exit trigger).
    pub status: Option<String>,
    /// The provider's name for the step the user left from.
    pub step: Option<String>,
}

impl SessionJson {
    /// The JSON view of a session; `abandoned` as judged by the caller
    /// ([`crate::Engine::is_abandoned`]).
    pub fn new(view: &SessionView, abandoned: bool) -> Self {
        let state = &view.state;
        SessionJson {
            session_id: view.session_id.clone(),
            provider: view.provider,
            phase: state.phase(),
            link_type: state.link_type().map(|link_type| link_type.as_str()),
            institution: state.institution().map(|institution| InstitutionJson {
                id: institution.id.clone(),
                name: institution.name.clone(),
            }),
            version: Version(view.events),
            accepted: state.version().0,
            rejected: view.rejected,
            last_error: state.last_error().map(|error| ErrorJson {
                code: error.value.code.clone(),
                id: error.value.id.clone(),
                message: error.value.message.clone(),
                request_id: error.value.request_id.clone(),
            }),
            exit: state.exit().map(|exit| ExitJson {
                phase: exit.phase,
                status: exit.status.clone(),
                step: exit.step.clone(),
            }),
            counts: state.counts(),
            visited: Phase::ALL
                .into_iter()
                .filter(|phase| state.journey().visited(*phase))
                .collect(),
            first_event_at: state.first_event_at(),
            last_event_at: state.last_event_at(),
            abandoned,
            current_screen: state.current_screen().map(|screen| screen.value.clone()),
            external_user_id: state.external_user_id().map(str::to_owned),
            item_id: state.item_id().map(str::to_owned),
            compacted_at: view.compacted_at,
        }
    }
}

/// One entry of `history SESSION --json` and `GET /v1/sessions/{id}/history`, in the order
/// the session's fold takes its events (event time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryJson {
    /// Version in the session: its arrival number.
    pub version: Version,
    /// Global position.
    pub position: Position,
    /// Canonical snake_case name (`unrecognized` for unknown names).
    pub event: String,
    /// The provider's name.
    pub raw_name: Option<String>,
    /// The provider's time.
    pub event_time: Option<DateTime<Utc>>,
    /// Whether the fold accepts it.
    pub accepted: bool,
    /// Why the fold rejects it (null when accepted).
    pub rejection: Option<String>,
    /// It arrived after an event the fold places after it.
    pub late: bool,
    /// The phase before (null outside sessions).
    pub phase_before: Option<Phase>,
    /// The phase after (equal for telemetry and rejected events).
    pub phase_after: Option<Phase>,
    /// When it was received (shown, never used to order it).
    pub received_at: DateTime<Utc>,
    /// Its id.
    pub event_id: Uuid,
    /// The canonical event with everything the adapter read (attributes, account details).
    pub canonical: EventBody,
    /// The payload as stored (tokens withheld): what has no canonical place is here.
    pub raw: Option<RawJson>,
}

impl From<&HistoryEntry> for HistoryJson {
    fn from(entry: &HistoryEntry) -> Self {
        HistoryJson {
            version: entry.version,
            position: entry.position,
            event: entry.event.clone(),
            raw_name: entry.raw_name.clone(),
            event_time: entry.event_time,
            accepted: entry.accepted,
            rejection: entry.rejection.clone(),
            late: entry.late,
            phase_before: entry.phase_before,
            phase_after: entry.phase_after,
            received_at: entry.received_at,
            event_id: entry.event_id,
            canonical: entry.body.clone(),
            raw: entry.raw.clone(),
        }
    }
}

/// One entry of `parked --json` and `GET /v1/parked`: an event its stream's fold rejects now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedJson {
    /// Its stream (a session or an account).
    pub session_id: SessionId,
    /// Its version in the stream: its arrival number.
    pub version: Version,
    /// Canonical name.
    pub event: String,
    /// The provider's name.
    pub raw_name: Option<String>,
    /// The provider's time.
    pub event_time: Option<DateTime<Utc>>,
    /// Why the fold rejects it.
    pub reason: String,
    /// It arrived after an event the fold places after it.
    pub late: bool,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// Its id.
    pub event_id: Uuid,
}

impl From<&RejectedEvent> for RejectedJson {
    fn from(rejected: &RejectedEvent) -> Self {
        let entry = &rejected.entry;
        RejectedJson {
            session_id: rejected.stream.clone(),
            version: entry.version,
            event: entry.event.clone(),
            raw_name: entry.raw_name.clone(),
            event_time: entry.event_time,
            reason: entry.rejection.clone().unwrap_or_default(),
            late: entry.late,
            received_at: entry.received_at,
            event_id: entry.event_id,
        }
    }
}

/// `parked --json` and `GET /v1/parked`: the rejected events, at most
/// [`crate::MAX_REJECTED_LISTED`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedListJson {
    /// The events, in stream then event-time order.
    pub events: Vec<RejectedJson>,
    /// True when more events are rejected than were listed.
    pub truncated: bool,
    /// Where the next page starts (the listing of every stream's rejected events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl From<&crate::RejectedList> for RejectedListJson {
    fn from(list: &crate::RejectedList) -> Self {
        RejectedListJson {
            events: list.events.iter().map(RejectedJson::from).collect(),
            truncated: list.truncated,
            next_cursor: list.next.as_ref().map(ToString::to_string),
        }
    }
}

/// One entry of `accounts --json` and `GET /v1/accounts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountJson {
    /// The provider.
    pub provider: Provider,
    /// The end user's id.
    pub external_user_id: String,
    /// The institution or merchant id.
    pub institution_id: String,
    /// `active`, `login_required`, `pending_expiration`, `revoked` (or `absent` after a
    /// withdrawn link).
    pub state: &'static str,
    /// The last link's type.
    pub link_type: Option<&'static str>,
    /// When the link stops working, as the provider's last expiry warning said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// When the provider last said the user has accounts the link does not share yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_accounts_at: Option<DateTime<Utc>>,
    /// Recent operations, oldest first.
    pub operations: Vec<OperationJson>,
}

/// A recorded operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationJson {
    /// `cart_sync`, `checkout` or `card_switch`.
    pub kind: linkflow_core::OperationKind,
    /// `succeeded`, `failed` or `started`.
    pub outcome: linkflow_core::Outcome,
    /// When.
    pub event_time: Option<DateTime<Utc>>,
    /// Transaction ids.
    pub transaction_ids: Vec<String>,
    /// Why it failed, as the provider words it.
    pub reason: Option<String>,
}

impl From<&AccountView> for AccountJson {
    fn from(view: &AccountView) -> Self {
        AccountJson {
            provider: view.key.provider,
            external_user_id: view.key.external_user_id.clone(),
            institution_id: view.key.institution_id.clone(),
            state: view.account.state().as_str(),
            link_type: view.account.link_type().map(|link_type| link_type.as_str()),
            expires_at: view.account.expires_at(),
            new_accounts_at: view.account.new_accounts_at(),
            operations: view
                .account
                .operations()
                .iter()
                .map(|operation| OperationJson {
                    kind: operation.kind,
                    outcome: operation.outcome,
                    event_time: operation.event_time,
                    transaction_ids: operation.transaction_ids.clone(),
                    reason: operation.reason.clone(),
                })
                .collect(),
        }
    }
}

/// One entry of `merchants --json` and `GET /v1/merchants`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MerchantJson {
    /// The merchant id.
    pub merchant_id: String,
    /// Its name.
    pub name: Option<String>,
    /// The product type.
    #[serde(rename = "type")]
    pub product_type: String,
    /// The platform.
    pub platform: String,
    /// The SDK version.
    pub sdk: Option<String>,
    /// `up`, `down`, or `unknown` (a status this build does not know; see the payload).
    pub status: linkflow_core::Availability,
    /// Since when (the event time of the newest status).
    pub since: DateTime<Utc>,
}

impl From<&MerchantStatus> for MerchantJson {
    fn from(status: &MerchantStatus) -> Self {
        MerchantJson {
            merchant_id: status.merchant_id.clone(),
            name: status.name.clone(),
            product_type: status.product_type.clone(),
            platform: status.platform.clone(),
            sdk: status.sdk.clone(),
            status: status.status,
            since: status.since,
        }
    }
}

//! Knot webhooks, every product: `{event, session_id?, task_id?, external_user_id?,
//! merchant?{id, name, logo?, category?}, data?, updated?, timestamp}`, `timestamp` in epoch
//! milliseconds (a number, or a string of digits in some doc samples).
//!
//! Where each goes (the table in `docs/providers.md`):
//! - link-session events (`AUTHENTICATED`, the merchant-authentication step-ups and their
//!   failures) go to the session `session_id`;
//! - account events (card switches, cart syncs, checkouts, `ACCOUNT_LOGIN_REQUIRED`,
//!   transaction and account notices) go to the account (knot, `external_user_id`, merchant
//!   id); notices that name no merchant (`NEW_DETECTED_ACCOUNTS_AVAILABLE`) go to the user's
//!   stream (the account key with an empty institution id);
//! - `MERCHANT_STATUS_UPDATE` is merchant availability.
//!
//! A webhook whose stream is missing (an account event without a user, a session event without
//! a session) falls back to the next stream it names; one that names none is quarantined.

use chrono::{DateTime, Utc};
use linkflow_core::{
    AccountEvent, AccountEventKind, AccountKey, ErrorInfo, Event, EventKind, NoticeKind,
    OperationKind, Outcome, Provider,
};

use crate::json::{ids_in, Notes, Obj};
use crate::{dedupe_key, event_time, Availability, MerchantStatus, Payload, Routed, Target};

/// What a documented webhook means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// The session succeeded: the user authenticated to the merchant.
    Authenticated,
    /// A step-up the user must pass (the session's MFA step).
    StepUp,
    /// A step-up or login that failed and can be retried (an error in the session).
    StepFailed,
    /// An operation on the account.
    Operation(OperationKind, Outcome),
    /// The merchant login broke.
    LoginRequired,
    /// A notice about the user's data at the merchant (or at all merchants).
    Notice(NoticeKind),
    /// Merchant availability.
    MerchantStatus,
}

/// Every documented webhook name and what it means.
pub const EVENT_NAMES: [(&str, Meaning); 26] = [
    ("AUTHENTICATED", Meaning::Authenticated),
    ("OTP_REQUIRED", Meaning::StepUp),
    ("QUESTIONS_REQUIRED", Meaning::StepUp),
    ("APPROVAL_REQUIRED", Meaning::StepUp),
    ("LOGIN_APPROVAL", Meaning::StepUp),
    ("ZIPCODE_REQUIRED", Meaning::StepUp),
    ("LICENSE_REQUIRED", Meaning::StepUp),
    ("CREDENTIALS_FAILED", Meaning::StepFailed),
    ("OTP_FAILED", Meaning::StepFailed),
    ("QUESTIONS_FAILED", Meaning::StepFailed),
    ("APPROVAL_FAILED", Meaning::StepFailed),
    ("LICENSE_FAILED", Meaning::StepFailed),
    ("ZIPCODE_FAILED", Meaning::StepFailed),
    (
        "CARD_UPDATING",
        Meaning::Operation(OperationKind::CardSwitch, Outcome::Started),
    ),
    (
        "CARD_UPDATED",
        Meaning::Operation(OperationKind::CardSwitch, Outcome::Succeeded),
    ),
    (
        "CARD_FAILED",
        Meaning::Operation(OperationKind::CardSwitch, Outcome::Failed),
    ),
    (
        "SYNC_CART_SUCCEEDED",
        Meaning::Operation(OperationKind::CartSync, Outcome::Succeeded),
    ),
    (
        "SYNC_CART_FAILED",
        Meaning::Operation(OperationKind::CartSync, Outcome::Failed),
    ),
    (
        "CHECKOUT_SUCCEEDED",
        Meaning::Operation(OperationKind::Checkout, Outcome::Succeeded),
    ),
    (
        "CHECKOUT_FAILED",
        Meaning::Operation(OperationKind::Checkout, Outcome::Failed),
    ),
    ("ACCOUNT_LOGIN_REQUIRED", Meaning::LoginRequired),
    (
        "NEW_TRANSACTIONS_AVAILABLE",
        Meaning::Notice(NoticeKind::TransactionsAvailable),
    ),
    (
        "UPDATED_TRANSACTIONS_AVAILABLE",
        Meaning::Notice(NoticeKind::TransactionsUpdated),
    ),
    (
        "NEW_DETECTED_ACCOUNTS_AVAILABLE",
        Meaning::Notice(NoticeKind::AccountsDetected),
    ),
    (
        "ACCOUNTS_RETRIEVED",
        Meaning::Notice(NoticeKind::AccountsRetrieved),
    ),
    ("MERCHANT_STATUS_UPDATE", Meaning::MerchantStatus),
];

/// The fields every webhook may carry, read once.
struct Common<'a> {
    root: Obj<'a>,
    name: String,
    time: Option<DateTime<Utc>>,
    session: Option<String>,
    user: Option<String>,
    merchant: Option<Obj<'a>>,
    merchant_id: Option<String>,
}

/// Decodes one Knot webhook body. (Check its signature first: [`crate::signature`].)
pub(crate) fn decode(payload: Payload<'_>, notes: &mut Notes) -> Routed {
    let Some(root) = Obj::root(payload.value) else {
        return payload.nowhere(
            "the payload is not a JSON object, so it names no session, user or merchant",
            None,
        );
    };
    let name = root.text("event", notes).unwrap_or_else(|| {
        notes.warn("$.event", "missing: the event is kept as unrecognized");
        String::new()
    });
    let time = match root.value("timestamp") {
        Some(value) => event_time("$.timestamp", value, notes),
        None => {
            notes.warn("$.timestamp", "missing: the event has no provider time");
            None
        }
    };
    let merchant = root.obj("merchant", notes);
    let merchant_id = merchant.as_ref().and_then(|m| m.id_of(&["id"], notes));
    let common = Common {
        session: root.text("session_id", notes).filter(|id| !id.is_empty()),
        user: root
            .text("external_user_id", notes)
            .filter(|id| !id.is_empty()),
        root,
        name,
        time,
        merchant,
        merchant_id,
    };
    let meaning = EVENT_NAMES
        .iter()
        .find(|(known, _)| *known == common.name)
        .map(|(_, meaning)| *meaning);
    let target = match meaning {
        Some(Meaning::MerchantStatus) => merchant_status(&common, payload, notes),
        Some(meaning) => route(&common, meaning, payload, notes),
        None => unrecognized(&common, payload, notes),
    };
    let Some(target) = target else {
        return payload.nowhere(
            format!(
                "`{}` names no stream linkflow can key it by: no session_id, no external_user_id, no merchant id",
                common.name
            ),
            Some(&common.name),
        );
    };
    let stream = match &target {
        Target::Session { session, .. } => session.to_string(),
        Target::Account { account, .. } => {
            format!("{}:{}", account.external_user_id, account.institution_id)
        }
        Target::Merchant(status) => status.merchant_id.clone(),
    };
    Routed::Event {
        dedupe_key: dedupe_key(
            Provider::Knot,
            &stream,
            &common.name,
            common.time,
            payload.value,
        ),
        target,
        raw_name: common.name,
        event_id: None,
    }
}

/// A documented webhook to its stream: the session for session events, the account for
/// account events, each falling back to the other (or to the user's stream) when its key is
/// missing.
fn route(
    common: &Common<'_>,
    meaning: Meaning,
    payload: Payload<'_>,
    notes: &mut Notes,
) -> Option<Target> {
    let session_event = match meaning {
        Meaning::Authenticated => Some(EventKind::Succeeded),
        Meaning::StepUp => Some(EventKind::StepUpRequired),
        Meaning::StepFailed => Some(EventKind::Error),
        _ => None,
    };
    if let Some(kind) = session_event {
        if let Some(target) = session_target(common, kind, payload, notes) {
            return Some(target);
        }
        // AUTHENTICATED without a session still links the account.
        let account_kind = (meaning == Meaning::Authenticated).then_some(AccountEventKind::Linked);
        return account_target(common, account_kind?, notes);
    }
    let kind = match meaning {
        Meaning::Operation(kind, outcome) => AccountEventKind::Operation { kind, outcome },
        Meaning::LoginRequired => AccountEventKind::LoginRequired,
        Meaning::Notice(kind) => AccountEventKind::Notice(kind),
        _ => unreachable!("session events and merchant status are routed above"),
    };
    if let Some(target) = account_target(common, kind, notes) {
        return Some(target);
    }
    // An account event whose user is missing: kept on its session, if it names one.
    notes.warn(
        "$.external_user_id",
        "missing: the event is kept on its session as a provider event",
    );
    session_target(common, EventKind::ProviderEvent, payload, notes)
}

fn session_target(
    common: &Common<'_>,
    kind: EventKind,
    payload: Payload<'_>,
    notes: &mut Notes,
) -> Option<Target> {
    let text = common.session.as_ref()?;
    let session = crate::session_for(
        Some(("$.session_id".into(), text.clone())),
        payload.context,
        notes,
    )
    .ok()?;
    let mut event =
        Event::new(kind.clone()).at_or_received(common.time, payload.context.received_at);
    if let (Some(id), Some(merchant)) = (&common.merchant_id, &common.merchant) {
        event = event.with_institution(id.clone(), merchant.text("name", notes).as_deref());
    }
    event.attributes.external_user_id = common.user.clone();
    if kind == EventKind::Error {
        event.attributes.error = Some(ErrorInfo {
            code: Some(common.name.clone()),
            message: data_reason(&common.root, notes),
            ..ErrorInfo::default()
        });
    }
    Some(Target::Session { session, event })
}

/// The account (or, with no merchant, the user's stream) a webhook belongs to; `None` without
/// an `external_user_id`.
fn account_target(
    common: &Common<'_>,
    kind: AccountEventKind,
    notes: &mut Notes,
) -> Option<Target> {
    let user = common.user.clone()?;
    let mut event = AccountEvent::new(kind);
    event.occurred_at = common.time;
    event.transaction_ids = match &event.kind {
        AccountEventKind::Notice(NoticeKind::TransactionsUpdated) => {
            ids_in(&common.root, "updated", notes)
        }
        _ => common
            .root
            .obj("data", notes)
            .map(|data| ids_in(&data, "transactions", notes))
            .unwrap_or_default(),
    };
    if matches!(
        event.kind,
        AccountEventKind::Operation {
            outcome: Outcome::Failed,
            ..
        }
    ) {
        event.reason = data_reason(&common.root, notes);
    }
    Some(Target::Account {
        account: AccountKey {
            provider: Provider::Knot,
            external_user_id: user,
            institution_id: common.merchant_id.clone().unwrap_or_default(),
        },
        event,
    })
}

/// `data.reason`: why an operation or step failed.
fn data_reason(root: &Obj<'_>, notes: &mut Notes) -> Option<String> {
    root.obj("data", notes)?.text("reason", notes)
}

/// `MERCHANT_STATUS_UPDATE`: availability per merchant, product type, platform and SDK.
fn merchant_status(common: &Common<'_>, payload: Payload<'_>, notes: &mut Notes) -> Option<Target> {
    let merchant_id = common.merchant_id.clone()?;
    let merchant = common.merchant.as_ref()?;
    let data = common.root.obj("data", notes);
    let text = |key: &str, notes: &mut Notes| data.as_ref().and_then(|data| data.text(key, notes));
    let status = match text("status", notes).as_deref() {
        Some("UP") => Availability::Up,
        Some("DOWN") => Availability::Down,
        other => {
            notes.warn(
                "$.data.status",
                format!(
                    "{} is not a status this build knows (UP, DOWN): stored as unknown",
                    other.map_or("missing".to_owned(), |text| format!("`{text}`"))
                ),
            );
            Availability::Unknown
        }
    };
    let keyed = |key: &str, notes: &mut Notes| {
        text(key, notes).unwrap_or_else(|| {
            notes.warn(format!("$.data.{key}"), "missing: keyed as `unknown`");
            "unknown".to_owned()
        })
    };
    Some(Target::Merchant(MerchantStatus {
        merchant_id,
        name: merchant.text("name", notes),
        category: merchant.text("category", notes),
        logo: merchant.text("logo", notes),
        product_type: keyed("type", notes),
        platform: keyed("platform", notes),
        sdk: text("sdk", notes),
        status,
        since: common.time.unwrap_or(payload.context.received_at),
    }))
}

/// A name no adapter knows: kept on the session it names, else on the account or the user's
/// stream.
fn unrecognized(common: &Common<'_>, payload: Payload<'_>, notes: &mut Notes) -> Option<Target> {
    let kind = EventKind::Unrecognized {
        raw_name: common.name.clone(),
    };
    session_target(common, kind, payload, notes).or_else(|| {
        account_target(
            common,
            AccountEventKind::Unrecognized {
                raw_name: common.name.clone(),
            },
            notes,
        )
    })
}

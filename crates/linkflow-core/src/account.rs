//! The linked-account state machine: what happens to a link after the session succeeded.
//!
//! An account is identified by (provider, external user id, institution id). It comes to
//! exist when a link succeeds (Knot `AUTHENTICATED`; a MoneyKit or Benji success for a known
//! user and institution), breaks when the provider says the login is required, and is repaired
//! by a later successful link (a MoneyKit `relink`, a new Knot `AUTHENTICATED`). Cart syncs and
//! checkouts are recorded with their outcome; they are legal only for an account that exists.
//! The rules are one table, [`ACCOUNT_TABLE`], read by [`Account::apply`] and the diagram.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::compact::{Compact, CompactError, Input, Output};
use crate::event::LinkType;
use crate::ids::{InvalidSessionId, Provider, SessionId, Version};
use crate::session::{decode_link_type, encode_link_type};

/// Operations kept per account in [`Account::operations`]; older ones stay in the log.
/// Bounds the state's size so that a busy account does not grow its snapshot forever.
pub const MAX_RECENT_OPERATIONS: usize = 20;

/// Where a linked account stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// No successful link yet: the account does not exist.
    #[default]
    Absent,
    /// Linked and working.
    Active,
    /// The provider reported that the user must log in again.
    LoginRequired,
    /// Linked and working, but the provider said it will stop working on a date
    /// ([`Account::expires_at`]): consent expiring (Plaid `PENDING_EXPIRATION`) or a
    /// disconnection ahead (Plaid `PENDING_DISCONNECT`). A new link (update mode) renews it.
    PendingExpiration,
    /// The user revoked the link at the provider (Plaid `USER_PERMISSION_REVOKED`,
    /// `USER_ACCOUNT_REVOKED`): it no longer works until the user links again.
    Revoked,
}

impl AccountState {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccountState::Absent => "absent",
            AccountState::Active => "active",
            AccountState::LoginRequired => "login_required",
            AccountState::PendingExpiration => "pending_expiration",
            AccountState::Revoked => "revoked",
        }
    }
}

impl fmt::Display for AccountState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which account: (provider, the integrator's user id, the institution or merchant id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountKey {
    /// The provider.
    pub provider: Provider,
    /// The integrator's id for the end user.
    pub external_user_id: String,
    /// The institution (bank, merchant, loyalty partner) id.
    pub institution_id: String,
}

impl AccountKey {
    /// The account of a Plaid item: Plaid's item webhooks name the item alone, so the item is
    /// the account, with an empty user id and the item id in the institution's place.
    pub fn plaid_item(item_id: &str) -> Self {
        AccountKey {
            provider: Provider::Plaid,
            external_user_id: String::new(),
            institution_id: item_id.to_owned(),
        }
    }

    /// The id of the account's own event stream: [`AccountKey::user_prefix`] then the
    /// institution id.
    pub fn stream_id(&self) -> Result<SessionId, InvalidSessionId> {
        SessionId::new(format!(
            "{}{}",
            AccountKey::user_prefix(self.provider, &self.external_user_id),
            self.institution_id
        ))
    }

    /// What every account stream id of `provider` and `user` starts with (the user's accounts
    /// are the streams under it): `account:<provider>:<user id length>:<user id>:`, the length
    /// keeping two (user, institution) pairs from ever giving the same id; for a user id longer
    /// than [`MAX_INLINE_USER_BYTES`] (a sealed one is about twice as long as the id it seals),
    /// `account:<provider>:h<SHA-256 of the user id, hex>:`, so that the stream id stays under
    /// the limit. A decimal length never starts with `h`: the two forms never meet.
    pub fn user_prefix(provider: Provider, user: &str) -> String {
        if user.len() <= MAX_INLINE_USER_BYTES {
            return format!("account:{provider}:{}:{user}:", user.len());
        }
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(user.as_bytes());
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("account:{provider}:h{hex}:")
    }
}

/// The longest user id an account stream id holds as it is (see [`AccountKey::user_prefix`]).
pub const MAX_INLINE_USER_BYTES: usize = 96;

/// Whether an operation worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked.
    Succeeded,
    /// It failed.
    Failed,
    /// It began; its end comes in a later event (Knot `CARD_UPDATING`).
    Started,
}

impl Outcome {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Started => "started",
        }
    }
}

/// What an account operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Products added to the user's merchant cart (Knot `SYNC_CART_*`).
    CartSync,
    /// A checkout of the merchant cart (Knot `CHECKOUT_*`).
    Checkout,
    /// The user's card switched in the merchant account (Knot `CARD_UPDATING`, `CARD_UPDATED`,
    /// `CARD_FAILED`).
    CardSwitch,
}

impl OperationKind {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OperationKind::CartSync => "cart_sync",
            OperationKind::Checkout => "checkout",
            OperationKind::CardSwitch => "card_switch",
        }
    }
}

/// A provider notice about the user's data that changes no account state and needs no linked
/// account: accepted in every state, like an unrecognized event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// New transactions can be fetched (Knot `NEW_TRANSACTIONS_AVAILABLE`).
    TransactionsAvailable,
    /// Transactions changed; their ids are the event's transaction ids (Knot
    /// `UPDATED_TRANSACTIONS_AVAILABLE`).
    TransactionsUpdated,
    /// The provider detected accounts of the user at merchants (Knot
    /// `NEW_DETECTED_ACCOUNTS_AVAILABLE`).
    AccountsDetected,
    /// The provider retrieved the user's accounts at the merchant (Knot `ACCOUNTS_RETRIEVED`).
    AccountsRetrieved,
    /// The user has accounts at the institution that the link does not share yet; update
    /// mode can add them (Plaid `NEW_ACCOUNTS_AVAILABLE`). Recorded on the account
    /// ([`Account::new_accounts_at`]).
    NewAccountsAvailable,
}

impl NoticeKind {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            NoticeKind::TransactionsAvailable => "transactions_available",
            NoticeKind::TransactionsUpdated => "transactions_updated",
            NoticeKind::AccountsDetected => "accounts_detected",
            NoticeKind::AccountsRetrieved => "accounts_retrieved",
            NoticeKind::NewAccountsAvailable => "new_accounts_available",
        }
    }
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountEventKind {
    /// A link succeeded for this user and institution.
    Linked,
    /// The link a session made was withdrawn: a later fold of that session no longer accepts
    /// its success, or names another user or institution (the engine appends it, with the
    /// time of the success it withdraws).
    LinkWithdrawn,
    /// The provider says the user must log in again (Knot `ACCOUNT_LOGIN_REQUIRED`, Plaid
    /// `ERROR` with `ITEM_LOGIN_REQUIRED`).
    LoginRequired,
    /// The provider says the login works again (Plaid `LOGIN_REPAIRED`).
    LoginRepaired,
    /// The provider says the link will stop working at the event's `expires_at` (Plaid
    /// `PENDING_EXPIRATION`, `PENDING_DISCONNECT`).
    ExpiryPending,
    /// The user revoked the link at the provider (Plaid `USER_PERMISSION_REVOKED`,
    /// `USER_ACCOUNT_REVOKED`).
    Revoked,
    /// An operation ran on the account.
    Operation {
        /// Which.
        kind: OperationKind,
        /// How it ended.
        outcome: Outcome,
    },
    /// A notice about the user's data (new transactions, detected accounts). Changes nothing.
    Notice(NoticeKind),
    /// A name no adapter knows. Kept; changes nothing.
    Unrecognized {
        /// The name as the provider sent it.
        raw_name: String,
    },
}

/// One account event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    /// What happened.
    pub kind: AccountEventKind,
    /// When, by the provider's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// The link type of a `Linked` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_type: Option<LinkType>,
    /// Transaction ids of an operation (Knot `data.transactions[].id`) or of a
    /// `transactions_updated` notice (Knot `updated[].id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transaction_ids: Vec<String>,
    /// Why an operation failed, or why a link will stop or stopped working, as the provider
    /// words it (Knot `data.reason`, Plaid's `reason` or error code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When an `expiry_pending` link stops working, as the provider said or estimated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl AccountEvent {
    /// An event of `kind` with no time, link type, transactions or reason.
    pub fn new(kind: AccountEventKind) -> Self {
        AccountEvent {
            kind,
            occurred_at: None,
            link_type: None,
            transaction_ids: Vec::new(),
            reason: None,
            expires_at: None,
        }
    }

    /// Sets the provider time.
    pub fn at(mut self, occurred_at: DateTime<Utc>) -> Self {
        self.occurred_at = Some(occurred_at);
        self
    }

    /// The step this event takes in [`ACCOUNT_TABLE`], `None` for notices and unrecognized
    /// names (accepted in every state).
    pub fn step(&self) -> Option<AccountStep> {
        match self.kind {
            AccountEventKind::Linked => Some(AccountStep::Link),
            AccountEventKind::LinkWithdrawn => Some(AccountStep::WithdrawLink),
            AccountEventKind::LoginRequired => Some(AccountStep::RequireLogin),
            AccountEventKind::LoginRepaired => Some(AccountStep::RepairLogin),
            AccountEventKind::ExpiryPending => Some(AccountStep::WarnExpiry),
            AccountEventKind::Revoked => Some(AccountStep::Revoke),
            AccountEventKind::Operation { .. } => Some(AccountStep::RecordOperation),
            AccountEventKind::Notice(_) | AccountEventKind::Unrecognized { .. } => None,
        }
    }

    /// The snake_case name (`linked`, `login_required`, the operation's kind, the notice's
    /// kind, `unrecognized`).
    pub fn name(&self) -> &'static str {
        match self.kind {
            AccountEventKind::Linked => "linked",
            AccountEventKind::LinkWithdrawn => "link_withdrawn",
            AccountEventKind::LoginRequired => "login_required",
            AccountEventKind::LoginRepaired => "login_repaired",
            AccountEventKind::ExpiryPending => "expiry_pending",
            AccountEventKind::Revoked => "revoked",
            AccountEventKind::Operation { kind, .. } => kind.as_str(),
            AccountEventKind::Notice(kind) => kind.as_str(),
            AccountEventKind::Unrecognized { .. } => "unrecognized",
        }
    }
}

/// A step of the account table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStep {
    /// A successful link.
    Link,
    /// The login broke.
    RequireLogin,
    /// A cart sync, checkout or card switch.
    RecordOperation,
    /// A session's link was withdrawn.
    WithdrawLink,
    /// The login works again.
    RepairLogin,
    /// The link will stop working on a date.
    WarnExpiry,
    /// The user revoked the link.
    Revoke,
}

impl AccountStep {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccountStep::Link => "link",
            AccountStep::RequireLogin => "require_login",
            AccountStep::RecordOperation => "record_operation",
            AccountStep::WithdrawLink => "withdraw_link",
            AccountStep::RepairLogin => "repair_login",
            AccountStep::WarnExpiry => "warn_expiry",
            AccountStep::Revoke => "revoke",
        }
    }
}

/// A row of the account table: in any state of `from`, `step` leads to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRule {
    /// The step.
    pub step: AccountStep,
    /// The states in which the row applies.
    pub from: &'static [AccountState],
    /// The state after the step.
    pub to: AccountState,
}

/// Every state in which the link exists (not `absent`).
const LINKED: &[AccountState] = &[
    AccountState::Active,
    AccountState::LoginRequired,
    AccountState::PendingExpiration,
    AccountState::Revoked,
];

/// The account state machine. A step's rows never share a `from` state.
pub const ACCOUNT_TABLE: &[AccountRule] = &[
    // A new link (update mode included) makes any account active and renews its consent.
    AccountRule {
        step: AccountStep::Link,
        from: &[
            AccountState::Absent,
            AccountState::Active,
            AccountState::LoginRequired,
            AccountState::PendingExpiration,
            AccountState::Revoked,
        ],
        to: AccountState::Active,
    },
    AccountRule {
        step: AccountStep::RequireLogin,
        from: &[
            AccountState::Active,
            AccountState::LoginRequired,
            AccountState::PendingExpiration,
        ],
        to: AccountState::LoginRequired,
    },
    AccountRule {
        step: AccountStep::RepairLogin,
        from: &[AccountState::Active, AccountState::LoginRequired],
        to: AccountState::Active,
    },
    // A repaired login does not renew consent: the expiry still stands.
    AccountRule {
        step: AccountStep::RepairLogin,
        from: &[AccountState::PendingExpiration],
        to: AccountState::PendingExpiration,
    },
    AccountRule {
        step: AccountStep::WarnExpiry,
        from: &[AccountState::Active, AccountState::PendingExpiration],
        to: AccountState::PendingExpiration,
    },
    // A broken login is the more urgent state; the expiry is recorded on the account.
    AccountRule {
        step: AccountStep::WarnExpiry,
        from: &[AccountState::LoginRequired],
        to: AccountState::LoginRequired,
    },
    AccountRule {
        step: AccountStep::Revoke,
        from: LINKED,
        to: AccountState::Revoked,
    },
    AccountRule {
        step: AccountStep::RecordOperation,
        from: &[AccountState::Active],
        to: AccountState::Active,
    },
    AccountRule {
        step: AccountStep::RecordOperation,
        from: &[AccountState::LoginRequired],
        to: AccountState::LoginRequired,
    },
    AccountRule {
        step: AccountStep::RecordOperation,
        from: &[AccountState::PendingExpiration],
        to: AccountState::PendingExpiration,
    },
    AccountRule {
        step: AccountStep::WithdrawLink,
        from: LINKED,
        to: AccountState::Absent,
    },
];

/// An account event the current state does not accept (an operation or a login failure for an
/// account that does not exist yet). The engine keeps it, rejected; an earlier link arriving
/// later makes it accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("`{event}` is not accepted for an account in state `{state}`; it accepts {accepts}", accepts = steps(accepts))]
pub struct AccountRejection {
    /// The account's state.
    pub state: AccountState,
    /// The refused event's name.
    pub event: String,
    /// The steps the state accepts.
    pub accepts: Vec<AccountStep>,
}

fn steps(accepts: &[AccountStep]) -> String {
    let names: Vec<&str> = accepts.iter().map(|step| step.as_str()).collect();
    names.join(", ")
}

/// A recorded operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Cart sync, checkout or card switch.
    pub kind: OperationKind,
    /// How it ended.
    pub outcome: Outcome,
    /// When, by the provider's clock.
    pub event_time: Option<DateTime<Utc>>,
    /// Its transaction ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transaction_ids: Vec<String>,
    /// Why it failed, as the provider words it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A linked account folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    state: AccountState,
    version: Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_type: Option<LinkType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    operations: Vec<Operation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_event_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new_accounts_at: Option<DateTime<Utc>>,
}

impl Account {
    /// An account with no event: state `absent`.
    pub fn new() -> Self {
        Account::default()
    }

    /// The account's state.
    pub fn state(&self) -> AccountState {
        self.state
    }

    /// Accepted events.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The link type of the last successful link.
    pub fn link_type(&self) -> Option<LinkType> {
        self.link_type
    }

    /// The most recent operations (at most [`MAX_RECENT_OPERATIONS`]), oldest first.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The latest event time seen.
    pub fn last_event_at(&self) -> Option<DateTime<Utc>> {
        self.last_event_at
    }

    /// When the link stops working, as the provider's last expiry warning said (cleared by a
    /// new link, which renews it).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// When the provider last said the user has accounts the link does not share yet (cleared
    /// by a new link).
    pub fn new_accounts_at(&self) -> Option<DateTime<Utc>> {
        self.new_accounts_at
    }

    /// Whether the current state accepts `event`, and by which row.
    pub fn check(
        &self,
        event: &AccountEvent,
    ) -> Result<Option<&'static AccountRule>, AccountRejection> {
        let Some(step) = event.step() else {
            return Ok(None);
        };
        ACCOUNT_TABLE
            .iter()
            .find(|rule| rule.step == step && rule.from.contains(&self.state))
            .map(Some)
            .ok_or_else(|| AccountRejection {
                state: self.state,
                event: event.name().to_owned(),
                accepts: ACCOUNT_TABLE
                    .iter()
                    .filter(|rule| rule.from.contains(&self.state))
                    .map(|rule| rule.step)
                    .collect(),
            })
    }

    /// Applies `event` in place; on a rejection the account is unchanged.
    pub fn apply_in_place(&mut self, event: &AccountEvent) -> Result<(), AccountRejection> {
        let rule = self.check(event)?;
        self.version = self.version.next();
        if let Some(at) = event.occurred_at {
            self.last_event_at = Some(self.last_event_at.map_or(at, |last| last.max(at)));
        }
        if let AccountEventKind::Operation { kind, outcome } = event.kind {
            self.operations.push(Operation {
                kind,
                outcome,
                event_time: event.occurred_at,
                transaction_ids: event.transaction_ids.clone(),
                reason: event.reason.clone(),
            });
            if self.operations.len() > MAX_RECENT_OPERATIONS {
                self.operations.remove(0);
            }
        }
        match event.kind {
            AccountEventKind::Linked => {
                self.link_type = event.link_type.or(self.link_type);
                self.expires_at = None;
                self.new_accounts_at = None;
            }
            AccountEventKind::ExpiryPending => {
                self.expires_at = event.expires_at.or(self.expires_at);
            }
            AccountEventKind::Notice(NoticeKind::NewAccountsAvailable) => {
                let at = event.occurred_at;
                self.new_accounts_at = at.max(self.new_accounts_at).or(at);
            }
            _ => {}
        }
        if let Some(rule) = rule {
            self.state = rule.to;
        }
        Ok(())
    }

    /// The account after `event`, or why its state refuses it.
    pub fn apply(&self, event: &AccountEvent) -> Result<Account, AccountRejection> {
        let mut next = self.clone();
        next.apply_in_place(event)?;
        Ok(next)
    }
}

const ACCOUNT_STATES: [AccountState; 5] = [
    AccountState::Absent,
    AccountState::Active,
    AccountState::LoginRequired,
    AccountState::PendingExpiration,
    AccountState::Revoked,
];
/// Every operation kind, in the order of their durable codes.
pub(crate) const OPERATION_KINDS: [OperationKind; 3] = [
    OperationKind::CartSync,
    OperationKind::Checkout,
    OperationKind::CardSwitch,
];
/// Every outcome, in the order of their durable codes.
pub(crate) const OUTCOMES: [Outcome; 3] = [Outcome::Succeeded, Outcome::Failed, Outcome::Started];
/// Every notice kind, in the order of their durable codes.
pub(crate) const NOTICE_KINDS: [NoticeKind; 5] = [
    NoticeKind::TransactionsAvailable,
    NoticeKind::TransactionsUpdated,
    NoticeKind::AccountsDetected,
    NoticeKind::AccountsRetrieved,
    NoticeKind::NewAccountsAvailable,
];

impl Compact for Account {
    /// Times are written relative to the last event time.
    fn encode_compact(&self, out: &mut Output) {
        out.opt_time(self.last_event_at, 0);
        let base = self.last_event_at.map_or(0, |at| at.timestamp());
        out.u8(self.state as u8);
        out.varint(self.version.0);
        encode_link_type(out, self.link_type);
        out.varint(self.operations.len() as u64);
        for operation in &self.operations {
            out.u8(operation.kind as u8);
            out.u8(operation.outcome as u8);
            out.opt_time(operation.event_time, base);
            out.varint(operation.transaction_ids.len() as u64);
            for id in &operation.transaction_ids {
                out.str(id);
            }
            out.opt_str(operation.reason.as_deref());
        }
        out.opt_time(self.expires_at, base);
        out.opt_time(self.new_accounts_at, base);
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        let last_event_at = input.opt_time("last event time", 0)?;
        let base = last_event_at.map_or(0, |at| at.timestamp());
        let state = input.choice("account state", &ACCOUNT_STATES)?;
        let version = Version(input.varint("version")?);
        let link_type = decode_link_type(input)?;
        let count = input.count("operations")?;
        let mut operations = Vec::with_capacity(count.min(MAX_RECENT_OPERATIONS + 1));
        for _ in 0..count {
            let kind = input.choice("operation kind", &OPERATION_KINDS)?;
            let outcome = input.choice("operation outcome", &OUTCOMES)?;
            let event_time = input.opt_time("operation time", base)?;
            let ids = input.count("transaction ids")?;
            let transaction_ids = (0..ids)
                .map(|_| input.str("transaction id"))
                .collect::<Result<_, _>>()?;
            let reason = input.opt_str("operation failure reason")?;
            operations.push(Operation {
                kind,
                outcome,
                event_time,
                transaction_ids,
                reason,
            });
        }
        let expires_at = input.opt_time("expiry time", base)?;
        let new_accounts_at = input.opt_time("new accounts time", base)?;
        Ok(Account {
            state,
            version,
            link_type,
            operations,
            last_event_at,
            expires_at,
            new_accounts_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OperationKind, outcome: Outcome) -> AccountEvent {
        AccountEvent::new(AccountEventKind::Operation { kind, outcome })
    }

    #[test]
    fn operations_before_the_account_exists_are_refused() {
        let account = Account::new();
        let rejection = account
            .apply(&op(OperationKind::Checkout, Outcome::Succeeded))
            .unwrap_err();
        assert_eq!(rejection.state, AccountState::Absent);
        assert_eq!(rejection.accepts, vec![AccountStep::Link]);
        assert!(account
            .apply(&AccountEvent::new(AccountEventKind::LoginRequired))
            .is_err());
    }

    #[test]
    fn login_required_then_a_new_link_reactivates() {
        let mut account = Account::new();
        account
            .apply_in_place(&AccountEvent::new(AccountEventKind::Linked))
            .unwrap();
        assert_eq!(account.state(), AccountState::Active);
        account
            .apply_in_place(&AccountEvent::new(AccountEventKind::LoginRequired))
            .unwrap();
        assert_eq!(account.state(), AccountState::LoginRequired);
        account
            .apply_in_place(&op(OperationKind::CartSync, Outcome::Failed))
            .unwrap();
        assert_eq!(account.state(), AccountState::LoginRequired);
        let mut relink = AccountEvent::new(AccountEventKind::Linked);
        relink.link_type = Some(LinkType::Relink);
        account.apply_in_place(&relink).unwrap();
        assert_eq!(account.state(), AccountState::Active);
        assert_eq!(account.link_type(), Some(LinkType::Relink));
    }

    #[test]
    fn operations_are_recorded_and_bounded() {
        let mut account = Account::new();
        account
            .apply_in_place(&AccountEvent::new(AccountEventKind::Linked))
            .unwrap();
        for _ in 0..MAX_RECENT_OPERATIONS + 5 {
            let mut checkout = op(OperationKind::Checkout, Outcome::Succeeded);
            checkout.transaction_ids = vec!["t1".into()];
            account.apply_in_place(&checkout).unwrap();
        }
        assert_eq!(account.operations().len(), MAX_RECENT_OPERATIONS);
        assert_eq!(
            account.operations()[0].transaction_ids,
            vec!["t1".to_owned()]
        );
        assert_eq!(account.version().0, MAX_RECENT_OPERATIONS as u64 + 6);
    }

    #[test]
    fn unrecognized_account_events_are_kept_in_any_state() {
        let account = Account::new();
        let next = account
            .apply(&AccountEvent::new(AccountEventKind::Unrecognized {
                raw_name: "NEW_WEBHOOK".into(),
            }))
            .unwrap();
        assert_eq!(next.state(), AccountState::Absent);
    }

    #[test]
    fn an_account_round_trips_through_its_compact_form() {
        use crate::compact::{from_compact, to_compact};
        use chrono::TimeZone;
        let mut account = Account::new();
        let bytes = to_compact(&account);
        assert_eq!(from_compact::<Account>(&bytes).unwrap(), account);
        let mut linked = AccountEvent::new(AccountEventKind::Linked);
        linked.link_type = Some(LinkType::FailoverLink);
        linked.occurred_at = Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 0).single();
        account.apply_in_place(&linked).unwrap();
        let mut checkout = op(OperationKind::Checkout, Outcome::Failed);
        checkout.occurred_at = Some(Utc.timestamp_opt(1_710_864_000, 250_000_000).unwrap());
        checkout.transaction_ids = vec!["tx_1".into(), "tx_2".into()];
        checkout.reason = Some("card declined".into());
        account.apply_in_place(&checkout).unwrap();
        account
            .apply_in_place(&op(OperationKind::CartSync, Outcome::Succeeded))
            .unwrap();
        let bytes = to_compact(&account);
        assert_eq!(from_compact::<Account>(&bytes).unwrap(), account);
        for cut in 0..bytes.len() {
            assert!(
                from_compact::<Account>(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_step_has_at_most_one_row_per_state() {
        for state in ACCOUNT_STATES {
            for rule in ACCOUNT_TABLE {
                let rows = ACCOUNT_TABLE
                    .iter()
                    .filter(|other| other.step == rule.step && other.from.contains(&state))
                    .count();
                assert!(
                    rows <= 1,
                    "{rows} rows for {} in {state}",
                    rule.step.as_str()
                );
            }
        }
    }

    /// Plaid's item lifecycle: expiry warnings, a broken and repaired login, a revocation, and
    /// a new link that renews everything.
    #[test]
    fn an_item_is_warned_broken_repaired_revoked_and_linked_again() {
        use chrono::TimeZone;
        let at = |day: u32| Utc.with_ymd_and_hms(2026, 1, day, 12, 0, 0).unwrap();
        let event = |kind: AccountEventKind, day: u32| AccountEvent::new(kind).at(at(day));
        let mut account = Account::new();
        assert!(account
            .apply(&event(AccountEventKind::ExpiryPending, 1))
            .is_err());
        account
            .apply_in_place(&event(AccountEventKind::Linked, 1))
            .unwrap();
        let mut warning = event(AccountEventKind::ExpiryPending, 2);
        warning.expires_at = Some(at(30));
        account.apply_in_place(&warning).unwrap();
        assert_eq!(account.state(), AccountState::PendingExpiration);
        assert_eq!(account.expires_at(), Some(at(30)));
        // A repaired login does not renew consent.
        account
            .apply_in_place(&event(AccountEventKind::LoginRepaired, 3))
            .unwrap();
        assert_eq!(account.state(), AccountState::PendingExpiration);
        account
            .apply_in_place(&event(AccountEventKind::LoginRequired, 4))
            .unwrap();
        assert_eq!(account.state(), AccountState::LoginRequired);
        // A warning while the login is broken keeps the more urgent state, and its date.
        let mut later = event(AccountEventKind::ExpiryPending, 5);
        later.expires_at = Some(at(31));
        account.apply_in_place(&later).unwrap();
        assert_eq!(account.state(), AccountState::LoginRequired);
        assert_eq!(account.expires_at(), Some(at(31)));
        account
            .apply_in_place(&event(
                AccountEventKind::Notice(NoticeKind::NewAccountsAvailable),
                6,
            ))
            .unwrap();
        assert_eq!(account.new_accounts_at(), Some(at(6)));
        account
            .apply_in_place(&event(AccountEventKind::Revoked, 7))
            .unwrap();
        assert_eq!(account.state(), AccountState::Revoked);
        let rejection = account
            .apply(&op(OperationKind::Checkout, Outcome::Succeeded))
            .unwrap_err();
        assert_eq!(rejection.state, AccountState::Revoked);
        assert!(account
            .apply(&event(AccountEventKind::LoginRepaired, 8))
            .is_err());
        account
            .apply_in_place(&event(AccountEventKind::Linked, 9))
            .unwrap();
        assert_eq!(account.state(), AccountState::Active);
        assert_eq!(account.expires_at(), None);
        assert_eq!(account.new_accounts_at(), None);
        let compact = crate::compact::to_compact(&account);
        assert_eq!(
            crate::compact::from_compact::<Account>(&compact).unwrap(),
            account
        );
    }
}

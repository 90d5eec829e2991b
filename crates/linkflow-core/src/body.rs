//! What one stored event says, by the kind of stream it belongs to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::account::{AccountEvent, AccountKey};
use crate::event::Event;
use crate::merchant::MerchantStatus;

/// The body of one stored event: a link-session event, a linked-account event, or a merchant
/// availability update. Each kind of stream holds one kind of body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventBody {
    /// An event of a link session.
    Session(Event),
    /// An event of a linked account.
    Account {
        /// The account.
        account: AccountKey,
        /// What happened to it.
        event: AccountEvent,
    },
    /// A merchant availability update.
    Merchant(MerchantStatus),
}

impl EventBody {
    /// The provider time of the event.
    pub fn occurred_at(&self) -> Option<DateTime<Utc>> {
        match self {
            EventBody::Session(event) => event.occurred_at,
            EventBody::Account { event, .. } => event.occurred_at,
            EventBody::Merchant(status) => Some(status.since),
        }
    }

    /// The canonical snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            EventBody::Session(event) => event.kind.name(),
            EventBody::Account { event, .. } => event.name(),
            EventBody::Merchant(_) => "merchant_status",
        }
    }

    /// The session event, if this is one.
    pub fn as_session(&self) -> Option<&Event> {
        match self {
            EventBody::Session(event) => Some(event),
            _ => None,
        }
    }
}

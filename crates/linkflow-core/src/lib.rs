//! `linkflow-core`: the canonical model of a fintech "connect" session, with no I/O, no async
//! and no clock.
//!
//! A link session is an explicit state machine fed by provider-neutral [`Event`]s. Provider
//! adapters (crate `linkflow-providers`) decode payloads into events; the engine (crate
//! `linkflow`) stores them and folds them with [`Session::apply`]. Everything here is pure:
//! time comes in with the event, never from the system clock.
//!
//! Modules:
//! - [`account`]: the linked-account machine ([`Account`], [`ACCOUNT_TABLE`]).
//! - [`merchant`]: merchant availability ([`MerchantStatus`]).
//! - [`body`]: [`EventBody`], what a stored event says, by stream kind.
//! - [`quarantine`]: payloads that name no stream, kept until they can be released into one.
//! - [`phase`]: the ten [`Phase`]s and their forward order.
//! - [`event`]: canonical [`Event`]s, their [`EventKind`]s and attributes.
//! - [`transition`]: the transition table [`SESSION_TABLE`], the one copy of the rules.
//! - [`session`]: the folded [`Session`] value and the pure [`apply`].
//! - [`timeline`]: a stream's events folded in event-time order ([`timeline::fold`],
//!   [`Timeline::append`]): which are accepted, which rejected, whatever the arrival order.
//! - [`funnel`]: funnels and abandonment, computed from session states and a clock passed in.
//! - [`rejection`]: why an event was refused.
//! - [`diagram`]: Mermaid / DOT diagrams and the Markdown rule table, generated from the table.
//! - [`ids`]: identifier newtypes ([`SessionId`], [`Version`], [`Position`], [`Provider`],
//!   [`DedupeKey`]).
//! - `strategy` (feature `proptest`): proptest strategies for legal and illegal walks.
//!
//! ```
//! use linkflow_core::{fold, Event, EventKind, Phase};
//!
//! let events = [
//!     Event::new(EventKind::Opened),
//!     Event::new(EventKind::InstitutionSelected).with_institution("ins_1", Some("Bank")),
//!     Event::new(EventKind::OauthOpened),
//!     Event::new(EventKind::Succeeded),
//! ];
//! let session = fold(&events).unwrap();
//! assert_eq!(session.phase(), Phase::Succeeded);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod account;
pub mod aggregate;
pub mod body;
pub mod compact;
pub mod diagram;
pub mod erasure;
pub mod event;
pub mod funnel;
pub mod ids;
pub mod merchant;
pub mod phase;
pub mod quarantine;
pub mod rejection;
pub mod session;
#[cfg(any(test, feature = "proptest"))]
pub mod strategy;
pub mod timeline;
pub mod transition;

pub use account::{
    Account, AccountEvent, AccountEventKind, AccountKey, AccountRejection, AccountState,
    NoticeKind, OperationKind, Outcome, ACCOUNT_TABLE,
};
pub use body::EventBody;
pub use compact::{from_compact, to_compact, Compact, CompactError};
pub use erasure::Erasure;
pub use event::{Attributes, ErrorInfo, Event, EventClass, EventKind, Institution, LinkType, Step};
pub use ids::{DedupeKey, InvalidSessionId, Position, Provider, SessionId, Version};
pub use merchant::{Availability, MerchantStatus};
pub use phase::Phase;
pub use quarantine::{Origin, QuarantineEntry, Quarantined, Released};
pub use rejection::Rejection;
pub use session::{
    apply, fold, Applied, EventCounts, ExitInfo, Journey, Latest, ReplayError, Session,
};
pub use timeline::{TimedKey, Timeline, RULES_VERSION};
pub use transition::{Guard, Rule, RuleKind, SESSION_TABLE};

//! Notifications: what a backend acts on, derived from the log (`docs/notifications.md`).
//!
//! A notification is a change of a stream's folded state that one stored event made: the
//! fold of the stream's events up to and including it against the fold of those before it
//! (both in event-time order, so a late event that sorts before others is judged by what it
//! changed, as a replay would). It is therefore a function of the log alone: the same on every
//! node and after every restart, with an id made of the event's global position and the
//! notification's index among those the event made (`ntf_<position>_<index>`). Nothing is
//! written for it on ingest; a reader derives notifications as it reads the log in global
//! order, which also keeps each stream's notifications in order.
//!
//! Payloads are thin: ids, phase, provider, institution, statuses and times; never a raw
//! payload. An account's user id is opened when the notification is derived (an erased user's
//! shows `[erased]`), so nothing delivered later has to be chased by an erasure.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use linkflow_core::{
    AccountState, Availability, EventBody, Phase, Position, Provider, SessionId, Version,
};
use linkflow_store::{EventStore, StoredEvent};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::folded::{Append, Folded, StreamFolder};
use crate::subscribe::Subscription;

/// Streams whose folded state a reader of notifications keeps between their events; a stream
/// evicted is folded again from the log at its next event.
pub const MAX_DERIVER_STREAMS: usize = 4_096;

/// Events read per store call when a stream is folded again.
const REFOLD_PAGE: usize = 512;

/// What happened, as the `type` of a Standard Webhooks payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NotificationKind {
    /// The session reached `succeeded`.
    #[serde(rename = "session.succeeded")]
    SessionSucceeded,
    /// The session reached `exited`.
    #[serde(rename = "session.exited")]
    SessionExited,
    /// The engine declared the session abandoned (no event for the inactivity timeout).
    #[serde(rename = "session.abandoned")]
    SessionAbandoned,
    /// An event reached a session declared abandoned.
    #[serde(rename = "session.revived")]
    SessionRevived,
    /// The provider reported that the account's user must log in again.
    #[serde(rename = "account.login_required")]
    AccountLoginRequired,
    /// An account that needed a login, or was expiring or revoked, works again.
    #[serde(rename = "account.reactivated")]
    AccountReactivated,
    /// The provider said the account will stop working on a date.
    #[serde(rename = "account.expiring")]
    AccountExpiring,
    /// The user revoked the account at the provider.
    #[serde(rename = "account.revoked")]
    AccountRevoked,
    /// A merchant's availability changed (up or down).
    #[serde(rename = "merchant.status_changed")]
    MerchantStatusChanged,
}

impl NotificationKind {
    /// Every kind.
    pub const ALL: [NotificationKind; 9] = [
        NotificationKind::SessionSucceeded,
        NotificationKind::SessionExited,
        NotificationKind::SessionAbandoned,
        NotificationKind::SessionRevived,
        NotificationKind::AccountLoginRequired,
        NotificationKind::AccountReactivated,
        NotificationKind::AccountExpiring,
        NotificationKind::AccountRevoked,
        NotificationKind::MerchantStatusChanged,
    ];

    /// The dotted name (`session.succeeded`).
    pub const fn as_str(self) -> &'static str {
        match self {
            NotificationKind::SessionSucceeded => "session.succeeded",
            NotificationKind::SessionExited => "session.exited",
            NotificationKind::SessionAbandoned => "session.abandoned",
            NotificationKind::SessionRevived => "session.revived",
            NotificationKind::AccountLoginRequired => "account.login_required",
            NotificationKind::AccountReactivated => "account.reactivated",
            NotificationKind::AccountExpiring => "account.expiring",
            NotificationKind::AccountRevoked => "account.revoked",
            NotificationKind::MerchantStatusChanged => "merchant.status_changed",
        }
    }

    /// The kind of a dotted name.
    pub fn from_name(name: &str) -> Option<NotificationKind> {
        NotificationKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A notification's place: the global position of the event that made it and its index
/// among that event's notifications. Ordered as they are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NotificationId {
    /// The event's position.
    pub position: Position,
    /// Its index among the event's notifications (0-based).
    pub index: u8,
}

impl NotificationId {
    /// Parses `ntf_<position>_<index>`.
    pub fn parse(text: &str) -> Option<NotificationId> {
        let rest = text.strip_prefix("ntf_")?;
        let (position, index) = rest.split_once('_')?;
        Some(NotificationId {
            position: Position(position.parse().ok()?),
            index: index.parse().ok()?,
        })
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ntf_{}_{}", self.position.0, self.index)
    }
}

/// What a notification says: the fields its kind has (the rest absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationData {
    /// The session (session notifications).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The account's stream id (account notifications), opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The merchant (merchant notifications).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    /// The provider.
    pub provider: Provider,
    /// The session's phase after the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The institution (or merchant) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution_id: Option<String>,
    /// The institution's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution_name: Option<String>,
    /// The provider's exit status (`session.exited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<String>,
    /// The step the user left from (`session.exited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_step: Option<String>,
    /// The code of the session's latest error (`session.exited`, `session.abandoned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// The integrator's user id (account notifications), opened: `[erased]` after an erasure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_user_id: Option<String>,
    /// The account's state after the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_state: Option<AccountState>,
    /// When the account stops working (`account.expiring`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The merchant's availability (`merchant.status_changed`), with its product type and
    /// platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Availability>,
    /// The merchant's product type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_type: Option<String>,
    /// The merchant's platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// When the stream's first event happened (sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_event_at: Option<DateTime<Utc>>,
    /// The stream's last event time (by the provider's clock, else receipt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<DateTime<Utc>>,
    /// When the engine declared the session abandoned (`session.abandoned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned_at: Option<DateTime<Utc>>,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Its id: stable, the same on every node and every read.
    pub id: NotificationId,
    /// What happened.
    pub kind: NotificationKind,
    /// The stream it is about.
    pub stream: SessionId,
    /// When the event that made it was stored.
    pub stored_at: DateTime<Utc>,
    /// What it says.
    pub data: NotificationData,
}

impl Notification {
    /// The Standard Webhooks payload: `{"type", "timestamp", "data"}`, the data with the
    /// notification's id.
    pub fn payload(&self) -> serde_json::Value {
        let mut data = serde_json::to_value(&self.data).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut data {
            map.insert("id".into(), self.id.to_string().into());
        }
        serde_json::json!({
            "type": self.kind.as_str(),
            "timestamp": self.stored_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        })
    }
}

/// Derives notifications from events read in global order, keeping the folded state of the
/// streams it saw last (at most [`MAX_DERIVER_STREAMS`]).
pub(crate) struct Deriver {
    /// Each stream's state with the number it was added under.
    states: HashMap<SessionId, (Folded, u64)>,
    /// Streams in the order they were added, with that number: an entry whose number is not
    /// the stream's now is stale (the stream was dropped and added again since).
    order: VecDeque<(SessionId, u64)>,
    added: u64,
}

impl Deriver {
    pub(crate) fn new() -> Self {
        Deriver {
            states: HashMap::new(),
            order: VecDeque::new(),
            added: 0,
        }
    }

    /// The notifications `event` made, given the log in `store`; `Ok(None)` when it needs the
    /// log and `store` is `None` (its stream's state is not held, or the event sorts before
    /// others). `show` opens sealed text. An event of a stream whose earlier events are
    /// compacted makes none: it changes nothing.
    pub(crate) fn derive(
        &mut self,
        store: Option<&dyn EventStore>,
        event: &StoredEvent,
        show: &dyn Fn(&str) -> String,
    ) -> Result<Option<Vec<Notification>>, EngineError> {
        let body = &event.data.body;
        let first = event.version == Version(1);
        // The state held, advanced in place when this event follows it.
        if let Some(state) = self
            .states
            .get_mut(&event.stream)
            .map(|(state, _)| state)
            .filter(|state| state.version().0 + 1 == event.version.0)
        {
            let before = (!first).then(|| facts(state));
            match state.append(body) {
                Ok(Append::Accepted(_) | Append::Rejected(_)) => {
                    return Ok(Some(changes(before, state, event, show)));
                }
                Ok(Append::Refold) => {
                    // Nothing changed; folded again from the log below.
                    let Some(store) = store else {
                        return Ok(None);
                    };
                    let after = fold_stream(store, &event.stream, event.version)?;
                    return Ok(Some(self.settle(before, after, event, show)));
                }
                Err(_) => return Ok(Some(Vec::new())),
            }
        }
        let mut state = match store {
            _ if first => Folded::initial_for(body),
            None => return Ok(None),
            Some(store) => match fold_stream(store, &event.stream, Version(event.version.0 - 1))? {
                Some(state) => state,
                // Compacted: nothing to derive.
                None => return Ok(Some(Vec::new())),
            },
        };
        let before = (!first).then(|| facts(&state));
        let after = match state.append(body) {
            Ok(Append::Accepted(_) | Append::Rejected(_)) => Some(state),
            Ok(Append::Refold) => match store {
                Some(store) => fold_stream(store, &event.stream, event.version)?,
                None => return Ok(None),
            },
            Err(_) => None,
        };
        Ok(Some(self.settle(before, after, event, show)))
    }

    /// The notifications of `before` to `after` (`None`: nothing to derive), and `after`
    /// held for the stream's next event.
    fn settle(
        &mut self,
        before: Option<Facts>,
        after: Option<Folded>,
        event: &StoredEvent,
        show: &dyn Fn(&str) -> String,
    ) -> Vec<Notification> {
        let Some(after) = after else {
            self.states.remove(&event.stream);
            return Vec::new();
        };
        let notifications = changes(before, &after, event, show);
        self.remember(event.stream.clone(), after);
        notifications
    }

    fn remember(&mut self, stream: SessionId, state: Folded) {
        if let Some((held, _)) = self.states.get_mut(&stream) {
            *held = state;
            return;
        }
        self.added += 1;
        self.states.insert(stream.clone(), (state, self.added));
        self.order.push_back((stream, self.added));
        while self.states.len() > MAX_DERIVER_STREAMS {
            let Some((oldest, added)) = self.order.pop_front() else {
                break;
            };
            if self
                .states
                .get(&oldest)
                .is_some_and(|(_, now)| *now == added)
            {
                self.states.remove(&oldest);
            }
        }
        // Stale entries (streams dropped since) are skipped by eviction; keep them bounded.
        if self.order.len() > 2 * MAX_DERIVER_STREAMS {
            let states = &self.states;
            self.order
                .retain(|(stream, added)| states.get(stream).is_some_and(|(_, now)| now == added));
        }
    }
}

/// The fold of a stream's events up to `version`, read from the log; `None` when its first
/// events are compacted (or it has fewer events).
fn fold_stream(
    store: &dyn EventStore,
    stream: &SessionId,
    version: Version,
) -> Result<Option<Folded>, EngineError> {
    let mut folder = StreamFolder::default();
    let mut after = Version::EMPTY;
    while after < version {
        let limit = REFOLD_PAGE.min((version.0 - after.0) as usize);
        let events = store.read_stream(stream, after, limit)?;
        if events.is_empty() {
            return Ok(None);
        }
        for event in events {
            if event.version.0 != after.0 + 1 {
                // A gap: compacted records, skipped by reads.
                return Ok(None);
            }
            after = event.version;
            if after > version {
                break;
            }
            folder.push(event.data.body);
        }
    }
    Ok(folder.finish().ok().flatten())
}

/// What notifications compare of a stream's state, before and after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Facts {
    Session { phase: Phase, abandoned: bool },
    Account(AccountState),
    Merchant(Option<Availability>),
    Other,
}

fn facts(folded: &Folded) -> Facts {
    match folded {
        Folded::Session(timeline) => Facts::Session {
            phase: timeline.state.phase(),
            abandoned: timeline.state.abandoned_at().is_some(),
        },
        Folded::Account { timeline, .. } => Facts::Account(timeline.state.state()),
        Folded::Merchant { status, .. } => Facts::Merchant(status.as_ref().map(|s| s.status)),
        Folded::Quarantine(_) | Folded::Erasure { .. } => Facts::Other,
    }
}

/// The notifications of the change from `before` (`None`: no event yet) to `after` that
/// `event` made.
fn changes(
    before: Option<Facts>,
    after: &Folded,
    event: &StoredEvent,
    show: &dyn Fn(&str) -> String,
) -> Vec<Notification> {
    let provider = event.data.provider;
    let mut kinds = Vec::new();
    let mut data = NotificationData {
        session_id: None,
        account_id: None,
        merchant_id: None,
        provider,
        phase: None,
        institution_id: None,
        institution_name: None,
        exit_status: None,
        exit_step: None,
        error_code: None,
        external_user_id: None,
        account_state: None,
        expires_at: None,
        status: None,
        product_type: None,
        platform: None,
        first_event_at: None,
        last_event_at: None,
        abandoned_at: None,
    };
    match after {
        Folded::Session(timeline) => {
            let session = &timeline.state;
            let (old_phase, was_abandoned) = match before {
                Some(Facts::Session { phase, abandoned }) => (Some(phase), abandoned),
                _ => (None, false),
            };
            if was_abandoned && session.abandoned_at().is_none() {
                kinds.push(NotificationKind::SessionRevived);
            }
            if !was_abandoned && session.abandoned_at().is_some() {
                kinds.push(NotificationKind::SessionAbandoned);
            }
            let phase = session.phase();
            if old_phase != Some(phase) {
                match phase {
                    Phase::Succeeded => kinds.push(NotificationKind::SessionSucceeded),
                    Phase::Exited => kinds.push(NotificationKind::SessionExited),
                    _ => {}
                }
            }
            data.session_id = Some(event.stream.as_str().to_owned());
            data.phase = Some(phase);
            data.institution_id = session.institution().map(|i| i.id.clone());
            data.institution_name = session.institution().and_then(|i| i.name.clone());
            if let Some(exit) = session.exit() {
                data.exit_status.clone_from(&exit.status);
                data.exit_step.clone_from(&exit.step);
            }
            data.error_code = session
                .last_error()
                .and_then(|error| error.value.code.clone().or(error.value.id.clone()));
            data.first_event_at = session.first_event_at();
            data.last_event_at = session.last_event_at();
            data.abandoned_at = session.abandoned_at();
        }
        Folded::Account { key, timeline } => {
            let account = &timeline.state;
            let old = match before {
                Some(Facts::Account(state)) => state,
                _ => AccountState::Absent,
            };
            let new = account.state();
            if old != new {
                match new {
                    AccountState::LoginRequired => {
                        kinds.push(NotificationKind::AccountLoginRequired)
                    }
                    AccountState::PendingExpiration => {
                        kinds.push(NotificationKind::AccountExpiring)
                    }
                    AccountState::Revoked => kinds.push(NotificationKind::AccountRevoked),
                    AccountState::Active
                        if matches!(
                            old,
                            AccountState::LoginRequired
                                | AccountState::PendingExpiration
                                | AccountState::Revoked
                        ) =>
                    {
                        kinds.push(NotificationKind::AccountReactivated);
                    }
                    _ => {}
                }
            }
            data.account_id = Some(show(event.stream.as_str()));
            data.institution_id = Some(key.institution_id.clone());
            if !key.external_user_id.is_empty() {
                data.external_user_id = Some(show(&key.external_user_id));
            }
            data.account_state = Some(new);
            data.expires_at = account.expires_at();
            data.last_event_at = account.last_event_at();
        }
        Folded::Merchant {
            status: Some(status),
            ..
        } => {
            let old = match before {
                Some(Facts::Merchant(old)) => old,
                _ => None,
            };
            if old != Some(status.status) {
                kinds.push(NotificationKind::MerchantStatusChanged);
            }
            data.merchant_id = Some(status.merchant_id.clone());
            data.institution_name.clone_from(&status.name);
            data.status = Some(status.status);
            data.product_type = Some(status.product_type.clone());
            data.platform = Some(status.platform.clone());
            data.last_event_at = Some(status.since);
        }
        Folded::Merchant { status: None, .. } | Folded::Quarantine(_) | Folded::Erasure { .. } => {}
    }
    kinds
        .into_iter()
        .enumerate()
        .map(|(index, kind)| Notification {
            id: NotificationId {
                position: event.position,
                index: index as u8,
            },
            kind,
            stream: event.stream.clone(),
            stored_at: event.stored_at,
            data: data.clone(),
        })
        .collect()
}

/// What [`Notifications::next_progress`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A notification.
    Notification(Box<Notification>),
    /// An event at this position made none.
    Passed(Position),
}

/// The notification `id` names, derived again from the log (the stream folded up to its
/// event): `None` if there is no such event or it made fewer notifications.
pub(crate) fn notification_at(
    store: &dyn EventStore,
    id: NotificationId,
    show: &dyn Fn(&str) -> String,
) -> Result<Option<Notification>, EngineError> {
    let Some(event) = store
        .read_all(Position(id.position.0.saturating_sub(1)), 1)?
        .into_iter()
        .find(|event| event.position == id.position)
    else {
        return Ok(None);
    };
    let mut deriver = Deriver::new();
    Ok(deriver
        .derive(Some(store), &event, show)?
        .unwrap_or_default()
        .into_iter()
        .find(|notification| notification.id == id))
}

/// Notifications in global order from a position: the log's events read through a
/// [`Subscription`] (catch-up, then live), each turned into the notifications it made.
pub struct Notifications {
    subscription: Subscription,
    store: Arc<dyn EventStore>,
    deriver: Deriver,
    ready: VecDeque<Notification>,
    show: Arc<dyn Fn(&str) -> String + Send + Sync>,
}

impl Notifications {
    pub(crate) fn new(
        subscription: Subscription,
        store: Arc<dyn EventStore>,
        show: Arc<dyn Fn(&str) -> String + Send + Sync>,
    ) -> Self {
        Notifications {
            subscription,
            store,
            deriver: Deriver::new(),
            ready: VecDeque::new(),
            show,
        }
    }

    /// The position of the last event read (its notifications are returned, or ready to be).
    pub fn position(&self) -> Position {
        self.subscription.position()
    }

    /// The next notification, waiting for events to commit if caught up. Fails with
    /// [`EngineError::Closed`] once the engine is gone and every committed event was read.
    pub async fn next(&mut self) -> Result<Notification, EngineError> {
        loop {
            if let Progress::Notification(notification) = self.next_progress().await? {
                return Ok(*notification);
            }
        }
    }

    /// The next notification, or the position of an event read that made none (every
    /// notification up to it was returned): what a consumer that keeps a cursor needs to
    /// move it past events that notify nothing.
    pub async fn next_progress(&mut self) -> Result<Progress, EngineError> {
        loop {
            if let Some(notification) = self.ready.pop_front() {
                return Ok(Progress::Notification(Box::new(notification)));
            }
            let event = self.subscription.next().await?;
            let position = event.position;
            if !matches!(
                event.data.body,
                EventBody::Session(_) | EventBody::Account { .. } | EventBody::Merchant(_)
            ) {
                return Ok(Progress::Passed(position));
            }
            if let Some(derived) = self.deriver.derive(None, &event, &*self.show)? {
                self.ready.extend(derived);
                if self.ready.is_empty() {
                    return Ok(Progress::Passed(position));
                }
                continue;
            }
            // Folding a stream again reads the log: off the async threads.
            let store = Arc::clone(&self.store);
            let show = Arc::clone(&self.show);
            let mut deriver = std::mem::replace(&mut self.deriver, Deriver::new());
            let (deriver, derived) = tokio::task::spawn_blocking(move || {
                let derived = deriver.derive(Some(store.as_ref()), &event, &*show);
                (deriver, derived)
            })
            .await
            .map_err(|_| EngineError::Closed)?;
            self.deriver = deriver;
            self.ready.extend(derived?.unwrap_or_default());
            if self.ready.is_empty() {
                return Ok(Progress::Passed(position));
            }
        }
    }

    /// As a [`futures_util::Stream`], ending once the engine is gone and every committed
    /// event was read (a store error is yielded, then it ends).
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Notification, EngineError>> {
        futures_util::stream::unfold(Some(self), |notifications| async move {
            let mut notifications = notifications?;
            match notifications.next().await {
                Ok(notification) => Some((Ok(notification), Some(notifications))),
                Err(EngineError::Closed) => None,
                Err(error) => Some((Err(error), None)),
            }
        })
    }
}

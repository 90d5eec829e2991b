//! linkflow's envelope around client SDK callbacks (Benji's, Knot's): the frontend forwards
//! each callback as one object naming the callback, its arguments, and optionally the session,
//! an id stable across retries of the forward, and the time it fired. What the envelope says
//! is read here; what each SDK's arguments mean is read by its adapter.

use chrono::{DateTime, Utc};
use linkflow_core::{DedupeKey, Event, EventKind, SessionId};
use uuid::Uuid;

use crate::json::{Notes, Obj};
use crate::{dedupe_key, event_time, session_for, Payload, Routed, Target};

/// The envelope of one forwarded callback, read.
pub(crate) struct Envelope<'a> {
    pub root: Obj<'a>,
    /// `onSuccess`, `onExit`, `onError`, `onEvent`, or what else the forward says.
    pub callback: String,
    /// The event name of an `onEvent`, else the callback.
    pub name: String,
    pub session: SessionId,
    /// The time the frontend stamped, if any.
    pub stamped: Option<DateTime<Utc>>,
}

/// How an SDK spells what the envelope reads.
pub(crate) struct Spelling {
    /// The keys of the session id, first found wins.
    pub session_keys: &'static [&'static str],
    /// The keys whose presence makes a forward without `callback` an `onError`.
    pub error_keys: &'static [&'static str],
}

impl<'a> Envelope<'a> {
    /// Reads the envelope of `payload`; a payload that is not an object, or names no session
    /// (and the caller supplied none), is routed nowhere, with the reason.
    pub fn read(
        payload: Payload<'a>,
        spelling: &Spelling,
        notes: &mut Notes,
    ) -> Result<Envelope<'a>, Box<Routed>> {
        let Some(root) = Obj::root(payload.value) else {
            return Err(Box::new(payload.nowhere(
                "the payload is not a JSON object, so it names no session",
                None,
            )));
        };
        let callback = callback_of(&root, spelling, notes);
        let name = match callback.as_str() {
            "onEvent" => root.text("event", notes).unwrap_or_else(|| {
                notes.warn("$.event", "missing: the event is kept as unrecognized");
                String::new()
            }),
            other => other.to_owned(),
        };
        let found = root
            .first_of(spelling.session_keys)
            .and_then(|(key, _)| Some((root.path_of(key), root.text(key, notes)?)));
        let session = session_for(found, payload.context, notes)
            .map_err(|reason| Box::new(payload.nowhere(reason, Some(&name))))?;
        let stamped = root
            .first_of(&["timestamp"])
            .and_then(|(key, value)| event_time(&root.path_of(key), value, notes));
        Ok(Envelope {
            root,
            callback,
            name,
            session,
            stamped,
        })
    }

    /// The canonical kind: the three fixed callbacks, an `onEvent` name from `names`, anything
    /// else unrecognized.
    pub fn kind(&self, names: &[(&str, EventKind)]) -> EventKind {
        match self.callback.as_str() {
            "onSuccess" => EventKind::Succeeded,
            "onExit" => EventKind::Exited,
            "onError" => EventKind::Error,
            "onEvent" => names
                .iter()
                .find(|(known, _)| *known == self.name)
                .map(|(_, kind)| kind.clone())
                .unwrap_or_else(|| EventKind::Unrecognized {
                    raw_name: self.name.clone(),
                }),
            _ => EventKind::Unrecognized {
                raw_name: self.name.clone(),
            },
        }
    }

    /// An event of `kind` at the stamped time; without one (the callbacks carry none) it has
    /// no provider time, only its receive time (which never orders it).
    pub fn event(&self, kind: EventKind, payload: &Payload<'_>) -> Event {
        Event::new(kind).at_or_received(self.stamped, payload.context.received_at)
    }

    /// The event for the session, with its dedupe key: from `event_id` when the forward has one
    /// (`tag`, the session, the id), else from the content (the provider's recipe).
    pub fn route(
        self,
        event: Event,
        tag: &[u8],
        payload: Payload<'_>,
        notes: &mut Notes,
    ) -> Routed {
        let event_id = self.root.text("event_id", notes);
        let dedupe_key = match &event_id {
            Some(id) => DedupeKey::derive(&[tag, self.session.as_str().as_bytes(), id.as_bytes()]),
            None => dedupe_key(
                payload.feed.provider(),
                self.session.as_str(),
                &self.name,
                self.stamped,
                payload.value,
            ),
        };
        Routed::Event {
            target: Target::Session {
                session: self.session,
                event,
            },
            raw_name: self.name,
            event_id: event_id.and_then(|id| Uuid::parse_str(&id).ok()),
            dedupe_key,
        }
    }
}

/// The envelope's callback. A forward without one is read by what it carries: an `event` is
/// an `onEvent`, an error field an `onError` (both noted); otherwise it is unrecognized.
fn callback_of(root: &Obj<'_>, spelling: &Spelling, notes: &mut Notes) -> String {
    if let Some(callback) = root.text("callback", notes) {
        return callback;
    }
    let inferred = if root.value("event").is_some() {
        "onEvent"
    } else if root.first_of(spelling.error_keys).is_some() {
        "onError"
    } else {
        notes.warn("$.callback", "missing: the event is kept as unrecognized");
        return String::new();
    };
    notes.warn(
        "$.callback",
        format!("missing: read as `{inferred}` from the fields present"),
    );
    inferred.to_owned()
}

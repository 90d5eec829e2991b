//! Why the state machine refused an event.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{EventKind, Step};
use crate::phase::Phase;

/// An event the session's phase, where the fold places it, does not accept. The session is
/// unchanged; the engine keeps the event, rejected with this reason (a late event may make it
/// legal).
///
/// Every variant names the phase, the event, and what the phase accepts, so a person reading a
/// rejected event knows what was expected instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// No row of the transition table takes this step in this phase.
    #[error("`{event}` is not accepted in phase `{phase}`; {accepts}", accepts = Accepts(accepts))]
    NotAccepted {
        /// The session's phase.
        phase: Phase,
        /// The refused event.
        event: EventKind,
        /// The steps the phase accepts.
        accepts: Vec<Step>,
    },
    /// The step is accepted only as the session's first phase event (a second `created`).
    #[error("`{event}` is accepted only as the session's first phase event, and phase `{phase}` already has one; {accepts}", accepts = Accepts(accepts))]
    NotFirstPhaseEvent {
        /// The session's phase.
        phase: Phase,
        /// The refused event.
        event: EventKind,
        /// The steps the phase accepts.
        accepts: Vec<Step>,
    },
}

impl Rejection {
    /// The phase that refused the event.
    pub fn phase(&self) -> Phase {
        match self {
            Rejection::NotAccepted { phase, .. } | Rejection::NotFirstPhaseEvent { phase, .. } => {
                *phase
            }
        }
    }

    /// The refused event's kind.
    pub fn event(&self) -> &EventKind {
        match self {
            Rejection::NotAccepted { event, .. } | Rejection::NotFirstPhaseEvent { event, .. } => {
                event
            }
        }
    }

    /// The steps the phase accepts (guards aside).
    pub fn accepts(&self) -> &[Step] {
        match self {
            Rejection::NotAccepted { accepts, .. }
            | Rejection::NotFirstPhaseEvent { accepts, .. } => accepts,
        }
    }
}

/// Renders accepted steps as the event names a person would look for.
struct Accepts<'a>(&'a [Step]);

impl fmt::Display for Accepts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("it accepts ")?;
        for step in self.0 {
            for kind in step.event_kinds() {
                write!(f, "{}, ", kind.name())?;
            }
        }
        f.write_str("and any telemetry")
    }
}

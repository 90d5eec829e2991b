//! The session value folded from events, and the pure `apply` that enforces the table.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::compact::{Compact, CompactError, Input, Output};
use crate::event::{ErrorInfo, Event, EventClass, Institution, LinkType};
use crate::ids::Version;
use crate::phase::Phase;
use crate::rejection::Rejection;
use crate::transition::{find_rule, steps_accepted_in, Guard, RuleKind};

/// What is known about one link session after folding its accepted events.
///
/// Build it with [`Session::new`] and [`Session::apply`] (or [`fold`]); it is never edited any
/// other way, so it always equals the fold of its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    phase: Phase,
    version: Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_type: Option<LinkType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    institution: Option<Institution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    item_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current_screen: Option<Latest<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<Latest<ErrorInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit: Option<ExitInfo>,
    #[serde(default)]
    counts: EventCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_event_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_event_at: Option<DateTime<Utc>>,
    #[serde(default)]
    journey: Journey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    abandoned_at: Option<DateTime<Utc>>,
}

/// Most error codes kept per session for the funnel's per-phase error breakdown; the log keeps
/// them all.
pub const MAX_JOURNEY_ERRORS: usize = 8;

/// What the funnel needs to know about the path a session took: the furthest phase it reached
/// on the main path, the phases it visited and when it first entered each, and the errors by
/// the phase they happened in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journey {
    /// The furthest phase reached, `exited` aside (a session that succeeded after an exit
    /// reached `succeeded`).
    pub furthest: Phase,
    /// Bit `rank` set for every phase entered.
    pub visited: u16,
    /// When each phase (by rank) was first entered, by event time.
    pub entered_at: [Option<DateTime<Utc>>; 10],
    /// (phase, error code) of the first errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<(Phase, String)>,
}

impl Journey {
    /// Whether the session ever entered `phase`.
    pub fn visited(&self, phase: Phase) -> bool {
        self.visited & (1 << phase.rank()) != 0
    }

    fn enter(&mut self, phase: Phase, at: Option<DateTime<Utc>>) {
        if !self.visited(phase) {
            self.visited |= 1 << phase.rank();
            self.entered_at[usize::from(phase.rank())] = at;
        }
        if phase != Phase::Exited && phase.rank() > self.furthest.rank() {
            self.furthest = phase;
        }
    }
}

/// A "latest" attribute: the value of the event with the latest event time, whatever the
/// arrival order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest<T> {
    /// The value.
    pub value: T,
    /// The event time it came with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// How the user left: the phase they left from and the provider's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The phase the session was in when the exit came.
    pub phase: Phase,
    /// The provider's exit status, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The provider's name for the step the user left from, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The exit's event time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// How many accepted events of each class the session has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Phase events.
    pub phase: u32,
    /// Telemetry events (errors included).
    pub telemetry: u32,
    /// Events with names no adapter knows.
    pub unrecognized: u32,
    /// `error` events (also counted as telemetry).
    pub errors: u32,
}

/// What an accepted event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The phase before the event.
    pub phase_before: Phase,
    /// The phase after the event (equal for telemetry and unrecognized events).
    pub phase_after: Phase,
    /// The table row that took the event; `None` for telemetry and unrecognized events.
    pub rule: Option<RuleKind>,
}

/// A stored sequence that the table refuses at `index`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index} of the sequence was rejected: {rejection}")]
pub struct ReplayError {
    /// The 0-based index of the refused event.
    pub index: usize,
    /// Why it was refused.
    pub rejection: Rejection,
}

impl Session {
    /// A session with no event: phase `created`, version 0.
    pub fn new() -> Self {
        Session::default()
    }

    /// The session's phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The number of accepted events.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Link, relink or failover link, once an event said so.
    pub fn link_type(&self) -> Option<LinkType> {
        self.link_type
    }

    /// The institution the user is linking, once known.
    pub fn institution(&self) -> Option<&Institution> {
        self.institution.as_ref()
    }

    /// The integrator's id for the end user, once an event named it.
    pub fn external_user_id(&self) -> Option<&str> {
        self.external_user_id.as_deref()
    }

    /// The provider's id of the linked account the session created (Plaid's `item_id`), once
    /// an event named it.
    pub fn item_id(&self) -> Option<&str> {
        self.item_id.as_deref()
    }

    /// The screen of the event with the latest event time that named one.
    pub fn current_screen(&self) -> Option<&Latest<String>> {
        self.current_screen.as_ref()
    }

    /// The error of the `error` event with the latest event time.
    pub fn last_error(&self) -> Option<&Latest<ErrorInfo>> {
        self.last_error.as_ref()
    }

    /// How the user left, once an exit was accepted (kept when a late success wins).
    pub fn exit(&self) -> Option<&ExitInfo> {
        self.exit.as_ref()
    }

    /// Accepted events per class.
    pub fn counts(&self) -> EventCounts {
        self.counts
    }

    /// The earliest event time seen.
    pub fn first_event_at(&self) -> Option<DateTime<Utc>> {
        self.first_event_at
    }

    /// The latest event time seen.
    pub fn last_event_at(&self) -> Option<DateTime<Utc>> {
        self.last_event_at
    }

    /// When the engine declared the session abandoned (the receive time of its effective
    /// `abandoned` marker), while no accepted event followed it; `None` otherwise.
    pub fn abandoned_at(&self) -> Option<DateTime<Utc>> {
        self.abandoned_at
    }

    /// The path the session took, for funnels.
    pub fn journey(&self) -> &Journey {
        &self.journey
    }

    /// The session after `event`, or why the current phase refuses it. Pure: `self` is not
    /// touched either way.
    pub fn apply(&self, event: &Event) -> Result<Session, Rejection> {
        let mut next = self.clone();
        next.apply_in_place(event)?;
        Ok(next)
    }

    /// Like [`Session::apply`], but updates `self` in place (no clone on the hot path). On a
    /// rejection `self` is left exactly as it was: every check runs before any change.
    pub fn apply_in_place(&mut self, event: &Event) -> Result<Applied, Rejection> {
        let phase_before = self.phase;
        let rule = self.check(event)?;
        if event.kind.class() == EventClass::Marker {
            // Not activity: no time, count or attribute of the session changes. It takes
            // effect only if nothing happened since the last event time the timer saw.
            self.version = self.version.next();
            if !self.phase.is_terminal()
                && self.last_event_at.is_some()
                && self.last_event_at == event.occurred_at
            {
                self.abandoned_at = event.received_at.or(event.occurred_at);
            }
            return Ok(Applied {
                phase_before,
                phase_after: self.phase,
                rule: None,
            });
        }
        if self.version == Version::EMPTY {
            self.journey.enter(Phase::Created, event.time());
        }
        self.version = self.version.next();
        // Any accepted event is activity: it revives an abandoned session.
        self.abandoned_at = None;
        self.record_times(event.time());
        // A success or exit reported again names what the first one did, or less: it only
        // fills gaps.
        let confirms = rule.is_some_and(|rule| {
            matches!(
                rule.kind,
                crate::RuleKind::SuccessConfirmed | crate::RuleKind::ExitConfirmed
            )
        });
        let moves = rule.is_some() && !confirms;
        self.record_attributes(event, moves);
        match event.kind.class() {
            EventClass::Phase(_) => self.counts.phase += 1,
            EventClass::Telemetry => self.counts.telemetry += 1,
            EventClass::Unrecognized => self.counts.unrecognized += 1,
            EventClass::Marker => {}
        }
        if let Some(rule) = rule {
            match (&mut self.exit, rule.kind) {
                (Some(exit), crate::RuleKind::ExitConfirmed) => {
                    let attributes = &event.attributes;
                    exit.status = exit.status.take().or(attributes.exit_status.clone());
                    exit.step = exit.step.take().or(attributes.exit_step.clone());
                }
                _ if event.kind.step() == Some(crate::event::Step::Exit) => {
                    self.exit = Some(ExitInfo {
                        phase: phase_before,
                        status: event.attributes.exit_status.clone(),
                        step: event.attributes.exit_step.clone(),
                        at: event.time(),
                    });
                }
                _ => {}
            }
            self.phase = rule.to;
            self.journey.enter(rule.to, event.time());
        }
        Ok(Applied {
            phase_before,
            phase_after: self.phase,
            rule: rule.map(|rule| rule.kind),
        })
    }

    /// Whether the current phase would accept `event`, and by which row.
    pub fn check(&self, event: &Event) -> Result<Option<&'static crate::Rule>, Rejection> {
        let EventClass::Phase(step) = event.kind.class() else {
            return Ok(None);
        };
        let reject_accepts = || steps_accepted_in(self.phase);
        let Some(rule) = find_rule(self.phase, step) else {
            return Err(Rejection::NotAccepted {
                phase: self.phase,
                event: event.kind.clone(),
                accepts: reject_accepts(),
            });
        };
        if rule.guard == Guard::FirstPhaseEvent && self.counts.phase > 0 {
            return Err(Rejection::NotFirstPhaseEvent {
                phase: self.phase,
                event: event.kind.clone(),
                accepts: reject_accepts(),
            });
        }
        Ok(Some(rule))
    }

    /// Replays `events` onto this session; fails at the first refused event.
    pub fn replay<'a>(
        mut self,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Session, ReplayError> {
        for (index, event) in events.into_iter().enumerate() {
            self.apply_in_place(event)
                .map_err(|rejection| ReplayError { index, rejection })?;
        }
        Ok(self)
    }

    fn record_times(&mut self, at: Option<DateTime<Utc>>) {
        let Some(at) = at else { return };
        self.first_event_at = Some(self.first_event_at.map_or(at, |first| first.min(at)));
        self.last_event_at = Some(self.last_event_at.map_or(at, |last| last.max(at)));
    }

    fn record_attributes(&mut self, event: &Event, is_phase_event: bool) {
        let attributes = &event.attributes;
        if let Some(link_type) = attributes.link_type {
            self.link_type = Some(link_type);
        }
        if let Some(user) = &attributes.external_user_id {
            self.external_user_id = Some(user.clone());
        }
        if let Some(item) = &attributes.item_id {
            self.item_id = Some(item.clone());
        }
        // A phase event is ordered by the machine, so the institution it names is the current
        // one (a reselection replaces it). Telemetry may arrive late: it only fills a gap.
        if let Some(institution) = &attributes.institution {
            if is_phase_event || self.institution.is_none() {
                self.institution = Some(institution.clone());
            }
        }
        if let Some(screen) = &attributes.screen_name {
            keep_latest(&mut self.current_screen, screen.clone(), event.occurred_at);
        }
        if event.kind == crate::event::EventKind::Error {
            self.counts.errors += 1;
            let error = attributes.error.clone().unwrap_or_default();
            if self.journey.errors.len() < MAX_JOURNEY_ERRORS {
                let code = error.code.clone().or_else(|| error.id.clone());
                self.journey
                    .errors
                    .push((self.phase, code.unwrap_or_else(|| "unknown".into())));
            }
            keep_latest(&mut self.last_error, error, event.occurred_at);
        }
    }
}

/// Replaces `slot` unless it holds a value with a later event time. Events without a time are
/// ordered by arrival: there is nothing better to order them by.
fn keep_latest<T>(slot: &mut Option<Latest<T>>, value: T, at: Option<DateTime<Utc>>) {
    let newer = match (slot.as_ref().and_then(|latest| latest.at), at) {
        (Some(current), Some(candidate)) => candidate >= current,
        _ => true,
    };
    if newer {
        *slot = Some(Latest { value, at });
    }
}

/// Folds `events` from a new session; fails at the first refused event.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<Session, ReplayError> {
    Session::new().replay(events)
}

/// The pure transition function: the session after `event`, or why it is refused.
pub fn apply(session: &Session, event: &Event) -> Result<Session, Rejection> {
    session.apply(event)
}

const LINK_TYPES: [LinkType; 3] = [LinkType::Link, LinkType::Relink, LinkType::FailoverLink];

/// An optional link type as one byte: 0 for none, else 1 + its code.
pub(crate) fn encode_link_type(out: &mut Output, link_type: Option<LinkType>) {
    out.u8(link_type.map_or(0, |link_type| link_type as u8 + 1));
}

pub(crate) fn decode_link_type(input: &mut Input<'_>) -> Result<Option<LinkType>, CompactError> {
    match input.u8("link type")? {
        0 => Ok(None),
        code => LINK_TYPES
            .get(usize::from(code - 1))
            .copied()
            .map(Some)
            .ok_or_else(|| input.error("link type", format!("code {code}, expected 0 to 3"))),
    }
}

impl Compact for Session {
    /// Times are written relative to the first event time, so most take a byte or two; the
    /// journey writes only the entry times of the phases it visited.
    fn encode_compact(&self, out: &mut Output) {
        out.opt_time(self.first_event_at, 0);
        let base = self.first_event_at.map_or(0, |at| at.timestamp());
        out.u8(self.phase.rank());
        out.varint(self.version.0);
        encode_link_type(out, self.link_type);
        match &self.institution {
            None => out.u8(0),
            Some(institution) => {
                out.u8(1);
                out.str(&institution.id);
                out.opt_str(institution.name.as_deref());
            }
        }
        out.opt_str(self.external_user_id.as_deref());
        out.opt_str(self.item_id.as_deref());
        match &self.current_screen {
            None => out.u8(0),
            Some(screen) => {
                out.u8(1);
                out.str(&screen.value);
                out.opt_time(screen.at, base);
            }
        }
        match &self.last_error {
            None => out.u8(0),
            Some(error) => {
                out.u8(1);
                out.opt_str(error.value.id.as_deref());
                out.opt_str(error.value.code.as_deref());
                out.opt_str(error.value.message.as_deref());
                out.opt_str(error.value.request_id.as_deref());
                out.opt_time(error.at, base);
            }
        }
        match &self.exit {
            None => out.u8(0),
            Some(exit) => {
                out.u8(1);
                out.u8(exit.phase.rank());
                out.opt_str(exit.status.as_deref());
                out.opt_str(exit.step.as_deref());
                out.opt_time(exit.at, base);
            }
        }
        let counts = self.counts;
        for count in [
            counts.phase,
            counts.telemetry,
            counts.unrecognized,
            counts.errors,
        ] {
            out.varint(u64::from(count));
        }
        out.opt_time(self.last_event_at, base);
        let journey = &self.journey;
        out.u8(journey.furthest.rank());
        out.varint(u64::from(journey.visited));
        let timed = journey
            .entered_at
            .iter()
            .enumerate()
            .filter(|(_, at)| at.is_some())
            .fold(0u64, |mask, (rank, _)| mask | 1 << rank);
        out.varint(timed);
        for at in journey.entered_at.iter().flatten() {
            out.time(*at, base);
        }
        out.varint(journey.errors.len() as u64);
        for (phase, code) in &journey.errors {
            out.u8(phase.rank());
            out.str(code);
        }
        out.opt_time(self.abandoned_at, base);
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        let first_event_at = input.opt_time("first event time", 0)?;
        let base = first_event_at.map_or(0, |at| at.timestamp());
        let phase = input.choice("phase", &Phase::ALL)?;
        let version = Version(input.varint("version")?);
        let link_type = decode_link_type(input)?;
        let institution = if input.present("institution")? {
            Some(Institution {
                id: input.str("institution id")?,
                name: input.opt_str("institution name")?,
            })
        } else {
            None
        };
        let external_user_id = input.opt_str("external user id")?;
        let item_id = input.opt_str("item id")?;
        let current_screen = if input.present("screen")? {
            Some(Latest {
                value: input.str("screen")?,
                at: input.opt_time("screen time", base)?,
            })
        } else {
            None
        };
        let last_error = if input.present("last error")? {
            Some(Latest {
                value: ErrorInfo {
                    id: input.opt_str("error id")?,
                    code: input.opt_str("error code")?,
                    message: input.opt_str("error message")?,
                    request_id: input.opt_str("error request id")?,
                },
                at: input.opt_time("error time", base)?,
            })
        } else {
            None
        };
        let exit = if input.present("exit")? {
            Some(ExitInfo {
                phase: input.choice("exit phase", &Phase::ALL)?,
                status: input.opt_str("exit status")?,
                step: input.opt_str("exit step")?,
                at: input.opt_time("exit time", base)?,
            })
        } else {
            None
        };
        let counts = EventCounts {
            phase: input.u32("phase event count")?,
            telemetry: input.u32("telemetry event count")?,
            unrecognized: input.u32("unrecognized event count")?,
            errors: input.u32("error event count")?,
        };
        let last_event_at = input.opt_time("last event time", base)?;
        let furthest = input.choice("furthest phase", &Phase::ALL)?;
        let visited = u16::try_from(input.varint("visited phases")?)
            .map_err(|_| input.error("visited phases", "more than 16 bits"))?;
        let timed = input.varint("timed phases")?;
        if timed >> Phase::ALL.len() != 0 {
            return Err(input.error("timed phases", format!("bits {timed:#x} beyond the phases")));
        }
        let mut entered_at = [None; 10];
        for (rank, slot) in entered_at.iter_mut().enumerate() {
            if timed & 1 << rank != 0 {
                *slot = Some(input.time("phase entry time", base)?);
            }
        }
        let error_count = input.count("journey errors")?;
        let mut errors = Vec::with_capacity(error_count.min(MAX_JOURNEY_ERRORS));
        for _ in 0..error_count {
            errors.push((
                input.choice("journey error phase", &Phase::ALL)?,
                input.str("journey error code")?,
            ));
        }
        let abandoned_at = input.opt_time("abandoned time", base)?;
        Ok(Session {
            phase,
            version,
            link_type,
            institution,
            external_user_id,
            item_id,
            current_screen,
            last_error,
            exit,
            counts,
            first_event_at,
            last_event_at,
            journey: Journey {
                furthest,
                visited,
                entered_at,
                errors,
            },
            abandoned_at,
        })
    }
}

#[cfg(test)]
mod compact_tests {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    use super::*;
    use crate::compact::{from_compact, to_compact};
    use crate::strategy::legal_walk;

    proptest! {
        #[test]
        fn every_folded_session_round_trips_through_its_compact_form(walk in legal_walk(40)) {
            let session = fold(&walk.events).unwrap();
            let bytes = to_compact(&session);
            prop_assert_eq!(from_compact::<Session>(&bytes).unwrap(), session.clone());
            // Every proper prefix is an error, never a panic or a different session.
            for cut in 0..bytes.len() {
                prop_assert!(from_compact::<Session>(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn a_typical_session_is_a_few_times_smaller_than_its_json() {
        let walk = legal_walk(12)
            .new_tree(&mut proptest::test_runner::TestRunner::deterministic())
            .unwrap()
            .current();
        let session = fold(&walk.events).unwrap();
        let compact = to_compact(&session).len();
        let json = serde_json::to_vec(&session).unwrap().len();
        assert!(compact * 2 < json, "compact {compact} bytes, JSON {json}");
    }

    #[test]
    fn a_bad_phase_code_is_named() {
        let mut bytes = to_compact(&Session::new());
        bytes[1] = 42;
        let error = from_compact::<Session>(&bytes).unwrap_err();
        assert_eq!(error.what, "phase");
        assert_eq!(error.at, 2);
    }
}

#[cfg(test)]
mod abandonment_tests {
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    use super::*;
    use crate::event::EventKind;
    use crate::timeline::{self, Timeline};

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + minute * 60, 0).expect("in range")
    }

    fn event(kind: EventKind, minute: i64) -> Event {
        Event::new(kind).at(at(minute))
    }

    /// The engine's marker: the last event time it saw, and when it declared it.
    fn marker(since: i64, declared: i64) -> Event {
        let mut marker = Event::new(EventKind::Abandoned).at(at(since));
        marker.received_at = Some(at(declared));
        marker
    }

    fn folded(events: &[Event]) -> Session {
        timeline::fold::<Session, _>(events).timeline.state
    }

    #[test]
    fn a_marker_declares_an_open_session_abandoned_without_counting_as_activity() {
        let events = [
            event(EventKind::Opened, 0),
            event(EventKind::InstitutionSelected, 1),
            marker(1, 31),
        ];
        let session = folded(&events);
        assert_eq!(session.abandoned_at(), Some(at(31)));
        assert_eq!(session.last_event_at(), Some(at(1)));
        assert_eq!(session.counts().phase, 2);
        assert_eq!(session.version(), Version(3));
        assert_eq!(session.phase(), Phase::InstitutionSelected);
    }

    #[test]
    fn an_accepted_event_after_the_marker_revives_the_session() {
        let events = [
            event(EventKind::Opened, 0),
            marker(0, 30),
            event(EventKind::InstitutionSelected, 40),
        ];
        assert_eq!(folded(&events).abandoned_at(), None);
        // A rejected one is not activity: the session stays abandoned.
        let events = [
            event(EventKind::Opened, 0),
            marker(0, 30),
            event(EventKind::Opened, 40),
        ];
        let session = folded(&events);
        assert_eq!(session.abandoned_at(), Some(at(30)));
    }

    #[test]
    fn a_marker_is_void_when_an_event_came_after_the_time_it_saw_or_the_session_ended() {
        // The timer saw minute 0, but an event of minute 5 reached the store first.
        let events = [
            event(EventKind::Opened, 0),
            event(EventKind::InstitutionSelected, 5),
            marker(0, 30),
        ];
        assert_eq!(folded(&events).abandoned_at(), None);
        let events = [
            event(EventKind::Opened, 0),
            event(EventKind::Exited, 1),
            marker(1, 31),
        ];
        assert_eq!(folded(&events).abandoned_at(), None);
        // An event of the same instant as the time the marker saw sorts before the marker.
        let events = [
            event(EventKind::Opened, 0),
            marker(0, 30),
            event(EventKind::ScreenChanged, 0),
        ];
        assert_eq!(folded(&events).abandoned_at(), Some(at(30)));
    }

    #[test]
    fn appending_a_marker_in_place_agrees_with_folding() {
        let events = [
            event(EventKind::Opened, 0),
            event(EventKind::InstitutionSelected, 1),
            marker(1, 31),
            event(EventKind::CredentialsSubmitted, 40),
            marker(40, 70),
        ];
        let mut timeline = Timeline::<Session>::default();
        for (count, event) in events.iter().enumerate() {
            if timeline.append(event) == timeline::Appended::Refold {
                timeline = timeline::fold::<Session, _>(&events[..=count]).timeline;
            }
            assert_eq!(
                timeline,
                timeline::fold::<Session, _>(&events[..=count]).timeline,
                "{count}"
            );
        }
        assert_eq!(timeline.state.abandoned_at(), Some(at(70)));
    }

    proptest! {
        /// Principle 2 with the marker among the events: every delivery order gives the same
        /// session.
        #[test]
        fn the_same_events_with_a_marker_give_the_same_session_in_any_order(
            order in Just((0..6).collect::<Vec<usize>>()).prop_shuffle(),
            revived in any::<bool>(),
        ) {
            let mut events = vec![
                event(EventKind::Opened, 0),
                event(EventKind::InstitutionSelected, 1),
                event(EventKind::ScreenChanged, 2),
                event(EventKind::CredentialsSubmitted, 3),
                marker(3, 33),
                event(EventKind::Error, 3),
            ];
            if revived {
                events[2] = event(EventKind::ScreenChanged, 50);
            }
            let in_order = folded(&events);
            let shuffled: Vec<Event> = order.iter().map(|&index| events[index].clone()).collect();
            let session = folded(&shuffled);
            prop_assert_eq!(session.abandoned_at(), in_order.abandoned_at());
            prop_assert_eq!(session.phase(), in_order.phase());
            prop_assert_eq!(session.last_event_at(), in_order.last_event_at());
            prop_assert_eq!(in_order.abandoned_at().is_none(), revived);
        }
    }
}

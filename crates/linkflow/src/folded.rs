//! The folded state of one stream, whatever its kind: a link session, a linked account, or a
//! merchant's availability.

use linkflow_core::compact::{Compact, CompactError, Input, Output};
use linkflow_core::quarantine::{apply_quarantine, QuarantineEvent};
use linkflow_core::timeline::{self, Appended, Timeline};
use linkflow_core::{
    Account, AccountEvent, AccountKey, Applied, Erasure, Event, EventBody, MerchantStatus, Phase,
    Provider, QuarantineEntry, Session, Version, RULES_VERSION,
};
use serde::{Deserialize, Serialize};

/// A stream's state. A stream holds one kind of body; its first event decides the kind.
///
/// Sessions and linked accounts are timelines: every event they received, folded in
/// event-time order (`linkflow_core::timeline`), each accepted or rejected. Merchant and
/// quarantine streams are folded in arrival order and accept every event they store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Folded {
    /// A link session (boxed: it is several times larger than the other states).
    Session(Box<Timeline<Session>>),
    /// A linked account.
    Account {
        /// Which account.
        key: AccountKey,
        /// Its events folded.
        timeline: Timeline<Account>,
    },
    /// A merchant's availability for one product type, platform and SDK.
    Merchant {
        /// The newest status by event time (`None` before the first update).
        status: Option<MerchantStatus>,
        /// Updates stored.
        version: Version,
    },
    /// A quarantined payload (`None` before its first event).
    Quarantine(Option<QuarantineEntry>),
    /// A user's erasures: the latest one and how many.
    Erasure {
        /// The latest erasure (`None` before the first).
        last: Option<Erasure>,
        /// Erasures stored.
        version: Version,
    },
}

/// The layout of the folded state inside snapshots. Bump it whenever `Folded` (or the
/// `Session`, `Account` or merchant state in it) gains or changes a field that is derived from
/// the events, or its compact form changes: a snapshot of another layout is not decoded (fields
/// with defaults would decode to wrong values) and the stream is folded from its log instead.
pub const SNAPSHOT_LAYOUT: u8 = 8;

/// Why an event that arrives for a compacted session is rejected.
pub const COMPACTED_REJECTION: &str =
    "the session was compacted (its history is no longer stored): no later event changes it";

/// A snapshot's state bytes: the layout byte, the rules version
/// ([`linkflow_core::RULES_VERSION`]) it was folded with, then the compact form of the state
/// (`linkflow_core::compact`).
pub(crate) fn encode_snapshot_state(folded: &Folded) -> Vec<u8> {
    encode_snapshot_with_rules(folded, RULES_VERSION)
}

/// [`encode_snapshot_state`] as folded with rules `rules` (tests write snapshots of other
/// rules with it).
pub(crate) fn encode_snapshot_with_rules(folded: &Folded, rules: u32) -> Vec<u8> {
    let mut out = Output::default();
    out.u8(SNAPSHOT_LAYOUT);
    out.varint(u64::from(rules));
    folded.encode_compact(&mut out);
    out.into_bytes()
}

/// What a snapshot's state bytes hold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SnapshotState {
    /// A state this build reads, folded with the current rules.
    Current(Folded),
    /// A state of this layout folded with other rules: the stream must be folded again.
    OtherRules(u32),
    /// Another layout, or damaged: the stream is folded from its log.
    Unreadable,
}

/// Decodes a snapshot's state bytes.
pub(crate) fn read_snapshot_state(state: &[u8]) -> SnapshotState {
    let Some((&layout, rest)) = state.split_first() else {
        return SnapshotState::Unreadable;
    };
    if layout != SNAPSHOT_LAYOUT {
        return SnapshotState::Unreadable;
    }
    let mut input = Input::new(rest);
    let Ok(rules) = input.u32("rules version") else {
        return SnapshotState::Unreadable;
    };
    if rules != RULES_VERSION {
        return SnapshotState::OtherRules(rules);
    }
    match Folded::decode_compact(&mut input).and_then(|folded| {
        input.finish()?;
        Ok(folded)
    }) {
        Ok(folded) => SnapshotState::Current(folded),
        Err(_) => SnapshotState::Unreadable,
    }
}

/// The state a snapshot of this layout holds, whatever rules it was folded with: what the
/// engine's pass over snapshots of other rules compares a stream's new fold with.
pub(crate) fn decode_state_any_rules(state: &[u8]) -> Option<Folded> {
    let (&layout, rest) = state.split_first()?;
    if layout != SNAPSHOT_LAYOUT {
        return None;
    }
    let mut input = Input::new(rest);
    input.u32("rules version").ok()?;
    let folded = Folded::decode_compact(&mut input).ok()?;
    input.finish().ok()?;
    Some(folded)
}

/// Decodes a snapshot's state bytes; `None` when this build cannot use them (another layout,
/// other rules, or damaged): the caller folds the stream from its log instead.
pub(crate) fn decode_snapshot_state(state: &[u8]) -> Option<Folded> {
    match read_snapshot_state(state) {
        SnapshotState::Current(folded) => Some(folded),
        SnapshotState::OtherRules(_) | SnapshotState::Unreadable => None,
    }
}

/// What an accepted event did to its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    /// The session's phase transition, for session events.
    pub session: Option<Applied>,
}

impl Change {
    pub fn phase_before(&self) -> Option<Phase> {
        self.session.map(|applied| applied.phase_before)
    }

    pub fn phase_after(&self) -> Option<Phase> {
        self.session.map(|applied| applied.phase_after)
    }
}

/// What appending one arrival to a stream's state did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Append {
    /// It sorts last and was accepted.
    Accepted(Change),
    /// It sorts last and was rejected: stored, shown with the reason.
    Rejected(String),
    /// It sorts before events already folded: the stream must be folded again with it
    /// ([`Folded::fold_all`]). Nothing changed.
    Refold,
}

/// One event of a folded stream, in the order the fold took it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Placement {
    /// Its arrival number: its version in the stream.
    pub arrival: u64,
    /// Accepted with what it did, or rejected with why.
    pub verdict: Result<Change, String>,
    /// It arrived after an event that sorts after it.
    pub late: bool,
}

/// A stream's events folded from the start: the state and every event's placement.
pub(crate) struct FoldedStream {
    pub folded: Folded,
    pub placements: Vec<Placement>,
}

impl Folded {
    /// The empty state of the stream a body belongs to.
    pub(crate) fn initial_for(body: &EventBody) -> Folded {
        match body {
            EventBody::Session(_) => Folded::Session(Box::default()),
            EventBody::Account { account, .. } => Folded::Account {
                key: account.clone(),
                timeline: Timeline::default(),
            },
            EventBody::Merchant(_) => Folded::Merchant {
                status: None,
                version: Version::EMPTY,
            },
            EventBody::Quarantined(_) | EventBody::QuarantineReleased(_) => {
                Folded::Quarantine(None)
            }
            EventBody::Erased(_) => Folded::Erasure {
                last: None,
                version: Version::EMPTY,
            },
        }
    }

    /// Events stored in the stream (accepted or rejected).
    pub fn version(&self) -> Version {
        match self {
            Folded::Session(timeline) => Version(timeline.arrivals),
            Folded::Account { timeline, .. } => Version(timeline.arrivals),
            Folded::Merchant { version, .. } | Folded::Erasure { version, .. } => *version,
            Folded::Quarantine(entry) => entry.as_ref().map_or(Version::EMPTY, |e| e.version()),
        }
    }

    /// The version the stream was compacted at ([`Version::EMPTY`]: never; only sessions
    /// are compacted).
    pub fn compacted(&self) -> Version {
        match self {
            Folded::Session(timeline) => Version(timeline.compacted),
            _ => Version::EMPTY,
        }
    }

    /// Events of the stream the fold rejects.
    pub fn rejected(&self) -> u32 {
        match self {
            Folded::Session(timeline) => timeline.rejected,
            Folded::Account { timeline, .. } => timeline.rejected,
            Folded::Merchant { .. } | Folded::Quarantine(_) | Folded::Erasure { .. } => 0,
        }
    }

    /// Whether the stream is a timeline (a session or an account): its events are folded in
    /// event-time order, and their number is bounded.
    pub fn is_timeline(&self) -> bool {
        matches!(self, Folded::Session(_) | Folded::Account { .. })
    }

    /// The stream kind's name, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Folded::Session(_) => "session",
            Folded::Account { .. } => "account",
            Folded::Merchant { .. } => "merchant",
            Folded::Quarantine(_) => "quarantine",
            Folded::Erasure { .. } => "erasure",
        }
    }

    /// The session, if this is one.
    pub fn as_session(&self) -> Option<&Session> {
        match self {
            Folded::Session(timeline) => Some(&timeline.state),
            _ => None,
        }
    }

    /// Whether `body` is of this stream's kind.
    pub(crate) fn holds(&self, body: &EventBody) -> bool {
        matches!(
            (self, body),
            (Folded::Session(_), EventBody::Session(_))
                | (Folded::Account { .. }, EventBody::Account { .. })
                | (Folded::Merchant { .. }, EventBody::Merchant(_))
                | (Folded::Erasure { .. }, EventBody::Erased(_))
                | (
                    Folded::Quarantine(_),
                    EventBody::Quarantined(_) | EventBody::QuarantineReleased(_)
                )
        )
    }

    /// Appends the stream's next arrival in place (see [`Append`]). `Err` when the event cannot
    /// be stored in this stream at all: a body of another kind, or a quarantine event its
    /// entry refuses (quarantine streams are written by linkflow alone).
    pub(crate) fn append(&mut self, body: &EventBody) -> Result<Append, String> {
        match (self, body) {
            (Folded::Session(timeline), EventBody::Session(event)) => {
                Ok(match timeline.append(event) {
                    Appended::Accepted(applied) => Append::Accepted(Change {
                        session: Some(applied),
                    }),
                    Appended::Rejected(rejection) => Append::Rejected(rejection.to_string()),
                    Appended::Refold => Append::Refold,
                    Appended::Compacted => Append::Rejected(COMPACTED_REJECTION.into()),
                })
            }
            (Folded::Account { timeline, .. }, EventBody::Account { event, .. }) => {
                Ok(match timeline.append(event) {
                    Appended::Accepted(()) => Append::Accepted(Change { session: None }),
                    Appended::Rejected(rejection) => Append::Rejected(rejection.to_string()),
                    Appended::Refold => Append::Refold,
                    Appended::Compacted => Append::Rejected(COMPACTED_REJECTION.into()),
                })
            }
            (Folded::Merchant { status, version }, EventBody::Merchant(update)) => {
                *status = Some(MerchantStatus::fold_into(status.take(), update));
                *version = version.next();
                Ok(Append::Accepted(Change { session: None }))
            }
            (Folded::Erasure { last, version }, EventBody::Erased(erasure)) => {
                *last = Some(erasure.clone());
                *version = version.next();
                Ok(Append::Accepted(Change { session: None }))
            }
            (Folded::Quarantine(entry), body) if quarantine_event(body).is_some() => {
                let event = quarantine_event(body).expect("matched by the guard");
                apply_quarantine(entry, event)
                    .map(|()| Append::Accepted(Change { session: None }))
                    .map_err(|rejection| rejection.to_string())
            }
            (folded, body) => Err(format!(
                "a {} event cannot go into a {} stream",
                body.name(),
                folded.kind_name()
            )),
        }
    }

    /// Folds a stream's events (every one it stored, in arrival order) from the start: the
    /// state and every event's placement, in the order the fold took them. `Err` names the
    /// first event (by arrival) that the stream cannot hold: one of another kind, or a
    /// quarantine event its entry refuses. `None` for no events.
    pub(crate) fn fold_all(bodies: &[&EventBody]) -> Result<Option<FoldedStream>, (u64, String)> {
        let Some(first) = bodies.first() else {
            return Ok(None);
        };
        let start = Folded::initial_for(first);
        let mismatch = |folded: &Folded| {
            bodies
                .iter()
                .position(|body| !folded.holds(body))
                .map(|index| {
                    (
                        index as u64 + 1,
                        format!(
                            "a {} event cannot go into a {} stream",
                            bodies[index].name(),
                            folded.kind_name()
                        ),
                    )
                })
        };
        if let Some(error) = mismatch(&start) {
            return Err(error);
        }
        Ok(Some(match start {
            Folded::Session(_) => {
                let events: Vec<&Event> = bodies
                    .iter()
                    .filter_map(|body| match body {
                        EventBody::Session(event) => Some(event),
                        _ => None,
                    })
                    .collect();
                let folded = timeline::fold::<Session, _>(&events);
                FoldedStream {
                    placements: folded
                        .placed
                        .into_iter()
                        .map(|placed| Placement {
                            arrival: placed.arrival,
                            verdict: placed
                                .verdict
                                .map(|applied| Change {
                                    session: Some(applied),
                                })
                                .map_err(|rejection| rejection.to_string()),
                            late: placed.late,
                        })
                        .collect(),
                    folded: Folded::Session(Box::new(folded.timeline)),
                }
            }
            Folded::Account { key, .. } => {
                let events: Vec<&AccountEvent> = bodies
                    .iter()
                    .filter_map(|body| match body {
                        EventBody::Account { event, .. } => Some(event),
                        _ => None,
                    })
                    .collect();
                let folded = timeline::fold::<Account, _>(&events);
                FoldedStream {
                    placements: folded
                        .placed
                        .into_iter()
                        .map(|placed| Placement {
                            arrival: placed.arrival,
                            verdict: placed
                                .verdict
                                .map(|()| Change { session: None })
                                .map_err(|rejection| rejection.to_string()),
                            late: placed.late,
                        })
                        .collect(),
                    folded: Folded::Account {
                        key,
                        timeline: folded.timeline,
                    },
                }
            }
            mut folded => {
                let mut placements = Vec::with_capacity(bodies.len());
                for (index, body) in bodies.iter().enumerate() {
                    let arrival = index as u64 + 1;
                    match folded.append(body) {
                        Ok(Append::Accepted(change)) => placements.push(Placement {
                            arrival,
                            verdict: Ok(change),
                            late: false,
                        }),
                        Ok(Append::Rejected(reason)) | Err(reason) => {
                            return Err((arrival, reason))
                        }
                        Ok(Append::Refold) => {
                            return Err((arrival, "folds in arrival order".into()))
                        }
                    }
                }
                FoldedStream { folded, placements }
            }
        }))
    }
}

/// Folds one stream's events as a walk over the log brings them, in arrival order: merchant
/// and quarantine streams in place (they may be long), sessions and accounts held and folded
/// in event-time order at the end (their length is bounded by
/// [`crate::EngineConfig::max_events_per_stream`]).
#[derive(Default)]
pub(crate) struct StreamFolder {
    state: Option<Folded>,
    held: Vec<EventBody>,
    failure: Option<(u64, String)>,
}

impl StreamFolder {
    /// Takes the stream's next event.
    pub fn push(&mut self, body: EventBody) {
        if self.failure.is_some() {
            return;
        }
        let state = self.state.get_or_insert_with(|| Folded::initial_for(&body));
        if state.is_timeline() {
            self.held.push(body);
            return;
        }
        let arrival = state.version().0 + 1;
        match state.append(&body) {
            Ok(Append::Accepted(_)) => {}
            Ok(Append::Rejected(reason)) | Err(reason) => self.failure = Some((arrival, reason)),
            Ok(Append::Refold) => {
                self.failure = Some((arrival, "folds in arrival order".into()));
            }
        }
    }

    /// The stream's state (`None` if it had no event), or the first event (by arrival) it
    /// cannot hold, with why.
    pub fn finish(self) -> Result<Option<Folded>, (u64, String)> {
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        if self.held.is_empty() {
            return Ok(self.state);
        }
        let bodies: Vec<&EventBody> = self.held.iter().collect();
        Ok(Folded::fold_all(&bodies)?.map(|stream| stream.folded))
    }
}

/// The quarantine event a body is, if it is one.
fn quarantine_event(body: &EventBody) -> Option<QuarantineEvent<'_>> {
    match body {
        EventBody::Quarantined(quarantined) => Some(QuarantineEvent::Quarantined(quarantined)),
        EventBody::QuarantineReleased(released) => Some(QuarantineEvent::Released(released)),
        _ => None,
    }
}

/// A provider as one byte (its index in [`Provider::ALL`]).
fn provider_code(provider: Provider) -> u8 {
    match provider {
        Provider::Moneykit => 0,
        Provider::Benji => 1,
        Provider::Knot => 2,
        Provider::Plaid => 3,
    }
}

impl Compact for Folded {
    /// A kind byte (0 session, 1 account, 2 merchant, 3 quarantine, 4 erasure), then the
    /// state.
    fn encode_compact(&self, out: &mut Output) {
        match self {
            Folded::Session(timeline) => {
                out.u8(0);
                timeline.encode_compact(out);
            }
            Folded::Account { key, timeline } => {
                out.u8(1);
                out.u8(provider_code(key.provider));
                out.str(&key.external_user_id);
                out.str(&key.institution_id);
                timeline.encode_compact(out);
            }
            Folded::Merchant { status, version } => {
                out.u8(2);
                out.varint(version.0);
                match status {
                    None => out.u8(0),
                    Some(status) => {
                        out.u8(1);
                        status.encode_compact(out);
                    }
                }
            }
            Folded::Quarantine(entry) => {
                out.u8(3);
                match entry {
                    None => out.u8(0),
                    Some(entry) => {
                        out.u8(1);
                        entry.encode_compact(out);
                    }
                }
            }
            Folded::Erasure { last, version } => {
                out.u8(4);
                out.varint(version.0);
                match last {
                    None => out.u8(0),
                    Some(erasure) => {
                        out.u8(1);
                        erasure.encode_compact(out);
                    }
                }
            }
        }
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        match input.u8("stream kind")? {
            0 => Ok(Folded::Session(Box::new(Timeline::decode_compact(input)?))),
            1 => Ok(Folded::Account {
                key: AccountKey {
                    provider: input.choice("account provider", &Provider::ALL)?,
                    external_user_id: input.str("account user id")?,
                    institution_id: input.str("account institution id")?,
                },
                timeline: Timeline::decode_compact(input)?,
            }),
            2 => {
                let version = Version(input.varint("merchant version")?);
                let status = if input.present("merchant status")? {
                    Some(MerchantStatus::decode_compact(input)?)
                } else {
                    None
                };
                Ok(Folded::Merchant { status, version })
            }
            3 => {
                let entry = if input.present("quarantine entry")? {
                    Some(QuarantineEntry::decode_compact(input)?)
                } else {
                    None
                };
                Ok(Folded::Quarantine(entry))
            }
            4 => {
                let version = Version(input.varint("erasure version")?);
                let last = if input.present("erasure")? {
                    Some(Erasure::decode_compact(input)?)
                } else {
                    None
                };
                Ok(Folded::Erasure { last, version })
            }
            other => Err(input.error(
                "stream kind",
                format!(
                    "code {other}, expected 0 (session), 1 (account), 2 (merchant), 3 (quarantine) or 4 (erasure)"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use linkflow_core::compact::{from_compact, to_compact};
    use linkflow_core::{AccountEventKind, Availability, EventKind};

    use super::*;

    fn opened_session() -> Folded {
        let mut folded = Folded::Session(Box::default());
        let opened = EventBody::Session(Event::new(EventKind::Opened));
        assert!(matches!(folded.append(&opened), Ok(Append::Accepted(_))));
        folded
    }

    #[test]
    fn every_kind_of_state_round_trips_through_its_compact_form() {
        let mut account = Timeline::<Account>::default();
        account.append(&AccountEvent::new(AccountEventKind::Linked));
        let states = [
            Folded::Session(Box::default()),
            opened_session(),
            Folded::Account {
                key: AccountKey {
                    provider: Provider::Knot,
                    external_user_id: "user-1".into(),
                    institution_id: "10".into(),
                },
                timeline: account,
            },
            Folded::Merchant {
                status: None,
                version: Version::EMPTY,
            },
            Folded::Merchant {
                status: Some(MerchantStatus {
                    merchant_id: "10".into(),
                    name: Some("Uber".into()),
                    category: None,
                    logo: None,
                    product_type: "card_switcher".into(),
                    platform: "ios".into(),
                    sdk: None,
                    status: Availability::Up,
                    since: chrono::DateTime::from_timestamp(1_710_864_000, 0).unwrap(),
                }),
                version: Version(3),
            },
            Folded::Quarantine(None),
            Folded::Quarantine(Some(QuarantineEntry::new(linkflow_core::Quarantined {
                feed: "benji".into(),
                reason: "no session id".into(),
                origin: linkflow_core::Origin::new("POST /v1/events/benji"),
            }))),
        ];
        for state in states {
            let bytes = to_compact(&state);
            assert_eq!(from_compact::<Folded>(&bytes).unwrap(), state);
        }
        let error = from_compact::<Folded>(&[7]).unwrap_err();
        assert_eq!(error.what, "stream kind");
    }

    #[test]
    fn snapshots_record_the_rules_they_were_folded_with() {
        let folded = opened_session();
        let bytes = encode_snapshot_state(&folded);
        assert_eq!(bytes[0], SNAPSHOT_LAYOUT);
        assert_eq!(decode_snapshot_state(&bytes), Some(folded.clone()));
        assert_eq!(
            read_snapshot_state(&bytes),
            SnapshotState::Current(folded.clone())
        );
        // Folded with other rules: read as such, and not used.
        let other = encode_snapshot_with_rules(&folded, RULES_VERSION + 1);
        assert_eq!(
            read_snapshot_state(&other),
            SnapshotState::OtherRules(RULES_VERSION + 1)
        );
        assert_eq!(decode_snapshot_state(&other), None);
        // Another layout, a damaged body, trailing bytes, or nothing: not decoded (the stream
        // is folded from its log).
        let mut other_layout = bytes.clone();
        other_layout[0] = SNAPSHOT_LAYOUT + 1;
        assert_eq!(
            read_snapshot_state(&other_layout),
            SnapshotState::Unreadable
        );
        assert_eq!(decode_snapshot_state(&bytes[..bytes.len() - 1]), None);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode_snapshot_state(&trailing), None);
        assert_eq!(decode_snapshot_state(&[]), None);
    }

    #[test]
    fn a_stream_folder_folds_sessions_in_event_time_order_and_merchants_in_place() {
        let at = |secs: i64| chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap();
        let bodies = [
            EventBody::Session(Event::new(EventKind::Opened).at(at(0))),
            EventBody::Session(Event::new(EventKind::Succeeded).at(at(40))),
            EventBody::Session(Event::new(EventKind::CredentialsSubmitted).at(at(20))),
        ];
        let mut folder = StreamFolder::default();
        for body in &bodies {
            folder.push(body.clone());
        }
        let folded = folder.finish().unwrap().unwrap();
        assert_eq!(folded.version(), Version(3));
        assert_eq!(folded.rejected(), 0);
        assert_eq!(folded.as_session().unwrap().phase(), Phase::Succeeded);
        let refs: Vec<&EventBody> = bodies.iter().collect();
        let stream = Folded::fold_all(&refs).unwrap().unwrap();
        let arrivals: Vec<u64> = stream.placements.iter().map(|p| p.arrival).collect();
        assert_eq!(arrivals, [1, 3, 2]);
        assert!(stream.placements[1].late);
        // A body of another kind in a session stream is named by its arrival.
        let mut folder = StreamFolder::default();
        folder.push(bodies[0].clone());
        folder.push(EventBody::Quarantined(linkflow_core::Quarantined {
            feed: "benji".into(),
            reason: "no session id".into(),
            origin: linkflow_core::Origin::new("test"),
        }));
        assert_eq!(folder.finish().unwrap_err().0, 2);
    }

    proptest::proptest! {
        /// Snapshot bytes come from disk: whatever they hold, decoding answers (a state or
        /// `None`, so the stream is folded from its log), never panics.
        #[test]
        fn any_snapshot_bytes_decode_or_are_refused_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            flip in 0usize..400,
            value in proptest::prelude::any::<u8>(),
        ) {
            let _ = read_snapshot_state(&bytes);
            let mut valid = encode_snapshot_state(&opened_session());
            let at = flip % valid.len();
            valid[at] = value;
            let _ = read_snapshot_state(&valid);
        }
    }
}

//! A stream's events in event-time order: what happened, not the order it arrived in.
//!
//! A stream keeps every event it received, in arrival order. Its state is the fold of those
//! events in **event-time order**; each event, in that order, is *accepted* when the machine
//! accepts it in the state the fold has reached, and *rejected* (kept, shown with the
//! rejection) otherwise. Which events are accepted is derived: a late event can change the
//! classification of events that arrived before it, exactly as if they had arrived in order.
//!
//! The order (`docs/state-machine.md`, "Event-time order"), built by taking the arrivals one by
//! one:
//!
//! - An event **with a provider time** goes by its [`TimedKey`]: time, then the machine's
//!   step order (`Session`: the table's forward order; a success sorts before an exit of the
//!   same instant), then arrival. It is placed right before the first timed event with a
//!   greater key (events without a time just before that one stay before it), or last.
//! - An event **without a time** (Benji's callbacks, most forwarded SDK callbacks) has only
//!   its arrival to go by. It takes its arrival place, last, when the machine accepts it there;
//!   else the latest earlier place (at most [`MAX_PLACEMENT_SEARCH`] back) where it is accepted
//!   and every event accepted without it stays accepted; else it is rejected, last. Its receive
//!   time is shown, never used to order it.
//!
//! Events in arrival order, one at a time, build the same timeline as a fold of them all:
//! [`Timeline::append`] does it in place when the new event sorts last (in-order arrival, the
//! common case) and asks for a [`fold`] of the whole stream otherwise.

use std::borrow::Borrow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The version of the rules a stream is folded with: the session and account tables, the
/// event-time order and its ties, the placement of events without a time. Bump it with any
/// change that can fold the same events differently: snapshots record it, and a stream whose
/// snapshot was folded with other rules is folded again (`docs/state-machine.md`, "Rule
/// changes"). The engine bumps it too when what a state adds to its indexes changes (3: the
/// phase, institution and user index keys carry the session's first event time), so that the
/// pass that folds again rebuilds them.
pub const RULES_VERSION: u32 = 3;

/// The furthest back an event without a time is moved, in places, looking for one where it is
/// accepted. Bounds a fold's work (each place tried is a fold of the stream) on streams of
/// many refused events without a time; real sessions have a few dozen events.
pub const MAX_PLACEMENT_SEARCH: usize = 16;

/// A state machine whose events a timeline orders and folds: the link session, the linked
/// account.
pub trait Machine: Clone + Default {
    /// What it folds.
    type Event;
    /// What an accepted event did.
    type Applied: Clone + fmt::Debug + PartialEq;
    /// Why an event was refused.
    type Rejection: Clone + fmt::Debug + fmt::Display + PartialEq;

    /// The event's provider time, if it has one.
    fn time(event: &Self::Event) -> Option<DateTime<Utc>>;

    /// Where the event sorts among events of the same instant (lower first).
    fn rank(event: &Self::Event) -> u8;

    /// Whether the state accepts the event.
    fn accepts(&self, event: &Self::Event) -> bool;

    /// Folds the event in; on a rejection the state is unchanged.
    fn fold_in(&mut self, event: &Self::Event) -> Result<Self::Applied, Self::Rejection>;
}

/// The place of an event with a provider time: time, then rank, then arrival (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimedKey {
    /// The provider time.
    pub at: DateTime<Utc>,
    /// The machine's rank of the event among events of the same instant.
    pub rank: u8,
    /// Its arrival number in the stream.
    pub arrival: u64,
}

/// A stream's state and what appending the next arrival needs: how many events arrived, how
/// many of them the fold rejected, and the greatest timed key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline<M> {
    /// The fold of the accepted events, in event-time order.
    pub state: M,
    /// Events received (accepted or rejected): the stream's version.
    pub arrivals: u64,
    /// Events the fold rejected.
    pub rejected: u32,
    /// The greatest key among events with a provider time.
    pub last_timed: Option<TimedKey>,
    /// The stream was compacted at this arrival (0: never): the events up to it are no longer
    /// stored, so the stream cannot be folded again, and every later arrival is kept as
    /// rejected ([`Appended::Compacted`]) with the state as it was.
    #[serde(default)]
    pub compacted: u64,
}

/// What appending one arrival did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended<A, R> {
    /// It sorts last and the state accepted it.
    Accepted(A),
    /// It sorts last (it has a time) and the state refused it: kept, rejected.
    Rejected(R),
    /// It does not sort last, or has no time and is refused last: the stream must be folded
    /// again with it ([`fold`]). Nothing was changed.
    Refold,
    /// The stream was compacted ([`Timeline::compacted`]): the arrival is counted, rejected,
    /// and the state is left as it was.
    Compacted,
}

/// One event of a folded stream, in event-time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed<A, R> {
    /// Its arrival number (1-based; the stream version it was stored at).
    pub arrival: u64,
    /// Accepted with what it did, or rejected with why.
    pub verdict: Result<A, R>,
    /// It arrived after an event that sorts after it.
    pub late: bool,
}

/// A stream folded in event-time order: its timeline and every event's place and verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded<M: Machine> {
    /// The state and counters, as [`Timeline::append`] continues from them.
    pub timeline: Timeline<M>,
    /// Every event, in event-time order.
    pub placed: Vec<Placed<M::Applied, M::Rejection>>,
}

impl<M: Machine> Timeline<M> {
    /// Appends the next arrival in place when it sorts last (see the module docs); otherwise
    /// [`Appended::Refold`] and nothing changes.
    pub fn append(&mut self, event: &M::Event) -> Appended<M::Applied, M::Rejection> {
        let arrival = self.arrivals + 1;
        if self.compacted > 0 {
            self.arrivals = arrival;
            self.rejected = self.rejected.saturating_add(1);
            return Appended::Compacted;
        }
        match M::time(event) {
            Some(at) => {
                let key = TimedKey {
                    at,
                    rank: M::rank(event),
                    arrival,
                };
                if self.last_timed.is_some_and(|last| key < last) {
                    return Appended::Refold;
                }
                self.last_timed = Some(key);
                self.arrivals = arrival;
                match self.state.fold_in(event) {
                    Ok(applied) => Appended::Accepted(applied),
                    Err(rejection) => {
                        self.rejected = self.rejected.saturating_add(1);
                        Appended::Rejected(rejection)
                    }
                }
            }
            None if self.state.accepts(event) => {
                self.arrivals = arrival;
                let applied = self
                    .state
                    .fold_in(event)
                    .unwrap_or_else(|_| unreachable!("`accepts` said the state accepts it"));
                Appended::Accepted(applied)
            }
            None => Appended::Refold,
        }
    }
}

/// Folds a stream's events, given in arrival order, in event-time order (see the module docs).
///
/// While every event goes last (in-order arrival, the common case) the fold of the order so
/// far is carried along, so such a stream folds in one pass; an event placed earlier makes the
/// next placement fold the order again.
pub fn fold<M: Machine, E: Borrow<M::Event>>(events: &[E]) -> Folded<M> {
    let mut order: Vec<usize> = Vec::with_capacity(events.len());
    let mut last_timed: Option<TimedKey> = None;
    // The fold of `order` as it stands, when it is known.
    let mut running: Option<(M, Verdicts<M>)> = Some((M::default(), Vec::new()));
    for (index, event) in events.iter().enumerate() {
        let event = event.borrow();
        match M::time(event) {
            Some(at) => {
                let key = timed_key::<M>(index, event, at);
                last_timed = last_timed.max(Some(key));
                let place = order
                    .iter()
                    .position(|&other| {
                        let other_event = events[other].borrow();
                        M::time(other_event)
                            .is_some_and(|at| timed_key::<M>(other, other_event, at) > key)
                    })
                    .unwrap_or(order.len());
                if place == order.len() {
                    if let Some((state, verdicts)) = running.as_mut() {
                        verdicts.push(state.fold_in(event));
                    }
                } else {
                    running = None;
                }
                order.insert(place, index);
            }
            None => {
                let (state, verdicts) = running.unwrap_or_else(|| classify::<M, E>(events, &order));
                running = place_untimed::<M, E>(events, &mut order, index, state, verdicts);
            }
        }
    }
    let (state, verdicts) = running.unwrap_or_else(|| classify::<M, E>(events, &order));
    let mut placed = Vec::with_capacity(order.len());
    let mut rejected = 0u32;
    // An event is late when some event placed after it arrived before it.
    let mut earliest_after = usize::MAX;
    let mut late = vec![false; order.len()];
    for (position, &index) in order.iter().enumerate().rev() {
        late[position] = earliest_after < index;
        earliest_after = earliest_after.min(index);
    }
    for ((position, &index), verdict) in order.iter().enumerate().zip(verdicts) {
        rejected += u32::from(verdict.is_err());
        placed.push(Placed {
            arrival: index as u64 + 1,
            verdict,
            late: late[position],
        });
    }
    Folded {
        timeline: Timeline {
            state,
            arrivals: events.len() as u64,
            rejected,
            last_timed,
            compacted: 0,
        },
        placed,
    }
}

impl Machine for crate::Session {
    type Event = crate::Event;
    type Applied = crate::Applied;
    type Rejection = crate::Rejection;

    fn time(event: &crate::Event) -> Option<DateTime<Utc>> {
        event.occurred_at
    }

    /// Phase events by the table's forward order of their steps (a success before an exit of
    /// the same instant); telemetry and unrecognized events after them; the engine's
    /// `abandoned` marker last (it speaks of everything up to its time).
    fn rank(event: &crate::Event) -> u8 {
        if event.kind.class() == crate::EventClass::Marker {
            return STEP_COUNT + 1;
        }
        event.kind.step().map_or(STEP_COUNT, |step| {
            crate::Step::ALL
                .iter()
                .position(|known| *known == step)
                .map_or(STEP_COUNT, |index| index as u8)
        })
    }

    fn accepts(&self, event: &crate::Event) -> bool {
        self.check(event).is_ok()
    }

    fn fold_in(&mut self, event: &crate::Event) -> Result<crate::Applied, crate::Rejection> {
        self.apply_in_place(event)
    }
}

/// The rank of events without a step: after every step.
const STEP_COUNT: u8 = crate::Step::ALL.len() as u8;

impl Machine for crate::Account {
    type Event = crate::AccountEvent;
    type Applied = ();
    type Rejection = crate::AccountRejection;

    fn time(event: &crate::AccountEvent) -> Option<DateTime<Utc>> {
        event.occurred_at
    }

    /// A link first (an operation of the same instant needs the account), then a broken
    /// login and its repair, an expiry warning, operations, a revocation, then a withdrawn
    /// link (it carries the time of the link it withdraws, so it sorts right after it), then
    /// notices and unrecognized events.
    fn rank(event: &crate::AccountEvent) -> u8 {
        use crate::account::AccountStep;
        match event.step() {
            Some(AccountStep::Link) => 0,
            Some(AccountStep::RequireLogin) => 1,
            Some(AccountStep::RepairLogin) => 2,
            Some(AccountStep::WarnExpiry) => 3,
            Some(AccountStep::RecordOperation) => 4,
            Some(AccountStep::Revoke) => 5,
            Some(AccountStep::WithdrawLink) => 6,
            None => 7,
        }
    }

    fn accepts(&self, event: &crate::AccountEvent) -> bool {
        self.check(event).is_ok()
    }

    fn fold_in(&mut self, event: &crate::AccountEvent) -> Result<(), crate::AccountRejection> {
        self.apply_in_place(event)
    }
}

impl<M: Machine + crate::compact::Compact> crate::compact::Compact for Timeline<M> {
    /// Arrivals, rejected count, the greatest timed key (presence byte, time, rank, arrival),
    /// the arrival it was compacted at (0: never), then the state.
    fn encode_compact(&self, out: &mut crate::compact::Output) {
        out.varint(self.arrivals);
        out.varint(u64::from(self.rejected));
        match self.last_timed {
            None => out.u8(0),
            Some(key) => {
                out.u8(1);
                out.time(key.at, 0);
                out.u8(key.rank);
                out.varint(key.arrival);
            }
        }
        out.varint(self.compacted);
        self.state.encode_compact(out);
    }

    fn decode_compact(
        input: &mut crate::compact::Input<'_>,
    ) -> Result<Self, crate::compact::CompactError> {
        let arrivals = input.varint("timeline arrivals")?;
        let rejected = input.u32("timeline rejected")?;
        let last_timed = if input.present("timeline last timed key")? {
            Some(TimedKey {
                at: input.time("timeline last timed key", 0)?,
                rank: input.u8("timeline last timed rank")?,
                arrival: input.varint("timeline last timed arrival")?,
            })
        } else {
            None
        };
        let compacted = input.varint("timeline compacted at")?;
        let state = M::decode_compact(input)?;
        if u64::from(rejected) > arrivals {
            return Err(input.error(
                "timeline rejected",
                format!("{rejected} rejected of {arrivals} arrivals"),
            ));
        }
        if compacted > arrivals {
            return Err(input.error(
                "timeline compacted at",
                format!("arrival {compacted} of {arrivals}"),
            ));
        }
        Ok(Timeline {
            state,
            arrivals,
            rejected,
            last_timed,
            compacted,
        })
    }
}

fn timed_key<M: Machine>(index: usize, event: &M::Event, at: DateTime<Utc>) -> TimedKey {
    TimedKey {
        at,
        rank: M::rank(event),
        arrival: index as u64 + 1,
    }
}

/// Places the event `index` (without a time) into `order`, whose fold is `state` and
/// `verdicts`: last when accepted there, else the latest earlier place where it is accepted
/// and nothing accepted before is refused, else last. Returns the fold of the new order when
/// the event went last (it is known without folding again).
fn place_untimed<M: Machine, E: Borrow<M::Event>>(
    events: &[E],
    order: &mut Vec<usize>,
    index: usize,
    mut state: M,
    mut base: Verdicts<M>,
) -> Option<(M, Verdicts<M>)> {
    let event = events[index].borrow();
    if state.accepts(event) {
        order.push(index);
        base.push(state.fold_in(event));
        return Some((state, base));
    }
    let earliest = order.len().saturating_sub(MAX_PLACEMENT_SEARCH);
    for place in (earliest..order.len()).rev() {
        order.insert(place, index);
        let (_, verdicts) = classify::<M, E>(events, order);
        let keeps_the_rest = order
            .iter()
            .zip(&verdicts)
            .filter(|(&other, _)| other != index)
            .zip(&base)
            .all(|((_, now), before)| before.is_err() || now.is_ok());
        if keeps_the_rest && verdicts[place].is_ok() {
            return None;
        }
        order.remove(place);
    }
    order.push(index);
    base.push(state.fold_in(event));
    Some((state, base))
}

type Verdicts<M> = Vec<Result<<M as Machine>::Applied, <M as Machine>::Rejection>>;

/// Folds the events in `order` from a new state: the state and each event's verdict.
fn classify<M: Machine, E: Borrow<M::Event>>(events: &[E], order: &[usize]) -> (M, Verdicts<M>) {
    let mut state = M::default();
    let verdicts = order
        .iter()
        .map(|&index| state.fold_in(events[index].borrow()))
        .collect();
    (state, verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine of numbered steps: each event is a step; step n is accepted when the state is
    /// below n (steps move forward only), step 0 always (telemetry).
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Steps(u8);

    #[derive(Debug, Clone)]
    struct Step {
        to: u8,
        at: Option<i64>,
    }

    impl Machine for Steps {
        type Event = Step;
        type Applied = u8;
        type Rejection = String;

        fn time(event: &Step) -> Option<DateTime<Utc>> {
            event.at.map(|s| DateTime::from_timestamp(s, 0).unwrap())
        }

        fn rank(event: &Step) -> u8 {
            event.to
        }

        fn accepts(&self, event: &Step) -> bool {
            event.to == 0 || event.to > self.0
        }

        fn fold_in(&mut self, event: &Step) -> Result<u8, String> {
            if !self.accepts(event) {
                return Err(format!("{} after {}", event.to, self.0));
            }
            self.0 = self.0.max(event.to);
            Ok(self.0)
        }
    }

    fn step(to: u8, at: Option<i64>) -> Step {
        Step { to, at }
    }

    fn verdicts(folded: &Folded<Steps>) -> Vec<(u64, bool)> {
        folded
            .placed
            .iter()
            .map(|placed| (placed.arrival, placed.verdict.is_ok()))
            .collect()
    }

    #[test]
    fn timed_events_are_folded_in_time_order_whatever_the_arrival() {
        let events = [step(3, Some(30)), step(1, Some(10)), step(2, Some(20))];
        let folded = fold::<Steps, _>(&events);
        assert_eq!(verdicts(&folded), [(2, true), (3, true), (1, true)]);
        assert_eq!(folded.timeline.state, Steps(3));
        assert_eq!(folded.timeline.rejected, 0);
        let late: Vec<bool> = folded.placed.iter().map(|p| p.late).collect();
        assert_eq!(late, [true, true, false]);
    }

    #[test]
    fn a_late_event_changes_the_classification_of_earlier_arrivals() {
        // 4 at t40 arrives first and is accepted; 5 at t21 then comes before it, and 4 is now
        // the one refused (it would move back).
        let events = [step(5, Some(40)), step(5, Some(21))];
        let folded = fold::<Steps, _>(&events);
        assert_eq!(verdicts(&folded), [(2, true), (1, false)]);
    }

    #[test]
    fn an_untimed_event_takes_the_latest_earlier_place_where_it_and_the_rest_are_accepted() {
        // 1 arrives after 2 and 3: it goes before them.
        let events = [step(2, None), step(3, None), step(1, None)];
        let folded = fold::<Steps, _>(&events);
        assert_eq!(verdicts(&folded), [(3, true), (1, true), (2, true)]);
        // A second 1 is refused wherever it would go: last.
        let events = [step(1, None), step(2, None), step(1, None)];
        let folded = fold::<Steps, _>(&events);
        assert_eq!(verdicts(&folded), [(1, true), (2, true), (3, false)]);
        assert_eq!(folded.timeline.rejected, 1);
    }

    #[test]
    fn untimed_events_stay_before_a_timed_event_that_arrives_after_them() {
        let events = [step(1, None), step(2, None), step(3, Some(5))];
        assert_eq!(
            verdicts(&fold::<Steps, _>(&events)),
            [(1, true), (2, true), (3, true)]
        );
        // A timed event earlier than the timed ones already there goes before them, not
        // before the untimed events that precede them.
        let events = [step(1, None), step(4, Some(50)), step(3, Some(20))];
        assert_eq!(
            verdicts(&fold::<Steps, _>(&events)),
            [(1, true), (3, true), (2, true)]
        );
    }

    #[test]
    fn appending_in_place_agrees_with_folding_the_whole_stream() {
        let events = [
            step(1, Some(10)),
            step(0, None),
            step(3, Some(30)),
            step(2, None),
            step(2, Some(20)),
        ];
        let mut timeline = Timeline::<Steps>::default();
        for (count, event) in events.iter().enumerate() {
            if timeline.append(event) == Appended::Refold {
                timeline = fold::<Steps, _>(&events[..=count]).timeline;
            }
            assert_eq!(
                timeline,
                fold::<Steps, _>(&events[..=count]).timeline,
                "{count}"
            );
        }
    }
}

//! Funnel aggregates: what one session adds to the funnel counters of its group, and funnels
//! built from those counters. Pure, like [`crate::funnel`], whose [`funnel`](crate::funnel::funnel)
//! over sessions is the exact check these must equal (counts exactly, time in phase within
//! [`SKETCH_RELATIVE_ERROR`]).
//!
//! A session's [`Contribution`] is a function of its state alone: the clock enters only at
//! query time. An open session is counted as *open* in its phase; a query counts every open
//! session abandoned, then moves back to *in progress* each one that is live (its last event
//! less than the inactivity timeout ago, which the engine finds in its last-event-time index:
//! the live sessions, not all of them), so abandonment costs in proportion to the live
//! sessions, not to the stored ones.
//!
//! Time in phase is kept as a DDSketch: each duration counts in the bin of the logarithmic
//! mapping of the `sketches-ddsketch` crate (relative accuracy 1%), and bins are counters like
//! any other, so a session's durations are removed as exactly as they were added. A quantile is
//! the nearest-rank bin's value: within 1% of the exact nearest-rank duration.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sketches_ddsketch::Config;

use crate::event::LinkType;
use crate::funnel::{durations, reached, Funnel, FunnelStep, GroupBy, FUNNEL_STEPS, TOP_REASONS};
use crate::ids::Provider;
use crate::phase::Phase;
use crate::session::Session;

/// The sketch's relative accuracy: an estimated quantile is within this fraction of the exact
/// one.
pub const SKETCH_RELATIVE_ERROR: f64 = 0.01;

/// The bin of durations of zero (the logarithmic mapping has no bin for zero).
pub const ZERO_BIN: i32 = i32::MIN;

fn sketch() -> Config {
    // The bin limit is the crate's own sketches'; the mapping does not use it.
    Config::new(SKETCH_RELATIVE_ERROR, 2048, 1.0e-9)
}

/// The bin of a duration in seconds.
pub fn duration_bin(seconds: f64) -> i32 {
    if seconds <= 1.0e-9 {
        ZERO_BIN
    } else {
        sketch().key(seconds)
    }
}

/// The value a bin stands for (within [`SKETCH_RELATIVE_ERROR`] of every duration in it).
pub fn bin_value(bin: i32) -> f64 {
    if bin == ZERO_BIN {
        0.0
    } else {
        sketch().value(bin)
    }
}

/// One counter of a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Sessions.
    Sessions,
    /// Sessions that reached a funnel step.
    Reached(Phase),
    /// Sessions that succeeded.
    Succeeded,
    /// Sessions that exited.
    Exited,
    /// Sessions that exited from a phase.
    ExitedAt(Phase),
    /// Exits from a phase with a status (`(none)` without one).
    ExitStatus(Phase, String),
    /// Error codes raised in a phase.
    Error(Phase, String),
    /// Open sessions in a phase with a last event time: abandoned unless live.
    Open(Phase),
    /// Open sessions in a phase without a last event time: in progress.
    OpenUntimed(Phase),
    /// Durations in a phase, by sketch bin.
    Duration(Phase, i32),
}

/// What a funnel groups and filters a session by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Group {
    /// The provider.
    pub provider: Provider,
    /// The institution id.
    pub institution: Option<String>,
    /// The link type.
    pub link_type: Option<LinkType>,
}

impl Group {
    /// The group of a session.
    pub fn of(provider: Provider, session: &Session) -> Group {
        Group {
            provider,
            institution: session.institution().map(|i| i.id.clone()),
            link_type: session.link_type(),
        }
    }

    /// The funnel group's label under `by` (`None` for [`GroupBy::Screen`], which aggregates
    /// do not keep).
    pub fn label(&self, by: GroupBy) -> Option<String> {
        Some(match by {
            GroupBy::Nothing => "all".to_owned(),
            GroupBy::Provider => self.provider.as_str().to_owned(),
            GroupBy::Institution => self
                .institution
                .clone()
                .unwrap_or_else(|| "(none)".to_owned()),
            GroupBy::LinkType => self
                .link_type
                .map_or("(unknown)", LinkType::as_str)
                .to_owned(),
            GroupBy::Screen => return None,
        })
    }
}

/// What one session adds to the counters: its group, when its first event was, and its
/// metrics with their counts (sorted, each once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// The session's first event time (its funnel bucket).
    pub first_at: Option<DateTime<Utc>>,
    /// Its group.
    pub group: Group,
    /// Its metrics.
    pub metrics: Vec<(Metric, i64)>,
}

/// What `session` adds to the funnel counters, under the counting rule of [`crate::funnel`].
pub fn contribution(provider: Provider, session: &Session) -> Contribution {
    let mut metrics: BTreeMap<Metric, i64> = BTreeMap::new();
    let mut add = |metric: Metric| *metrics.entry(metric).or_default() += 1;
    add(Metric::Sessions);
    for phase in FUNNEL_STEPS {
        if reached(session, phase) {
            add(Metric::Reached(phase));
        }
    }
    match session.phase() {
        Phase::Succeeded => add(Metric::Succeeded),
        Phase::Exited => {
            add(Metric::Exited);
            if let Some(exit) = session.exit() {
                add(Metric::ExitedAt(exit.phase));
                let status = exit.status.clone().unwrap_or_else(|| "(none)".into());
                add(Metric::ExitStatus(exit.phase, status));
            }
        }
        current if session.last_event_at().is_some() => add(Metric::Open(current)),
        current => add(Metric::OpenUntimed(current)),
    }
    for (phase, code) in &session.journey().errors {
        add(Metric::Error(*phase, code.clone()));
    }
    for (phase, seconds) in durations(session) {
        add(Metric::Duration(phase, duration_bin(seconds)));
    }
    Contribution {
        first_at: session.first_event_at(),
        group: Group::of(provider, session),
        metrics: metrics.into_iter().collect(),
    }
}

#[derive(Default)]
struct StepTally {
    reached: i64,
    dropped_exited: i64,
    open: i64,
    live: i64,
    exit_statuses: HashMap<String, i64>,
    error_codes: HashMap<String, i64>,
    bins: BTreeMap<i32, i64>,
}

#[derive(Default)]
struct GroupTally {
    sessions: i64,
    succeeded: i64,
    exited: i64,
    untimed: i64,
    steps: BTreeMap<u8, StepTally>,
}

/// Funnel counters summed per group label: counters read from the store, contributions of
/// single sessions, and live sessions moved from abandoned to in progress.
#[derive(Default)]
pub struct Tally {
    by: GroupBy,
    groups: BTreeMap<String, GroupTally>,
}

impl Tally {
    /// An empty tally grouping by `by` (not [`GroupBy::Screen`]: its groups are not kept).
    pub fn new(by: GroupBy) -> Tally {
        Tally {
            by,
            groups: BTreeMap::new(),
        }
    }

    /// Adds `count` of `metric` to `group`'s funnel.
    pub fn add(&mut self, group: &Group, metric: &Metric, count: i64) {
        let Some(label) = group.label(self.by) else {
            return;
        };
        let tally = self.groups.entry(label).or_default();
        let steps = &mut tally.steps;
        match metric {
            Metric::Sessions => tally.sessions += count,
            Metric::Reached(phase) => tally_step(steps, *phase).reached += count,
            Metric::Succeeded => tally.succeeded += count,
            Metric::Exited => tally.exited += count,
            Metric::ExitedAt(phase) => tally_step(steps, *phase).dropped_exited += count,
            Metric::ExitStatus(phase, status) => {
                *tally_step(steps, *phase)
                    .exit_statuses
                    .entry(status.clone())
                    .or_default() += count
            }
            Metric::Error(phase, code) => {
                *tally_step(steps, *phase)
                    .error_codes
                    .entry(code.clone())
                    .or_default() += count
            }
            Metric::Open(phase) => tally_step(steps, *phase).open += count,
            Metric::OpenUntimed(_) => tally.untimed += count,
            Metric::Duration(phase, bin) => {
                *tally_step(steps, *phase).bins.entry(*bin).or_default() += count
            }
        }
    }

    /// Adds a whole contribution.
    pub fn add_contribution(&mut self, contribution: &Contribution) {
        for (metric, count) in &contribution.metrics {
            self.add(&contribution.group, metric, *count);
        }
    }

    /// Counts an open session of `group` in `phase` as live (in progress), not abandoned.
    pub fn live(&mut self, group: &Group, phase: Phase) {
        if let Some(label) = group.label(self.by) {
            let tally = self.groups.entry(label).or_default();
            tally_step(&mut tally.steps, phase).live += 1;
        }
    }

    /// The funnels, one per group with sessions, in group order: what
    /// [`crate::funnel::funnel`] answers for the same sessions (time in phase within
    /// [`SKETCH_RELATIVE_ERROR`]).
    pub fn funnels(self) -> Vec<Funnel> {
        self.groups
            .into_iter()
            .filter(|(_, group)| group.sessions > 0)
            .map(|(label, group)| finish(label, group))
            .collect()
    }
}

fn tally_step(steps: &mut BTreeMap<u8, StepTally>, phase: Phase) -> &mut StepTally {
    steps.entry(phase.rank()).or_default()
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn top(counts: HashMap<String, i64>) -> Vec<(String, u64)> {
    let mut sorted: Vec<(String, u64)> = counts
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(key, n)| (key, count(n)))
        .collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(TOP_REASONS);
    sorted
}

/// The nearest-rank percentile of the durations in `bins`, as its bin's value.
fn percentile(bins: &BTreeMap<i32, i64>, p: f64) -> Option<f64> {
    let total: i64 = bins.values().filter(|n| **n > 0).sum();
    if total <= 0 {
        return None;
    }
    let rank = ((p * total as f64).ceil() as i64).clamp(1, total);
    let mut seen = 0;
    for (bin, n) in bins.iter().filter(|(_, n)| **n > 0) {
        seen += n;
        if seen >= rank {
            return Some(bin_value(*bin));
        }
    }
    None
}

fn finish(label: String, mut group: GroupTally) -> Funnel {
    let reached: HashMap<u8, u64> = group
        .steps
        .iter()
        .map(|(rank, step)| (*rank, count(step.reached)))
        .collect();
    let reached_of = |phase: Phase| reached.get(&phase.rank()).copied().unwrap_or(0);
    let mut abandoned = 0;
    let mut in_progress = count(group.untimed);
    let mut steps = Vec::with_capacity(FUNNEL_STEPS.len());
    for phase in FUNNEL_STEPS {
        let reached = reached_of(phase);
        let conversion = crate::funnel::previous_step(phase)
            .map(reached_of)
            .filter(|previous| *previous > 0)
            .map(|previous| reached as f64 / previous as f64);
        let step = group.steps.remove(&phase.rank()).unwrap_or_default();
        let dropped_abandoned = count(step.open - step.live);
        abandoned += dropped_abandoned;
        in_progress += count(step.live);
        steps.push(FunnelStep {
            phase,
            reached,
            conversion,
            dropped_exited: count(step.dropped_exited),
            dropped_abandoned,
            exit_statuses: top(step.exit_statuses),
            error_codes: top(step.error_codes),
            time_in_phase_p50_s: percentile(&step.bins, 0.5),
            time_in_phase_p90_s: percentile(&step.bins, 0.9),
        });
    }
    // Open sessions of phases that are no funnel step (none today: every open phase is one).
    for step in group.steps.values() {
        abandoned += count(step.open - step.live);
        in_progress += count(step.live);
    }
    Funnel {
        group: label,
        sessions: count(group.sessions),
        succeeded: count(group.succeeded),
        exited: count(group.exited),
        abandoned,
        in_progress,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bin_value_is_within_the_stated_error_of_every_duration_in_it() {
        for seconds in [0.001, 0.01, 0.5, 1.0, 1.234, 59.9, 3_600.0, 86_400.0 * 30.0] {
            let estimate = bin_value(duration_bin(seconds));
            assert!(
                (estimate - seconds).abs() <= SKETCH_RELATIVE_ERROR * seconds + 1e-12,
                "{seconds} -> {estimate}"
            );
        }
        assert_eq!(bin_value(duration_bin(0.0)), 0.0);
    }

    #[test]
    fn percentiles_take_the_nearest_rank_bin() {
        let mut bins = BTreeMap::new();
        for seconds in [1.0, 2.0, 3.0, 4.0] {
            *bins.entry(duration_bin(seconds)).or_default() += 1;
        }
        *bins.entry(duration_bin(9.0)).or_default() += 0;
        let p50 = percentile(&bins, 0.5).unwrap();
        assert!((p50 - 2.0).abs() <= 0.02, "{p50}");
        let p90 = percentile(&bins, 0.9).unwrap();
        assert!((p90 - 4.0).abs() <= 0.04, "{p90}");
        assert_eq!(percentile(&BTreeMap::new(), 0.5), None);
    }
}

//! Funnels: where users drop, why, and how long each step takes. Pure: the clock comes in as
//! `now`.
//!
//! **Abandonment.** A session that has not reached a terminal phase and whose last event time
//! is at least the inactivity timeout before `now` is *abandoned* at its current phase. It is
//! derived at read time, never stored: a late event makes the session live again.
//!
//! **Which phases a session reached.** A session counts for every phase on the main path up to
//! the furthest phase it reached (`created`, `opened`, `institution_selected`,
//! `authenticating`, `authenticated`, `permissions_granted`, `accounts_selected`, `succeeded`),
//! including the ones its provider never reported: a Knot session that only sent
//! `AUTHENTICATED` still opened the flow, chose a merchant and logged in. `mfa` is a side step
//! that only some institutions ask for: it counts only when the session was in it. A session
//! that exited counts up to the phase it left from; a success after an exit counts as a success.
//!
//! **Drop-off.** A session that exited is dropped (exited) at the phase it left from; an
//! abandoned one (abandoned) at the phase it was in.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::event::LinkType;
use crate::ids::Provider;
use crate::phase::Phase;
use crate::session::Session;

/// The funnel's steps, in order. `mfa` is a side step between `authenticating` and
/// `authenticated`.
pub const FUNNEL_STEPS: [Phase; 9] = [
    Phase::Created,
    Phase::Opened,
    Phase::InstitutionSelected,
    Phase::Authenticating,
    Phase::Mfa,
    Phase::Authenticated,
    Phase::PermissionsGranted,
    Phase::AccountsSelected,
    Phase::Succeeded,
];

/// The default inactivity timeout: 30 minutes.
pub const DEFAULT_INACTIVITY_TIMEOUT_MINUTES: i64 = 30;

/// Exit statuses and error codes listed per step.
pub const TOP_REASONS: usize = 5;

/// Whether `session` is abandoned at `now`: not terminal, and silent for `timeout` or longer,
/// or declared abandoned by the engine's marker with no activity since
/// ([`Session::abandoned_at`]: the marker is written when the first rule became true, so the
/// two agree unless the timeout was raised since).
pub fn abandoned(session: &Session, now: DateTime<Utc>, timeout: Duration) -> bool {
    !session.phase().is_terminal()
        && (session.abandoned_at().is_some()
            || session
                .last_event_at()
                .is_some_and(|last| now - last >= timeout))
}

/// Whether `session` reached `phase` under the rule in the module docs.
pub fn reached(session: &Session, phase: Phase) -> bool {
    let journey = session.journey();
    match phase {
        Phase::Mfa => journey.visited(Phase::Mfa),
        Phase::Exited => journey.visited(Phase::Exited),
        main => journey.furthest.rank() >= main.rank(),
    }
}

/// What to group a funnel by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One funnel of everything.
    #[default]
    Nothing,
    /// One funnel per provider.
    Provider,
    /// One funnel per institution.
    Institution,
    /// One funnel per link type.
    LinkType,
    /// One funnel per last screen: the screen of the session's latest event that named one
    /// (Plaid's `view_name`, MoneyKit's screen), so drop-off shows where users stopped.
    Screen,
}

/// Which sessions a funnel covers, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelQuery {
    /// Only sessions whose first event is at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Only sessions whose first event is before this.
    pub until: Option<DateTime<Utc>>,
    /// Only this provider.
    pub provider: Option<Provider>,
    /// Only this institution id.
    pub institution: Option<String>,
    /// Only this link type.
    pub link_type: Option<LinkType>,
    /// How to group.
    pub group_by: GroupBy,
    /// The time abandonment is judged at.
    pub now: DateTime<Utc>,
    /// The inactivity timeout.
    pub inactivity_timeout: Duration,
}

impl FunnelQuery {
    /// Everything, ungrouped, judged at `now` with the default timeout.
    pub fn at(now: DateTime<Utc>) -> Self {
        FunnelQuery {
            since: None,
            until: None,
            provider: None,
            institution: None,
            link_type: None,
            group_by: GroupBy::Nothing,
            now,
            inactivity_timeout: Duration::minutes(DEFAULT_INACTIVITY_TIMEOUT_MINUTES),
        }
    }

    /// Whether `session` (of `provider`) is in the funnel: its first event in the window and
    /// every filter matching.
    pub fn matches(&self, provider: Provider, session: &Session) -> bool {
        let first = session.first_event_at();
        self.since
            .is_none_or(|since| first.is_some_and(|first| first >= since))
            && self
                .until
                .is_none_or(|until| first.is_some_and(|first| first < until))
            && self.provider.is_none_or(|wanted| wanted == provider)
            && self.institution.as_deref().is_none_or(|wanted| {
                session
                    .institution()
                    .is_some_and(|institution| institution.id == wanted)
            })
            && self
                .link_type
                .is_none_or(|wanted| session.link_type() == Some(wanted))
    }

    fn group_of(&self, provider: Provider, session: &Session) -> String {
        match self.group_by {
            GroupBy::Nothing => "all".to_owned(),
            GroupBy::Provider => provider.as_str().to_owned(),
            GroupBy::Institution => session
                .institution()
                .map_or_else(|| "(none)".to_owned(), |institution| institution.id.clone()),
            GroupBy::LinkType => session
                .link_type()
                .map_or("(unknown)", LinkType::as_str)
                .to_owned(),
            GroupBy::Screen => session
                .current_screen()
                .map_or_else(|| "(none)".to_owned(), |screen| screen.value.clone()),
        }
    }
}

/// One funnel (of a group).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Funnel {
    /// The group's key (`all` when ungrouped).
    pub group: String,
    /// Sessions in the funnel.
    pub sessions: u64,
    /// Sessions that succeeded.
    pub succeeded: u64,
    /// Sessions that exited without success.
    pub exited: u64,
    /// Sessions abandoned.
    pub abandoned: u64,
    /// Sessions still in progress.
    pub in_progress: u64,
    /// One entry per step of [`FUNNEL_STEPS`].
    pub steps: Vec<FunnelStep>,
}

/// One step of a funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelStep {
    /// The phase.
    pub phase: Phase,
    /// Sessions that reached it.
    pub reached: u64,
    /// `reached` over the previous main step's (for `mfa`: over `authenticating`; for
    /// `authenticated`: over `authenticating`); `None` for the first step or an empty previous.
    pub conversion: Option<f64>,
    /// Sessions that exited from this phase.
    pub dropped_exited: u64,
    /// Sessions abandoned in this phase.
    pub dropped_abandoned: u64,
    /// The most frequent exit statuses of the sessions that exited here.
    pub exit_statuses: Vec<(String, u64)>,
    /// The most frequent error codes raised in this phase.
    pub error_codes: Vec<(String, u64)>,
    /// Median time spent in the phase by sessions that left it, in seconds.
    pub time_in_phase_p50_s: Option<f64>,
    /// 90th percentile of the same.
    pub time_in_phase_p90_s: Option<f64>,
}

#[derive(Default)]
struct StepAcc {
    reached: u64,
    dropped_exited: u64,
    dropped_abandoned: u64,
    exit_statuses: HashMap<String, u64>,
    error_codes: HashMap<String, u64>,
    durations_s: Vec<f64>,
}

#[derive(Default)]
struct GroupAcc {
    sessions: u64,
    succeeded: u64,
    exited: u64,
    abandoned: u64,
    in_progress: u64,
    steps: BTreeMap<u8, StepAcc>,
}

fn step_index(phase: Phase) -> Option<usize> {
    FUNNEL_STEPS.iter().position(|step| *step == phase)
}

/// The step a step's conversion is relative to: the previous main step (for `mfa` and
/// `authenticated`: `authenticating`); `None` for the first.
pub(crate) fn previous_step(phase: Phase) -> Option<Phase> {
    match phase {
        Phase::Created => None,
        Phase::Mfa | Phase::Authenticated => Some(Phase::Authenticating),
        other => step_index(other)
            .filter(|index| *index > 0)
            .map(|index| FUNNEL_STEPS[index - 1]),
    }
}

/// Seconds from entering each phase to entering the next one, for the phases the session left.
pub(crate) fn durations(session: &Session) -> Vec<(Phase, f64)> {
    let entered = &session.journey().entered_at;
    let mut times: Vec<(DateTime<Utc>, Phase)> = Phase::ALL
        .iter()
        .filter_map(|phase| entered[usize::from(phase.rank())].map(|at| (at, *phase)))
        .collect();
    times.sort();
    times
        .windows(2)
        .map(|pair| {
            (
                pair[0].1,
                (pair[1].0 - pair[0].0).num_milliseconds() as f64 / 1000.0,
            )
        })
        .collect()
}

fn top(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(TOP_REASONS);
    sorted
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The funnels of `sessions` for `query`, one per group, in group order.
pub fn funnel<'a>(
    sessions: impl IntoIterator<Item = (Provider, &'a Session)>,
    query: &FunnelQuery,
) -> Vec<Funnel> {
    let mut groups: BTreeMap<String, GroupAcc> = BTreeMap::new();
    for (provider, session) in sessions {
        if !query.matches(provider, session) {
            continue;
        }
        let group = groups.entry(query.group_of(provider, session)).or_default();
        group.sessions += 1;
        for phase in FUNNEL_STEPS {
            if reached(session, phase) {
                group.steps.entry(phase.rank()).or_default().reached += 1;
            }
        }
        let is_abandoned = abandoned(session, query.now, query.inactivity_timeout);
        match session.phase() {
            Phase::Succeeded => group.succeeded += 1,
            Phase::Exited => {
                group.exited += 1;
                if let Some(exit) = session.exit() {
                    let step = group.steps.entry(exit.phase.rank()).or_default();
                    step.dropped_exited += 1;
                    let status = exit.status.clone().unwrap_or_else(|| "(none)".into());
                    *step.exit_statuses.entry(status).or_default() += 1;
                }
            }
            current if is_abandoned => {
                group.abandoned += 1;
                group
                    .steps
                    .entry(current.rank())
                    .or_default()
                    .dropped_abandoned += 1;
            }
            _ => group.in_progress += 1,
        }
        for (phase, code) in &session.journey().errors {
            *group
                .steps
                .entry(phase.rank())
                .or_default()
                .error_codes
                .entry(code.clone())
                .or_default() += 1;
        }
        for (phase, seconds) in durations(session) {
            group
                .steps
                .entry(phase.rank())
                .or_default()
                .durations_s
                .push(seconds);
        }
    }
    groups
        .into_iter()
        .map(|(key, mut group)| {
            let counts: HashMap<u8, u64> = group
                .steps
                .iter()
                .map(|(rank, step)| (*rank, step.reached))
                .collect();
            let reached_of = |phase: Phase| counts.get(&phase.rank()).copied().unwrap_or(0);
            let steps = FUNNEL_STEPS
                .iter()
                .map(|phase| {
                    let previous = previous_step(*phase);
                    let reached = reached_of(*phase);
                    let conversion = previous
                        .map(reached_of)
                        .filter(|previous| *previous > 0)
                        .map(|previous| reached as f64 / previous as f64);
                    let mut acc = group.steps.remove(&phase.rank()).unwrap_or_default();
                    acc.durations_s.sort_by(f64::total_cmp);
                    FunnelStep {
                        phase: *phase,
                        reached,
                        conversion,
                        dropped_exited: acc.dropped_exited,
                        dropped_abandoned: acc.dropped_abandoned,
                        exit_statuses: top(acc.exit_statuses),
                        error_codes: top(acc.error_codes),
                        time_in_phase_p50_s: percentile(&acc.durations_s, 0.5),
                        time_in_phase_p90_s: percentile(&acc.durations_s, 0.9),
                    }
                })
                .collect();
            Funnel {
                group: key,
                sessions: group.sessions,
                succeeded: group.succeeded,
                exited: group.exited,
                abandoned: group.abandoned,
                in_progress: group.in_progress,
                steps,
            }
        })
        .collect()
}

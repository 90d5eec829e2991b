//! Funnels from the maintained counters: a query reads the counters of the buckets and groups
//! it covers, the sessions of the partial hours at the edges of its window, and the live
//! sessions (to tell in-progress from abandoned), never every session stored.
//!
//! The window `[since, until)` of first event times splits into whole days (read from the
//! daily counters), whole hours around them (the hourly counters), and the partial hours at
//! either end (their sessions, from the first-event-time index, each counted from its state).
//! Every open session is counted abandoned by the counters; the sessions of the
//! last-event-time index newer than `now - timeout` are the live ones, and each of them in the
//! funnel moves back to in progress.

use std::ops::ControlFlow;

use linkflow_core::aggregate::{contribution, Group, Tally};
use linkflow_core::funnel::{abandoned, Funnel, FunnelQuery};
use linkflow_core::SessionId;
use linkflow_store::EventStore;

use crate::cache::SessionState;
use crate::error::EngineError;
use crate::folded::Folded;
use crate::index::{
    self, id_in, parse_group, parse_metric, time_bytes, time_from, DAILY, FIRST_EVENT, HOURLY,
    HOUR_MICROS, LAST_EVENT,
};
use crate::query::load_state;

/// What reading one funnel cost: counters, sessions of partial hours, live sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FunnelCost {
    pub counters: u64,
    pub edge_sessions: u64,
    pub live_sessions: u64,
}

/// The funnels for `query` from the counters (not for `GroupBy::Screen`: the caller folds
/// every session for it).
pub(crate) fn aggregated_funnel(
    store: &dyn EventStore,
    query: &FunnelQuery,
) -> Result<(Vec<Funnel>, FunnelCost), EngineError> {
    let mut tally = Tally::new(query.group_by);
    let mut cost = FunnelCost::default();
    let since = query.since.map(|at| at.timestamp_micros());
    let until = query.until.map(|at| at.timestamp_micros());
    // Whole hours: from the first hour starting at or after `since`, to the last hour ending
    // at or before `until`. Sessions without a first event time are in bucket `i64::MIN`,
    // which only a funnel without a window counts.
    let first_hour = match (since, until) {
        (Some(since), _) => ceil_div(since, HOUR_MICROS),
        (None, Some(_)) => i64::MIN + 1,
        (None, None) => i64::MIN,
    };
    let end_hour = until.map_or(i64::MAX, |until| until.div_euclid(HOUR_MICROS));
    if first_hour < end_hour {
        // Whole days inside the whole hours.
        let first_day = if first_hour <= i64::MIN + 1 {
            first_hour
        } else {
            ceil_div(first_hour, 24)
        };
        let end_day = if end_hour == i64::MAX {
            i64::MAX
        } else {
            end_hour.div_euclid(24)
        };
        if first_day < end_day {
            let day_start_hour = first_day.saturating_mul(24).max(first_hour);
            let day_end_hour = end_day.saturating_mul(24);
            read_counters(
                store,
                query,
                &mut tally,
                &mut cost,
                HOURLY,
                first_hour,
                day_start_hour,
            )?;
            read_counters(
                store, query, &mut tally, &mut cost, DAILY, first_day, end_day,
            )?;
            read_counters(
                store,
                query,
                &mut tally,
                &mut cost,
                HOURLY,
                day_end_hour,
                end_hour,
            )?;
        } else {
            read_counters(
                store, query, &mut tally, &mut cost, HOURLY, first_hour, end_hour,
            )?;
        }
        // The partial hours at the edges.
        if let Some(since) = since {
            edge_sessions(
                store,
                query,
                &mut tally,
                &mut cost,
                since,
                first_hour * HOUR_MICROS,
            )?;
        }
        if let Some(until) = until {
            edge_sessions(
                store,
                query,
                &mut tally,
                &mut cost,
                end_hour * HOUR_MICROS,
                until,
            )?;
        }
    } else {
        // A window within one hour: its sessions.
        edge_sessions(
            store,
            query,
            &mut tally,
            &mut cost,
            since.unwrap_or(i64::MIN),
            until.unwrap_or(i64::MAX),
        )?;
    }
    live_sessions(store, query, &mut tally, &mut cost)?;
    Ok((tally.funnels(), cost))
}

fn ceil_div(value: i64, by: i64) -> i64 {
    let floor = value.div_euclid(by);
    if value.rem_euclid(by) == 0 {
        floor
    } else {
        floor + 1
    }
}

/// Adds the counters of `resolution` for buckets `[from, to)` whose group the query keeps.
#[allow(clippy::too_many_arguments)]
fn read_counters(
    store: &dyn EventStore,
    query: &FunnelQuery,
    tally: &mut Tally,
    cost: &mut FunnelCost,
    resolution: u8,
    from: i64,
    to: i64,
) -> Result<(), EngineError> {
    if from >= to {
        return Ok(());
    }
    let start = [&[resolution][..], &time_bytes(from)].concat();
    let end = if to == i64::MAX {
        vec![resolution + 1]
    } else {
        [&[resolution][..], &time_bytes(to)].concat()
    };
    let mut failed = None;
    // A cell's group is parsed once for all its counters.
    let mut current: Option<(Vec<u8>, Group, bool)> = None;
    store.for_each_counter(&start, &end, &mut |cell, name, count| {
        cost.counters += 1;
        if current
            .as_ref()
            .is_none_or(|(known, _, _)| known.as_slice() != cell)
        {
            match parse_group(cell) {
                Ok(group) => {
                    let kept = keeps(query, &group);
                    current = Some((cell.to_vec(), group, kept));
                }
                Err(error) => {
                    failed = Some(error);
                    return ControlFlow::Break(());
                }
            }
        }
        let Some((_, group, true)) = &current else {
            return ControlFlow::Continue(());
        };
        match parse_metric(cell, name) {
            Ok(metric) => {
                tally.add(group, &metric, count);
                ControlFlow::Continue(())
            }
            Err(error) => {
                failed = Some(error);
                ControlFlow::Break(())
            }
        }
    })?;
    match failed {
        Some(error) => Err(linkflow_store::StoreError::Corrupt(error).into()),
        None => Ok(()),
    }
}

/// Whether the query's filters keep a group.
fn keeps(query: &FunnelQuery, group: &Group) -> bool {
    query.provider.is_none_or(|wanted| wanted == group.provider)
        && query
            .institution
            .as_deref()
            .is_none_or(|wanted| group.institution.as_deref() == Some(wanted))
        && query
            .link_type
            .is_none_or(|wanted| group.link_type == Some(wanted))
}

/// Calls `visit` with the state of every session whose index key of `family` is in
/// `[from, to)` (times in microseconds), each loaded as its key is read (nothing collected).
fn sessions_by_time(
    store: &dyn EventStore,
    family: u8,
    from: i64,
    to: i64,
    visit: &mut dyn FnMut(&SessionId, SessionState),
) -> Result<(), EngineError> {
    if from >= to {
        return Ok(());
    }
    let start = time_from(family, from);
    let end = if to == i64::MAX {
        vec![family + 1]
    } else {
        time_from(family, to)
    };
    let mut failed = None;
    store.for_each_index_key(&start, &end, &mut |key| {
        let loaded = id_in(key)
            .map_err(|error| EngineError::from(linkflow_store::StoreError::Corrupt(error)))
            .and_then(|id| Ok((load_state(store, &id)?, id)));
        match loaded {
            Ok((Some(state), id)) => visit(&id, state),
            Ok((None, _)) => {}
            Err(error) => {
                failed = Some(error);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    failed.map_or(Ok(()), Err)
}

/// Adds the sessions whose first event time is in `[from, to)` and which the query keeps.
fn edge_sessions(
    store: &dyn EventStore,
    query: &FunnelQuery,
    tally: &mut Tally,
    cost: &mut FunnelCost,
    from: i64,
    to: i64,
) -> Result<(), EngineError> {
    sessions_by_time(store, FIRST_EVENT, from, to, &mut |_, state| {
        if let Folded::Session(timeline) = &state.folded {
            cost.edge_sessions += 1;
            if query.matches(state.provider, &timeline.state) {
                tally.add_contribution(&contribution(state.provider, &timeline.state));
            }
        }
    })
}

/// Moves every live session the funnel holds from abandoned to in progress.
fn live_sessions(
    store: &dyn EventStore,
    query: &FunnelQuery,
    tally: &mut Tally,
    cost: &mut FunnelCost,
) -> Result<(), EngineError> {
    let cutoff = query.now - query.inactivity_timeout;
    // A session is live when its last event is after the cutoff; the index holds minutes,
    // so the cutoff's own minute is read and each session checked exactly.
    let from = index::grain_floor(cutoff.timestamp_micros());
    sessions_by_time(store, LAST_EVENT, from, i64::MAX, &mut |_, state| {
        if let Folded::Session(timeline) = &state.folded {
            let session = &timeline.state;
            cost.live_sessions += 1;
            if !session.phase().is_terminal()
                && !abandoned(session, query.now, query.inactivity_timeout)
                && session.last_event_at().is_some()
                && query.matches(state.provider, session)
            {
                tally.live(&Group::of(state.provider, session), session.phase());
            }
        }
    })
}

/// What the engine's gauges say now: read from counters every commit maintains and the live
/// sessions, so a read costs the same at one session and at a million.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Gauges {
    /// Sessions by phase, indexed by [`linkflow_core::Phase::rank`].
    pub sessions_by_phase: [u64; 10],
    /// Events that their stream's fold rejects now (sessions and accounts).
    pub rejected_events: u64,
    /// Quarantined payloads not released yet.
    pub quarantine_pending: u64,
    /// Quarantined payloads released by a redrive.
    pub quarantine_released: u64,
    /// Open sessions (neither succeeded nor exited) whose last event is at least the
    /// inactivity timeout old.
    pub abandoned: u64,
}

/// The gauges, judged at `now` with `timeout`.
pub(crate) fn gauges(
    store: &dyn EventStore,
    now: chrono::DateTime<chrono::Utc>,
    timeout: chrono::Duration,
) -> Result<Gauges, EngineError> {
    let (mut gauges, open) = gauge_cell(store)?;
    let mut live = 0i64;
    let from = index::grain_floor((now - timeout).timestamp_micros());
    sessions_by_time(store, LAST_EVENT, from, i64::MAX, &mut |_, state| {
        if let Folded::Session(timeline) = &state.folded {
            let session = &timeline.state;
            if !session.phase().is_terminal() && !abandoned(session, now, timeout) {
                live += 1;
            }
        }
    })?;
    gauges.abandoned = u64::try_from(open - live).unwrap_or(0);
    Ok(gauges)
}

/// The gauge cell: every gauge but `abandoned`, and the open sessions with a last event time.
fn gauge_cell(store: &dyn EventStore) -> Result<(Gauges, i64), EngineError> {
    let mut gauges = Gauges::default();
    let mut open = 0i64;
    store.for_each_counter(
        &[index::GAUGE],
        &[index::GAUGE + 1],
        &mut |_, name, count| {
            let count_u = u64::try_from(count).unwrap_or(0);
            match name {
                [b'p', rank] => {
                    if let Some(slot) = gauges.sessions_by_phase.get_mut(usize::from(*rank)) {
                        *slot = count_u;
                    }
                }
                [b'r'] => gauges.rejected_events = count_u,
                [b'q'] => gauges.quarantine_pending = count_u,
                [b'Q'] => gauges.quarantine_released = count_u,
                [b'o'] => open = count,
                _ => {}
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok((gauges, open))
}

/// The quarantine's counts, from the gauge cell.
pub(crate) fn quarantine_counts(
    store: &dyn EventStore,
) -> Result<crate::QuarantineCounts, EngineError> {
    let (gauges, _) = gauge_cell(store)?;
    Ok(crate::QuarantineCounts {
        pending: gauges.quarantine_pending,
        released: gauges.quarantine_released,
    })
}

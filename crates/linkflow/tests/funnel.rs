//! The funnel counters (updated by every commit) give the same answer as a rebuild from the
//! log, whatever was ingested, in whatever order; abandonment shows in session lists.

use chrono::{Duration, TimeZone, Utc};
use linkflow::{Durability, Engine, EngineConfig, IncomingEvent, SessionFilter};
use linkflow_core::aggregate::SKETCH_RELATIVE_ERROR;
use linkflow_core::funnel::{FunnelQuery, GroupBy};
use linkflow_core::strategy::legal_walk;
use linkflow_core::{Event, EventKind, Provider, SessionId};
use proptest::prelude::*;

/// One walk: its provider, its events, and how far (in minutes) its times are shifted, so that
/// sessions start in different hours and days.
type Walk = (Provider, Vec<Event>, i64);

fn shifted(events: &[Event], minutes: i64) -> Vec<Event> {
    events
        .iter()
        .map(|event| {
            let mut event = event.clone();
            event.occurred_at = event.occurred_at.map(|at| at + Duration::minutes(minutes));
            event
        })
        .collect()
}

/// The aggregated funnel equals the exact one: every count equal, every time-in-phase
/// quantile within the sketch's relative error of the exact nearest-rank value.
fn assert_funnels_agree(
    aggregated: &[linkflow_core::funnel::Funnel],
    exact: &[linkflow_core::funnel::Funnel],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        aggregated.len(),
        exact.len(),
        "{:?} / {:?}",
        aggregated,
        exact
    );
    for (a, e) in aggregated.iter().zip(exact) {
        prop_assert_eq!(&a.group, &e.group);
        prop_assert_eq!(
            (
                a.sessions,
                a.succeeded,
                a.exited,
                a.abandoned,
                a.in_progress
            ),
            (
                e.sessions,
                e.succeeded,
                e.exited,
                e.abandoned,
                e.in_progress
            ),
            "group {}",
            a.group
        );
        for (sa, se) in a.steps.iter().zip(&e.steps) {
            prop_assert_eq!(
                (
                    sa.phase,
                    sa.reached,
                    sa.conversion,
                    sa.dropped_exited,
                    sa.dropped_abandoned
                ),
                (
                    se.phase,
                    se.reached,
                    se.conversion,
                    se.dropped_exited,
                    se.dropped_abandoned
                )
            );
            prop_assert_eq!(&sa.exit_statuses, &se.exit_statuses);
            prop_assert_eq!(&sa.error_codes, &se.error_codes);
            for (qa, qe) in [
                (sa.time_in_phase_p50_s, se.time_in_phase_p50_s),
                (sa.time_in_phase_p90_s, se.time_in_phase_p90_s),
            ] {
                match (qa, qe) {
                    (Some(qa), Some(qe)) => prop_assert!(
                        (qa - qe).abs() <= SKETCH_RELATIVE_ERROR * qe + 1e-9,
                        "{:?} time in phase {} against {}",
                        sa.phase,
                        qa,
                        qe
                    ),
                    (qa, qe) => prop_assert_eq!(qa, qe),
                }
            }
        }
    }
    Ok(())
}

/// Delivers the walks' events in `order` (a permutation of every event: late and out of order
/// deliveries fold streams again), in commits of `per_commit`, reopening the engine after the
/// `restart_at`-th commit; then compares the aggregated funnels with the exact rebuild from
/// the log for several clocks, windows and groupings, and checks verify.
fn run(
    walks: Vec<Walk>,
    order_seed: u64,
    per_commit: usize,
    restart_at: usize,
    windows: Vec<(Option<i64>, Option<i64>)>,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let mut config = EngineConfig::new(dir.path());
            config.durability = Durability::Buffered;
            Engine::open_with(config).unwrap()
        };
        let mut engine = open();
        let mut events: Vec<IncomingEvent> = walks
            .iter()
            .enumerate()
            .flat_map(|(index, (provider, events, shift))| {
                shifted(events, *shift).into_iter().map(move |event| {
                    IncomingEvent::new(
                        SessionId::new(format!("walk-{index}")).unwrap(),
                        *provider,
                        event,
                    )
                })
            })
            .collect();
        // A seeded shuffle (Fisher-Yates with a linear congruential generator).
        let mut seed = order_seed | 1;
        for i in (1..events.len()).rev() {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            events.swap(i, (seed >> 33) as usize % (i + 1));
        }
        for (commit, chunk) in events.chunks(per_commit.max(1)).enumerate() {
            engine.ingest_batch(chunk.to_vec()).await.unwrap();
            if commit == restart_at {
                engine.shutdown().await.unwrap();
                drop(engine);
                engine = open();
            }
        }
        let report = engine.verify().await.unwrap();
        prop_assert!(report.is_clean(), "{:?}", report.problems);
        // The gauges (from counters) agree with a walk of every session.
        let gauges = engine.gauges().await.unwrap();
        let sessions = engine.sessions(SessionFilter::default()).await.unwrap();
        let mut by_phase = [0u64; 10];
        for view in &sessions {
            by_phase[usize::from(view.state.phase().rank())] += 1;
        }
        prop_assert_eq!(gauges.sessions_by_phase, by_phase);
        let rejected: u64 = sessions
            .iter()
            .map(|view| u64::from(view.rejected))
            .sum::<u64>()
            + engine
                .accounts()
                .await
                .unwrap()
                .iter()
                .map(|view| u64::from(view.rejected))
                .sum::<u64>();
        prop_assert_eq!(gauges.rejected_events, rejected);
        let abandoned = SessionFilter {
            abandoned: Some(true),
            ..SessionFilter::default()
        };
        prop_assert_eq!(
            gauges.abandoned as usize,
            engine.sessions(abandoned).await.unwrap().len()
        );
        let day0 = Utc.with_ymd_and_hms(2023, 11, 29, 0, 0, 0).unwrap();
        let at = |minutes: i64| day0 + Duration::minutes(minutes);
        for now_minutes in [12 * 60 + 20, 40 * 60 + 7, 200 * 60] {
            for (since, until) in &windows {
                for group_by in [
                    GroupBy::Nothing,
                    GroupBy::Provider,
                    GroupBy::Institution,
                    GroupBy::LinkType,
                ] {
                    let mut query = FunnelQuery::at(at(now_minutes));
                    query.group_by = group_by;
                    query.since = since.map(at);
                    query.until = until.map(at);
                    let aggregated = engine.funnel(query.clone()).await.unwrap();
                    let rebuilt = engine.funnel_rebuilt(query).await.unwrap();
                    assert_funnels_agree(&aggregated, &rebuilt)?;
                }
            }
        }
        let mut everything = FunnelQuery::at(at(0));
        everything.group_by = GroupBy::Nothing;
        let total: u64 = engine
            .funnel(everything)
            .await
            .unwrap()
            .iter()
            .map(|funnel| funnel.sessions)
            .sum();
        prop_assert_eq!(
            total as usize,
            walks
                .iter()
                .filter(|(_, events, _)| !events.is_empty())
                .count()
        );
        Ok(())
    })
}

fn provider() -> impl Strategy<Value = Provider> {
    prop_oneof![
        Just(Provider::Moneykit),
        Just(Provider::Benji),
        Just(Provider::Knot),
        Just(Provider::Plaid)
    ]
}

/// A window of first event times, in minutes from the first walk's day: open at either end,
/// aligned to hours or days, or not aligned at all.
fn window() -> impl Strategy<Value = (Option<i64>, Option<i64>)> {
    let edge = prop_oneof![
        Just(None),
        (0i64..96).prop_map(|hour| Some(hour * 60)),
        (0i64..4).prop_map(|day| Some(day * 24 * 60)),
        (0i64..96 * 60).prop_map(Some),
    ];
    (edge.clone(), edge)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The funnels read from the counters the commits maintain equal the exact funnels of a
    /// rebuild from the log, over random legal walks of every provider, shifted across hours
    /// and days, delivered shuffled (late events fold their streams again) in several
    /// commits with a reopen in between, for clocks that find sessions live and abandoned and
    /// for windows open, aligned and not.
    #[test]
    fn the_aggregates_equal_a_rebuild_from_the_log(
        walks in proptest::collection::vec((provider(), legal_walk(25), 0i64..72 * 60), 1..8),
        order_seed in any::<u64>(),
        per_commit in 1usize..12,
        restart_at in 0usize..6,
        windows in proptest::collection::vec(window(), 1..4),
    ) {
        let walks = walks
            .into_iter()
            .map(|(provider, walk, shift)| (provider, walk.events, shift))
            .collect();
        run(walks, order_seed, per_commit, restart_at, windows)?;
    }
}

#[tokio::test]
async fn sessions_can_be_listed_by_abandonment_and_a_late_event_revives_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.inactivity_timeout = Duration::minutes(30);
    let engine = Engine::open_with(config).unwrap();
    let old = Utc::now() - Duration::hours(2);
    let id = SessionId::new("quiet").unwrap();
    let opened = Event::new(EventKind::Opened).at(old);
    engine
        .ingest(IncomingEvent::new(id.clone(), Provider::Moneykit, opened))
        .await
        .unwrap();
    let abandoned = SessionFilter {
        abandoned: Some(true),
        ..SessionFilter::default()
    };
    assert_eq!(engine.sessions(abandoned.clone()).await.unwrap().len(), 1);
    let view = engine.session(&id).await.unwrap().unwrap();
    assert!(engine.is_abandoned(&view.state));
    // A late event makes it live again.
    let screen = Event::new(EventKind::ScreenChanged).at(Utc::now());
    engine
        .ingest(IncomingEvent::new(id.clone(), Provider::Moneykit, screen))
        .await
        .unwrap();
    assert!(engine.sessions(abandoned).await.unwrap().is_empty());
    let live = SessionFilter {
        abandoned: Some(false),
        ..SessionFilter::default()
    };
    assert_eq!(engine.sessions(live).await.unwrap().len(), 1);
}

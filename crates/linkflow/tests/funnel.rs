//! The funnel projection (session snapshots, updated by every commit) gives the same answer as
//! a rebuild from the log, whatever was ingested; abandonment shows in session lists.

use chrono::{Duration, TimeZone, Utc};
use linkflow::{Durability, Engine, EngineConfig, IncomingEvent, SessionFilter};
use linkflow_core::funnel::{FunnelQuery, GroupBy};
use linkflow_core::strategy::legal_walk;
use linkflow_core::{Event, EventKind, Provider, SessionId};
use proptest::prelude::*;

fn run(walks: Vec<(Provider, Vec<Event>)>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        config.durability = Durability::Buffered;
        let engine = Engine::open_with(config).unwrap();
        // Interleave the sessions' events, one round at a time, in several commits.
        let longest = walks
            .iter()
            .map(|(_, events)| events.len())
            .max()
            .unwrap_or(0);
        for round in 0..longest {
            let batch: Vec<IncomingEvent> = walks
                .iter()
                .enumerate()
                .filter_map(|(index, (provider, events))| {
                    events.get(round).map(|event| {
                        IncomingEvent::new(
                            SessionId::new(format!("walk-{index}")).unwrap(),
                            *provider,
                            event.clone(),
                        )
                    })
                })
                .collect();
            engine.ingest_batch(batch).await.unwrap();
        }
        let now = Utc.with_ymd_and_hms(2023, 11, 29, 14, 0, 0).unwrap();
        for group_by in [
            GroupBy::Nothing,
            GroupBy::Provider,
            GroupBy::Institution,
            GroupBy::LinkType,
        ] {
            let mut query = FunnelQuery::at(now);
            query.group_by = group_by;
            let projected = engine.funnel(query.clone()).await.unwrap();
            let rebuilt = engine.funnel_rebuilt(query).await.unwrap();
            prop_assert_eq!(&projected, &rebuilt);
            let total: u64 = projected.iter().map(|funnel| funnel.sessions).sum();
            prop_assert_eq!(
                total as usize,
                walks
                    .iter()
                    .filter(|(_, events)| !events.is_empty())
                    .count()
            );
        }
        Ok(())
    })
}

fn provider() -> impl Strategy<Value = Provider> {
    prop_oneof![
        Just(Provider::Moneykit),
        Just(Provider::Benji),
        Just(Provider::Knot)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_projection_equals_a_rebuild_from_the_log(
        walks in proptest::collection::vec((provider(), legal_walk(25)), 1..8)
    ) {
        run(walks.into_iter().map(|(provider, walk)| (provider, walk.events)).collect())?;
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

//! Figure 14: what sealing costs (issue 29). Batch ingest (figure 1's cadence: provider JSON
//! decoded one batch ahead, 1,000 events per durable call) with a master key against the same
//! build with none, alternating runs on fresh stores in the same process; then the time to
//! erase a user who has 100 sessions, on a store that also holds the standard workload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use linkflow::privacy::MasterKey;
use linkflow::{Engine, EngineConfig, IncomingEvent};
use linkflow_core::{Event, EventKind, Provider, SessionId};

use crate::figures::{batch_ingest_pipelined, batch_ingest_with, incoming, BATCH, SEED};
use crate::workload::generate;
use crate::Options;

const MASTER: &str = "7a1c9e0b4d2f6a8c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c";

/// The bench's master key (a fixed one: the figures need no secret).
pub(crate) fn master() -> Option<Arc<MasterKey>> {
    Some(Arc::new(
        MasterKey::from_hex(MASTER).expect("the bench's key is hex"),
    ))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The events of `sessions` sessions of `user`, five each, with personal fields.
fn user_sessions(user: &str, sessions: usize) -> Vec<IncomingEvent> {
    let at = |second: u32| Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, second).unwrap();
    let mut events = Vec::with_capacity(sessions * 5);
    for n in 0..sessions {
        let id = SessionId::new(format!("{user}-session-{n}")).expect("a valid id");
        let mut opened = Event::new(EventKind::Opened).at(at(1));
        opened.attributes.external_user_id = Some(user.to_owned());
        let mut searched = Event::new(EventKind::InstitutionSearched).at(at(2));
        searched.attributes.search_term = Some(format!("{user} searches"));
        let selected = Event::new(EventKind::InstitutionSelected)
            .at(at(3))
            .with_institution("ins_1", Some("Bank"));
        let submitted = Event::new(EventKind::CredentialsSubmitted).at(at(4));
        let exited = Event::new(EventKind::Exited).at(at(5));
        for event in [opened, searched, selected, submitted, exited] {
            events.push(IncomingEvent::new(id.clone(), Provider::Moneykit, event));
        }
    }
    events
}

pub async fn figures(options: &Options, results: &mut BTreeMap<String, f64>) {
    let (events, rounds, users) = if options.quick {
        (20_000, 2, 3)
    } else {
        (options.events.min(200_000), 3, 9)
    };
    let deliveries = generate(events, SEED + 14);
    // Alternating, so that the machine's drift hits both alike.
    let (mut plain, mut sealed, mut inline) = (Vec::new(), Vec::new(), Vec::new());
    let keyed = |dir: &std::path::Path| {
        let mut config = EngineConfig::new(dir);
        config.master_key = master();
        config
    };
    for _ in 0..rounds {
        let dir = tempfile::tempdir().expect("a temporary directory");
        plain.push(batch_ingest_with(EngineConfig::new(dir.path()), &deliveries).await);
        // Sealed by the decoding thread ahead of the engine (`seal_events`), as it decodes.
        let dir = tempfile::tempdir().expect("a temporary directory");
        sealed.push(batch_ingest_pipelined(keyed(dir.path()), &deliveries, true).await);
        // Sealed inside each `ingest_batch` call, on the call's path.
        let dir = tempfile::tempdir().expect("a temporary directory");
        inline.push(batch_ingest_with(keyed(dir.path()), &deliveries).await);
    }
    let (plain, sealed, inline) = (median(&mut plain), median(&mut sealed), median(&mut inline));
    eprintln!(
        "figure 14: batch ingest of {events} events, median of {rounds}: {sealed:.0}/s sealed ahead, {inline:.0}/s sealed in each call, {plain:.0}/s without a master key"
    );
    results.insert("sealed_batch_ingest_events_per_s".into(), sealed);
    results.insert("sealed_in_call_batch_ingest_events_per_s".into(), inline);
    results.insert("unsealed_batch_ingest_events_per_s".into(), plain);
    results.insert(
        "sealed_vs_unsealed_batch_ingest_ratio".into(),
        sealed / plain,
    );
    results.insert(
        "sealed_in_call_vs_unsealed_batch_ingest_ratio".into(),
        inline / plain,
    );

    // Erasure of users with 100 sessions each, among the workload.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = EngineConfig::new(dir.path());
    config.master_key = master();
    let engine = Engine::open_with(config).expect("the engine opens");
    let context = linkflow_providers::DecodeContext::received_at(Utc::now());
    for chunk in deliveries.chunks(BATCH) {
        let batch = chunk
            .iter()
            .map(|delivery| incoming(delivery, &context))
            .collect();
        engine.ingest_batch(batch).await.expect("ingest succeeds");
    }
    let names: Vec<String> = (0..users).map(|n| format!("erased-user-{n}")).collect();
    for name in &names {
        for chunk in user_sessions(name, 100).chunks(BATCH) {
            engine
                .ingest_batch(chunk.to_vec())
                .await
                .expect("ingest succeeds");
        }
    }
    let mut millis = Vec::with_capacity(users);
    for name in &names {
        let started = Instant::now();
        let report = engine
            .erase_user(name, "bench")
            .await
            .expect("erasure succeeds");
        millis.push(started.elapsed().as_secs_f64() * 1_000.0);
        assert_eq!(report.streams, 100, "every session found");
    }
    let erase = median(&mut millis);
    eprintln!("figure 14: erasing a user with 100 sessions: {erase:.1} ms (median of {users})");
    results.insert("erase_user_100_sessions_ms".into(), erase);
    engine.shutdown().await.expect("shutdown");
}

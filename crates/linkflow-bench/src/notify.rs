//! Figure 15: notifications (issue 30). How many notifications a second `linkflow serve`'s
//! deliverer gets to a local receiver (answering 204 at once) from a store holding the
//! workload, and what delivering while ingesting costs batch ingest: figure 1's cadence with a
//! deliverer running against the same build without one, alternating runs on fresh stores in
//! the same process.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use chrono::Utc;
use linkflow::delivery::{DeliveryState, FileDeliveryState};
use linkflow::{Engine, EngineConfig, NotificationId};
use linkflow_core::Position;
use linkflow_http::deliver::{Deliverer, DeliveryConfig};
use tokio::sync::watch;

use crate::figures::{batch_ingest_with, incoming, BATCH, SEED};
use crate::workload::generate;
use crate::Options;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A receiver answering 204 to every POST: its URL and the count of what it got.
async fn receiver() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&count);
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("the receiver serves")
    });
    (format!("http://{address}/hook"), count)
}

/// A deliverer of `engine`'s notifications from the log's start to `url`, running until the
/// returned sender says stop.
fn deliver_from_start(
    engine: &Engine,
    dir: &std::path::Path,
    url: &str,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let state = Arc::new(FileDeliveryState::open(dir).expect("the delivery state opens"));
    let endpoint = state
        .add_endpoint(url, None, None, Utc::now())
        .expect("the endpoint is added");
    state
        .set_cursor(
            &endpoint.id,
            NotificationId {
                position: Position(0),
                index: u8::MAX,
            },
        )
        .expect("the cursor is set");
    let (stop, stopped) = watch::channel(false);
    let deliverer = Deliverer::new(engine.clone(), state, DeliveryConfig::default())
        .expect("the client builds");
    let running = tokio::spawn(async move {
        deliverer.run(stopped).await.expect("delivery runs");
    });
    (stop, running)
}

pub async fn figures(options: &Options, results: &mut BTreeMap<String, f64>) {
    let (events, rounds) = if options.quick {
        (20_000, 2)
    } else {
        (options.events.min(200_000), 3)
    };
    let deliveries = generate(events, SEED + 15);

    // Delivered per second, from a store holding the workload.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let engine = Engine::open(dir.path().join("data")).expect("the engine opens");
    let context = linkflow_providers::DecodeContext::received_at(Utc::now());
    for chunk in deliveries.chunks(BATCH) {
        let batch = chunk
            .iter()
            .map(|delivery| incoming(delivery, &context))
            .collect();
        engine.ingest_batch(batch).await.expect("ingest succeeds");
    }
    // Derived in-process (`Engine::notifications` from the start): the reader's own rate.
    let derive_started = Instant::now();
    let mut derive_ended = derive_started;
    let mut expected = 0u64;
    let mut notifications = engine.notifications(Position(0));
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(500), notifications.next()).await
    {
        expected += 1;
        derive_ended = Instant::now();
    }
    let derived = events as f64 / (derive_ended - derive_started).as_secs_f64();
    eprintln!("figure 15: the log's {events} events read into {expected} notifications at {derived:.0} events/s");
    results.insert("notifications_reader_events_per_s".into(), derived);
    let (url, count) = receiver().await;
    let started = Instant::now();
    let (stop, running) = deliver_from_start(&engine, &dir.path().join("delivery"), &url);
    while count.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = running.await;
    engine.shutdown().await.expect("shutdown");
    let rate = expected as f64 / elapsed;
    eprintln!(
        "figure 15: {expected} notifications of {events} events delivered in {elapsed:.2} s: {rate:.0}/s"
    );
    results.insert("notifications_delivered".into(), expected as f64);
    results.insert("notifications_delivered_per_s".into(), rate);

    // Batch ingest while a deliverer sends what it commits, against none; alternating.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (url, _) = receiver().await;
    for _ in 0..rounds {
        let dir = tempfile::tempdir().expect("a temporary directory");
        without
            .push(batch_ingest_with(EngineConfig::new(dir.path().join("data")), &deliveries).await);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = EngineConfig::new(dir.path().join("data"));
        let delivery = dir.path().join("delivery");
        let url = url.clone();
        with.push(
            crate::figures::batch_ingest_observed(config, &deliveries, move |engine| {
                deliver_from_start(engine, &delivery, &url)
            })
            .await,
        );
    }
    let (without, with) = (median(&mut without), median(&mut with));
    eprintln!(
        "figure 15: batch ingest of {events} events, median of {rounds}: {with:.0}/s delivering, {without:.0}/s not"
    );
    results.insert("delivering_batch_ingest_events_per_s".into(), with);
    results.insert("not_delivering_batch_ingest_events_per_s".into(), without);
    results.insert(
        "delivering_vs_not_batch_ingest_ratio".into(),
        with / without,
    );
}

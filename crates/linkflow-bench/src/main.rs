//! `linkflow-bench`: measures the engine against baselines in the same run, so that the ratio
//! holds on a shared, noisy machine even when absolute times drift.
//!
//! Figures so far:
//! 1. batch ingest with `Durability::Fsync`, 1,000 events per call, against bare sled inserting
//!    the same encoded records one key per event with the same flush + fsync every 1,000;
//! 2. concurrent durable ingest of single events from 1, 8 and 64 tasks (group commit).
//!
//! Usage: `linkflow-bench [--events N] [--quick] [--json] [--only batch|bare|writers]`.
#![forbid(unsafe_code)]

use std::fs::File;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use linkflow::{Engine, EngineConfig, IncomingEvent, IngestOutcome};
use linkflow_core::{Event, EventKind, Provider, SessionId};
use linkflow_store::{DedupeKey, NewEvent};

/// Events per ingest call and per fsync in figure 1 (and in its baseline).
const BATCH: usize = 1_000;

/// The steps of one synthetic session (a credentials flow with MFA and telemetry).
const FLOW: [EventKind; 12] = [
    EventKind::Opened,
    EventKind::ScreenChanged,
    EventKind::InstitutionSearched,
    EventKind::InstitutionSelected,
    EventKind::ScreenChanged,
    EventKind::CredentialsSubmitted,
    EventKind::OtpSubmitted,
    EventKind::ScreenChanged,
    EventKind::PermissionsGranted,
    EventKind::AccountsSelected,
    EventKind::ScreenChanged,
    EventKind::Succeeded,
];

struct Options {
    events: usize,
    json: bool,
    /// Run one figure only (`batch`, `bare`, `writers`), e.g. under a profiler.
    only: Option<String>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        events: 200_000,
        json: false,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => {
                let value = args.next().ok_or("--events needs a number")?;
                options.events = value
                    .replace('_', "")
                    .parse()
                    .map_err(|_| format!("--events: `{value}` is not a number"))?;
            }
            "--quick" => options.events = 20_000,
            "--json" => options.json = true,
            "--only" => {
                let figure = args
                    .next()
                    .ok_or("--only needs a figure: batch, bare or writers")?;
                if !["batch", "bare", "writers"].contains(&figure.as_str()) {
                    return Err(format!(
                        "--only: unknown figure `{figure}`; expected batch, bare or writers"
                    ));
                }
                options.only = Some(figure);
            }
            other => {
                return Err(format!(
                "unknown argument `{other}`; expected --events N, --quick, --json, --only FIGURE"
            ))
            }
        }
    }
    if options.events < BATCH {
        return Err(format!("--events must be at least {BATCH}"));
    }
    Ok(options)
}

/// Event `n` of the workload: session `n / 12`, step `n % 12` of [`FLOW`].
fn workload_event(n: usize) -> IncomingEvent {
    let session = SessionId::new(format!("bench-{:08}", n / FLOW.len())).expect("valid id");
    let at = Utc
        .timestamp_millis_opt(1_700_000_000_000 + n as i64 * 1_000)
        .single()
        .expect("a valid time");
    let kind = FLOW[n % FLOW.len()].clone();
    let mut event = Event::new(kind.clone()).at(at);
    match kind {
        EventKind::InstitutionSelected => {
            event = event.with_institution("moneykit-creds-bank", Some("Credentials Bank"))
        }
        EventKind::ScreenChanged => event = event.with_screen("Credentials"),
        _ => {}
    }
    let mut incoming = IncomingEvent::new(session, Provider::Moneykit, event);
    incoming.raw_name = Some(kind.name().to_owned());
    incoming
}

fn events_per_second(events: usize, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

/// Figure 1: the engine, `ingest_batch` of 1,000 events per call, each call durable.
async fn engine_batch_ingest(events: usize) -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let engine = Engine::open_with(EngineConfig::new(dir.path())).expect("the engine opens");
    let started = Instant::now();
    for chunk_start in (0..events).step_by(BATCH) {
        let batch: Vec<_> = (chunk_start..(chunk_start + BATCH).min(events))
            .map(workload_event)
            .collect();
        let outcomes = engine.ingest_batch(batch).await.expect("ingest succeeds");
        debug_assert!(outcomes
            .iter()
            .all(|outcome| matches!(outcome, IngestOutcome::Accepted { .. })));
    }
    let rate = events_per_second(events, started.elapsed());
    engine.shutdown().await.expect("shutdown");
    rate
}

/// Figure 1's baseline: bare sled, the same records (a `NewEvent` encoded as JSON), one key per
/// event (16-byte stream id + big-endian version), `flush` and `fsync` of sled's log file every
/// 1,000 inserts.
fn bare_sled_ingest(events: usize) -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 * 1024 * 1024)
        .open()
        .expect("sled opens");
    let log = File::open(dir.path().join("db")).expect("sled's log file");
    let started = Instant::now();
    for n in 0..events {
        let incoming = workload_event(n);
        let record = NewEvent {
            event_id: uuid::Uuid::now_v7(),
            dedupe_key: DedupeKey::derive(&[&n.to_be_bytes()]),
            provider: incoming.provider,
            body: incoming.body,
            raw_name: incoming.raw_name,
            raw: None,
            received_at: Utc::now(),
        };
        let value = serde_json::to_vec(&record).expect("encode");
        let mut key = [0u8; 24];
        key[..16].copy_from_slice(&(n / FLOW.len()).to_be_bytes().repeat(2)[..16]);
        key[16..].copy_from_slice(&((n % FLOW.len()) as u64 + 1).to_be_bytes());
        db.insert(key, value).expect("insert");
        if (n + 1) % BATCH == 0 || n + 1 == events {
            db.flush().expect("flush");
            log.sync_all().expect("fsync");
        }
    }
    events_per_second(events, started.elapsed())
}

/// Figure 2: `tasks` concurrent tasks each ingesting single events, durable; returns
/// (events/s, p50, p99) of the per-call latency.
async fn concurrent_single_ingest(tasks: usize, events: usize) -> (f64, Duration, Duration) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let engine = Engine::open_with(EngineConfig::new(dir.path())).expect("the engine opens");
    let per_task = events / tasks;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    // Each task owns whole sessions, so its events arrive in flow order.
                    let session = i / FLOW.len() * tasks + task;
                    let n = session * FLOW.len() + i % FLOW.len();
                    let call = Instant::now();
                    engine
                        .ingest(workload_event(n))
                        .await
                        .expect("ingest succeeds");
                    latencies.push(call.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.expect("task"));
    }
    let rate = events_per_second(latencies.len(), started.elapsed());
    latencies.sort_unstable();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    engine.shutdown().await.expect("shutdown");
    (rate, percentile(0.50), percentile(0.99))
}

#[tokio::main]
async fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("linkflow-bench: {message}");
            std::process::exit(2);
        }
    };
    match options.only.as_deref() {
        Some("batch") => {
            println!("{:.0}", engine_batch_ingest(options.events).await);
            return;
        }
        Some("bare") => {
            println!("{:.0}", bare_sled_ingest(options.events));
            return;
        }
        Some(_) => {
            let (rate, p50, p99) = concurrent_single_ingest(64, options.events).await;
            println!("{rate:.0} {}us {}us", p50.as_micros(), p99.as_micros());
            return;
        }
        None => {}
    }
    let engine = engine_batch_ingest(options.events).await;
    let bare = bare_sled_ingest(options.events);
    let single_events = (options.events / 20).clamp(640, 20_000);
    let one = concurrent_single_ingest(1, single_events.min(2_000)).await;
    let eight = concurrent_single_ingest(8, single_events).await;
    let sixty_four = concurrent_single_ingest(64, single_events).await;

    if options.json {
        let json = serde_json::json!({
            "events": options.events,
            "batch_ingest_events_per_s": engine,
            "bare_sled_events_per_s": bare,
            "batch_ingest_vs_bare_sled_ratio": engine / bare,
            "writers_1_events_per_s": one.0,
            "writers_1_p50_us": one.1.as_micros(),
            "writers_1_p99_us": one.2.as_micros(),
            "writers_8_events_per_s": eight.0,
            "writers_8_p50_us": eight.1.as_micros(),
            "writers_8_p99_us": eight.2.as_micros(),
            "writers_64_events_per_s": sixty_four.0,
            "writers_64_p50_us": sixty_four.1.as_micros(),
            "writers_64_p99_us": sixty_four.2.as_micros(),
            "writers_64_vs_1_ratio": sixty_four.0 / one.0,
        });
        println!("{json}");
    } else {
        println!("events: {}", options.events);
        println!(
            "{:<44} {:>12} {:>10} {:>10}",
            "figure", "events/s", "p50", "p99"
        );
        println!(
            "{:<44} {:>12.0}",
            "batch ingest, Fsync, 1,000/call (engine)", engine
        );
        println!(
            "{:<44} {:>12.0}",
            "bare sled, fsync every 1,000 (baseline)", bare
        );
        println!(
            "{:<44} {:>12.2}",
            "  ratio engine / bare sled",
            engine / bare
        );
        for (tasks, (rate, p50, p99)) in [(1, one), (8, eight), (64, sixty_four)] {
            println!(
                "{:<44} {:>12.0} {:>8}us {:>8}us",
                format!("single-event ingest, Fsync, {tasks} writers"),
                rate,
                p50.as_micros(),
                p99.as_micros()
            );
        }
        println!(
            "{:<44} {:>12.2}",
            "  ratio 64 writers / 1 writer",
            sixty_four.0 / one.0
        );
    }
}

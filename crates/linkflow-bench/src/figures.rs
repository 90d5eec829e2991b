//! The figures, each with its baseline measured in the same run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use linkflow::{Engine, EngineConfig, IncomingEvent, SealedEvents, WriteStats};
use linkflow_core::{Event, EventKind, Position, Provider, SessionId, Version};
use linkflow_providers::{decode, DecodeContext, Decoding};
use linkflow_store::record::{decode_event_record, encode_event, event_records};
use linkflow_store::{NewEvent, StoredEvent};

use crate::chart::Point;
use crate::workload::{generate, Delivery, Workload};
use crate::{Only, Options};

/// Events per call and per fsync in figure 1 and its baseline.
pub(crate) const BATCH: usize = 1_000;
pub(crate) const SEED: u64 = 20_261_123;
/// The session cache of the fixed-configuration footprint runs, in states.
const SMALL_CACHE: usize = 1_000;

pub(crate) fn per_second(events: usize, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

pub(crate) fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

pub(crate) fn incoming(delivery: &Delivery, context: &DecodeContext) -> IncomingEvent {
    let decoded =
        decode(delivery.provider.into(), &delivery.body, context).expect("the workload is JSON");
    let Decoding::Event(decoded) = decoded else {
        panic!("every workload payload names its stream");
    };
    IncomingEvent::from_decoded(decoded, context.received_at).expect("the workload is valid")
}

/// A delivery as the log would keep it (for the baselines, which write records themselves).
pub(crate) fn delivered(delivery: &Delivery, context: &DecodeContext) -> (SessionId, NewEvent) {
    let event = incoming(delivery, context);
    let data = NewEvent {
        event_id: uuid::Uuid::now_v7(),
        dedupe_key: event.dedupe_key.expect("adapters set a dedupe key"),
        provider: event.provider,
        body: event.body,
        raw_name: event.raw_name,
        raw: event.raw,
        received_at: context.received_at,
    };
    (event.session, data)
}

/// Figure 1: provider JSON decoded and ingested 1,000 per call, each call durable.
async fn batch_ingest(dir: &Path, deliveries: &[Delivery]) -> f64 {
    batch_ingest_with(EngineConfig::new(dir), deliveries).await
}

/// Figure 1 on any store. A decoding thread turns the provider JSON into events one batch
/// ahead of the engine, as a consumer of a delivery queue would; the calls stay one at a
/// time, so each is its own group commit and fsync, the baseline's cadence.
pub(crate) async fn batch_ingest_with(config: EngineConfig, deliveries: &[Delivery]) -> f64 {
    batch_ingest_pipelined(config, deliveries, false).await
}

/// Figure 1 with, when `seal_ahead`, the decoding thread also sealing each batch
/// (`Engine::seal_events`) before the engine takes it (`ingest_sealed`), as it decodes ahead.
pub(crate) async fn batch_ingest_pipelined(
    config: EngineConfig,
    deliveries: &[Delivery],
    seal_ahead: bool,
) -> f64 {
    let engine = Engine::open_with(config).expect("the engine opens");
    let rate = timed_batch_ingest(&engine, deliveries, seal_ahead);
    engine.shutdown().await.expect("shutdown");
    rate
}

/// Figure 1 with a task `start` spawns beside the engine (stopped once the ingest is timed):
/// what running it costs ingest.
pub(crate) async fn batch_ingest_observed(
    config: EngineConfig,
    deliveries: &[Delivery],
    start: impl FnOnce(
        &Engine,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ),
) -> f64 {
    let engine = Engine::open_with(config).expect("the engine opens");
    let (stop, running) = start(&engine);
    let rate = timed_batch_ingest(&engine, deliveries, false);
    let _ = stop.send(true);
    let _ = running.await;
    engine.shutdown().await.expect("shutdown");
    rate
}

/// The timed part of figure 1 on an open engine.
fn timed_batch_ingest(engine: &Engine, deliveries: &[Delivery], seal_ahead: bool) -> f64 {
    let context = DecodeContext::received_at(Utc::now());
    let runtime = tokio::runtime::Handle::current();
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let (decoded, batches) =
                std::sync::mpsc::sync_channel::<Result<Vec<IncomingEvent>, SealedEvents>>(1);
            let sealer = engine.clone();
            scope.spawn(move || {
                for chunk in deliveries.chunks(BATCH) {
                    let events: Vec<IncomingEvent> = chunk
                        .iter()
                        .map(|delivery| incoming(delivery, &context))
                        .collect();
                    let batch = if seal_ahead {
                        Err(sealer.seal_events(events).expect("sealing succeeds"))
                    } else {
                        Ok(events)
                    };
                    if decoded.send(batch).is_err() {
                        return;
                    }
                }
            });
            for batch in batches {
                let ingested = match batch {
                    Ok(events) => runtime.block_on(engine.ingest_batch(events)),
                    Err(sealed) => runtime.block_on(engine.ingest_sealed(sealed)),
                };
                ingested.expect("ingest succeeds");
            }
        });
    });
    per_second(deliveries.len(), started.elapsed())
}

/// Decoded events ingested `BATCH` per call, each call durable (figure 1's cadence, with the
/// decoding done before the timer).
async fn ingest_decoded(config: EngineConfig, events: &[IncomingEvent]) -> f64 {
    let engine = Engine::open_with(config).expect("the engine opens");
    let started = Instant::now();
    for chunk in events.chunks(BATCH) {
        engine
            .ingest_batch(chunk.to_vec())
            .await
            .expect("ingest succeeds");
    }
    let rate = per_second(events.len(), started.elapsed());
    engine.shutdown().await.expect("shutdown");
    rate
}

/// Figure 10: the workload's sessions in the Plaid shape (each session's first event where it
/// was, the rest in one burst ~1,200 events later), the bursts shuffled against the same
/// bursts in provider-time order: what late events cost (each one folds its session again).
/// Returns (shuffled, in order) events/s, alternating twice and keeping each one's best.
async fn plaid_shape_ingest(deliveries: &[Delivery]) -> (f64, f64) {
    let context = DecodeContext::received_at(Utc::now());
    let decoded: Vec<crate::workload::SessionEvent<IncomingEvent>> = deliveries
        .iter()
        .map(|delivery| {
            let event = incoming(delivery, &context);
            (delivery.session, event.body.occurred_at(), event)
        })
        .collect();
    let in_order = crate::workload::plaid_like(&decoded, false, SEED);
    let shuffled = crate::workload::plaid_like(&decoded, true, SEED);
    drop(decoded);
    let (mut best_shuffled, mut best_in_order) = (0f64, 0f64);
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("a temporary directory");
        best_in_order =
            best_in_order.max(ingest_decoded(EngineConfig::new(dir.path()), &in_order).await);
        let dir = tempfile::tempdir().expect("a temporary directory");
        best_shuffled =
            best_shuffled.max(ingest_decoded(EngineConfig::new(dir.path()), &shuffled).await);
    }
    (best_shuffled, best_in_order)
}

/// Figure 11: figure 1 as another build of the bench measures it (`--baseline-bin`, e.g. the
/// build of an earlier commit), run as a child; `run_all` runs it twice, alternating with this
/// build's two runs of figure 1.
fn baseline_bin_ingest(binary: &Path, events: usize) -> Option<f64> {
    let output = std::process::Command::new(binary)
        .args(["--only", "ingest", "--json", "--events"])
        .arg(events.to_string())
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "linkflow-bench: the baseline bench {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let results: BTreeMap<String, f64> =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last()?).ok()?;
    results.get("batch_ingest_events_per_s").copied()
}

/// Figure 1's baseline: bare sled, the same records (each delivery decoded outside the timer
/// and encoded with the store's record codec), one key per event, flush + fsync of the log
/// file every 1,000.
fn bare_sled_ingest(dir: &Path, deliveries: &[Delivery]) -> f64 {
    let context = DecodeContext::received_at(Utc::now());
    let records: Vec<(Vec<u8>, Vec<u8>)> = deliveries
        .iter()
        .enumerate()
        .map(|(n, delivery)| {
            let (session, data) = delivered(delivery, &context);
            let mut key = vec![b'S'];
            key.extend_from_slice(session.as_str().as_bytes());
            let record = StoredEvent {
                stream: session,
                version: Version(n as u64 + 1),
                position: Position(n as u64 + 1),
                stored_at: context.received_at,
                rejected: false,
                data,
            };
            key.extend_from_slice(&(n as u64).to_be_bytes());
            (key, encode_event(&record))
        })
        .collect();
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(64 << 20)
        .open()
        .expect("sled opens");
    let log = File::open(dir.join("db")).expect("sled's log file");
    let started = Instant::now();
    for (index, (key, value)) in records.into_iter().enumerate() {
        db.insert(key, value).expect("insert");
        if (index + 1) % BATCH == 0 {
            db.flush().expect("flush");
            log.sync_all().expect("fsync");
        }
    }
    db.flush().expect("flush");
    log.sync_all().expect("fsync");
    per_second(deliveries.len(), started.elapsed())
}

/// Figure 9: `linkflow ingest` of figure 1's workload, written as JSON Lines files (one per
/// provider, each payload a line, in delivery order), run as a user runs it: the release
/// binary next to this one, one process per file, into a fresh data directory. Timed from the
/// first process's start to the last one's exit (reading, splitting, decoding, three store
/// opens and closes included). `None` when the binary is not built.
fn cli_file_ingest(deliveries: &[Delivery]) -> Option<f64> {
    let binary = std::env::current_exe().ok()?.with_file_name("linkflow");
    if !binary.exists() {
        eprintln!(
            "linkflow-bench: figure 9 skipped: {} is missing (cargo build --release -p linkflow-cli)",
            binary.display()
        );
        return None;
    }
    let files = tempfile::tempdir().expect("a temporary directory");
    let mut inputs = Vec::new();
    for provider in Provider::ALL {
        let path = files.path().join(format!("{provider}.jsonl"));
        let mut file = std::io::BufWriter::new(File::create(&path).expect("the input file"));
        for delivery in deliveries.iter().filter(|d| d.provider == provider) {
            writeln!(file, "{}", delivery.body).expect("the input is written");
        }
        file.flush().expect("the input is written");
        inputs.push((provider, path));
    }
    let data = tempfile::tempdir().expect("a temporary directory");
    let started = Instant::now();
    for (provider, input) in &inputs {
        let status = std::process::Command::new(&binary)
            .arg("--data-dir")
            .arg(data.path())
            .args(["ingest", "--provider", provider.as_str(), "--quiet"])
            .arg(input)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("the CLI runs");
        assert!(
            status.success(),
            "linkflow ingest {}: {status}",
            input.display()
        );
    }
    Some(per_second(deliveries.len(), started.elapsed()))
}

/// Figure 3's two scans.
#[derive(Debug, Clone, Copy)]
pub enum Scan {
    /// The engine's cold rebuild.
    Rebuild,
    /// The bare sled scan + decode baseline.
    Bare,
}

/// Runs one of figure 3's scans in a fresh process: each starts from the same state (a new
/// heap, the store's files in the OS cache). In one process they would not: the engine's
/// rebuild runs on a blocking-pool thread whose allocator arena starts empty, while the
/// baseline on the main thread reuses the harness's freed memory (at 1M events the kernel
/// zeroing fresh pages was ~60% of the engine's scan samples, none of the baseline's).
/// Returns events per second and events scanned.
async fn measure_scan(scan: Scan, dir: &Path) -> (f64, f64) {
    let exe = std::env::current_exe().expect("the bench's own path");
    let kind = match scan {
        Scan::Rebuild => "rebuild",
        Scan::Bare => "bare",
    };
    let output = tokio::process::Command::new(exe)
        .arg("--scan-child")
        .arg(kind)
        .arg(dir)
        .output()
        .await
        .expect("the scan child runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace().map(|field| field.parse::<f64>());
    match (output.status.success(), fields.next(), fields.next()) {
        (true, Some(Ok(rate)), Some(Ok(events))) => (rate, events),
        _ => panic!(
            "the {kind} scan child failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Figure 3 over the store in `dir`: the first bare scan after the ingest (sled rewrites, as it
/// reads them, the pages the ingest left in many fragments, so the first process to read a
/// freshly written store often pays for that: 0.5-0.6x of a later scan here), one more
/// untimed open and scan, then the engine's rebuild and the bare baseline alternating, each in
/// its own process, on the settled store, the better of two of each (a one-second scan on this
/// shared machine is sometimes halved by a neighbour). Returns (first bare scan, rebuild,
/// events folded, bare scan) in events per second.
async fn settled_scans(dir: &Path) -> (f64, f64, f64, f64) {
    let (first, _) = measure_scan(Scan::Bare, dir).await;
    measure_scan(Scan::Bare, dir).await;
    let (mut rebuild, mut scan, mut folded) = (0.0f64, 0.0f64, 0.0);
    for _ in 0..2 {
        let (rate, events) = measure_scan(Scan::Rebuild, dir).await;
        (rebuild, folded) = (rebuild.max(rate), events);
        scan = scan.max(measure_scan(Scan::Bare, dir).await.0);
    }
    (first, rebuild, folded, scan)
}

/// The scan child: one of figure 3's scans over `dir`; prints `events-per-s events`.
pub async fn scan_child(scan: Scan, dir: &Path) {
    let (rate, events) = match scan {
        Scan::Rebuild => cold_rebuild(dir).await,
        // On a blocking-pool thread, where the engine's reads run: the same allocator arena
        // conditions for both scans.
        Scan::Bare => {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || bare_scan_decode(&dir))
                .await
                .expect("the bare scan runs")
        }
    };
    println!("{rate} {events}");
}

/// Figure 3: open the store of figure 1 and fold every stream from its events.
async fn cold_rebuild(dir: &Path) -> (f64, u64) {
    let engine = Engine::open_with(EngineConfig::new(dir)).expect("the engine opens");
    let started = Instant::now();
    let stats = engine.rebuild_from_log().await.expect("the log folds");
    let rate = per_second(stats.events as usize, started.elapsed());
    engine.shutdown().await.expect("shutdown");
    (rate, stats.events)
}

/// Figure 3's baseline: a bare sled scan of the same records, each decoded with the store's
/// record codec (checksum, binary fields, the compact canonical event).
fn bare_scan_decode(dir: &Path) -> (f64, u64) {
    // The same sled cache as the engine's store (and figure 1's baseline).
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(64 << 20)
        .open()
        .expect("sled opens");
    let started = Instant::now();
    let mut count = 0usize;
    for entry in db.scan_prefix([b'S']) {
        let (_, value) = entry.expect("scan");
        // A value is one record or the packed records of one commit's run of a stream.
        for bytes in event_records("event", &value).expect("records") {
            let record: StoredEvent = decode_event_record("event", bytes).expect("decode");
            std::hint::black_box(&record);
            count += 1;
        }
    }
    (per_second(count, started.elapsed()), count as u64)
}

/// One run of concurrent writers: throughput, latency, and where the write path's time went.
pub(crate) struct Concurrent {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub stats: WriteStats,
    pub elapsed: Duration,
}

/// Figure 2: `tasks` writers each ingesting single events, durable. Each writer owns whole
/// sessions, so their events arrive in order.
async fn concurrent_single(tasks: usize, deliveries: &[Delivery]) -> Concurrent {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // As `linkflow serve` opens it: the log's first segment zero-filled (see `preallocate_log`).
    let config = EngineConfig::new(dir.path()).preallocating_log();
    concurrent_single_with(config, tasks, deliveries).await
}

/// Figure 2 on any store.
pub(crate) async fn concurrent_single_with(
    config: EngineConfig,
    tasks: usize,
    deliveries: &[Delivery],
) -> Concurrent {
    let engine = Engine::open_with(config).expect("the engine opens");
    let context = DecodeContext::received_at(Utc::now());
    let mut shares: Vec<Vec<IncomingEvent>> = vec![Vec::new(); tasks];
    for delivery in deliveries {
        shares[delivery.session % tasks].push(incoming(delivery, &context));
    }
    let started = Instant::now();
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(share.len());
                for event in share {
                    let call = Instant::now();
                    engine.ingest(event).await.expect("ingest succeeds");
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
    let elapsed = started.elapsed();
    let stats = engine.write_stats();
    latencies.sort_unstable();
    engine.shutdown().await.expect("shutdown");
    Concurrent {
        rate: per_second(latencies.len(), elapsed),
        p50_us: percentile_us(&latencies, 0.5),
        p99_us: percentile_us(&latencies, 0.99),
        stats,
        elapsed,
    }
}

/// Figure 4: reads that always miss the one-entry cache: snapshot + tail, at `events_per_session`.
async fn cache_miss_reads(events_per_session: usize, sessions: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = EngineConfig::new(dir.path());
    config.cache_sessions = 1;
    let engine = Engine::open_with(config).expect("the engine opens");
    let ids: Vec<SessionId> = (0..sessions)
        .map(|n| SessionId::new(format!("read-{n}")).expect("valid id"))
        .collect();
    for round in 0..events_per_session {
        let batch = ids
            .iter()
            .map(|id| {
                let at = chrono::DateTime::from_timestamp(1_700_000_000 + round as i64, 0)
                    .expect("valid time");
                IncomingEvent::new(
                    id.clone(),
                    Provider::Moneykit,
                    Event::new(EventKind::ScreenChanged)
                        .at(at)
                        .with_screen("Accounts"),
                )
            })
            .collect();
        engine.ingest_batch(batch).await.expect("ingest");
    }
    // At least 2,000 reads, so that the p99 is not one or two outliers.
    let rounds = 2_000usize.div_ceil(sessions).max(5);
    let mut latencies = Vec::new();
    for _ in 0..rounds {
        for id in &ids {
            let call = Instant::now();
            let view = engine
                .session(id)
                .await
                .expect("read")
                .expect("the session exists");
            latencies.push(call.elapsed());
            std::hint::black_box(view);
        }
    }
    latencies.sort_unstable();
    engine.shutdown().await.expect("shutdown");
    (
        percentile_us(&latencies, 0.5),
        percentile_us(&latencies, 0.99),
    )
}

fn directory_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            total += if path.is_dir() {
                directory_bytes(&path)
            } else {
                entry.metadata().map_or(0, |m| m.len())
            };
        }
    }
    total
}

/// A memory figure of this process from `/proc/self/status` (`VmHWM:` peak, `VmRSS:` now),
/// in KiB; 0 where it cannot be read.
pub(crate) fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn peak_rss_kb() -> u64 {
    status_kb("VmHWM:")
}

/// Figure 5 in a fresh process: one batch ingest of `events` streamed from the generator
/// (1,000 at a time, so the process never holds the workload), then peak RSS and bytes on
/// disk. Prints `peak-kB closed-disk-bytes workload-kB cached-states cache-bytes open-disk-bytes`
/// (disk with the store closed, then with it still open: the write-ahead log's segments).
pub async fn footprint_child(events: usize, cache_sessions: Option<usize>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = EngineConfig::new(dir.path());
    if let Some(cache_sessions) = cache_sessions {
        config.cache_sessions = cache_sessions;
    }
    let engine = Engine::open_with(config).expect("the engine opens");
    let context = DecodeContext::received_at(Utc::now());
    let mut workload = Workload::new(SEED).take(events);
    let mut workload_bytes = 0usize;
    loop {
        let chunk: Vec<Delivery> = workload.by_ref().take(BATCH).collect();
        if chunk.is_empty() {
            break;
        }
        workload_bytes += chunk.iter().map(|d| d.body.len()).sum::<usize>();
        let batch = chunk
            .iter()
            .map(|delivery| incoming(delivery, &context))
            .collect();
        engine.ingest_batch(batch).await.expect("ingest succeeds");
    }
    let cache = engine.cache_stats();
    engine.shutdown().await.expect("shutdown");
    // The store still open: sled and its write-ahead log's segments (current and spares).
    let open = directory_bytes(dir.path());
    drop(engine);
    // Closed: the log checkpointed into sled and deleted, as the store rests between runs.
    let closed = directory_bytes(dir.path());
    println!(
        "{} {} {} {} {} {}",
        peak_rss_kb(),
        closed,
        workload_bytes / 1024,
        cache.states,
        cache.bytes,
        open
    );
}

/// What one footprint child measured.
struct Footprint {
    rss_kb: f64,
    disk_per_event: f64,
    open_disk_per_event: f64,
    workload_kb: f64,
    cache_states: f64,
    cache_bytes: f64,
}

async fn footprint(events: usize, cache_sessions: Option<usize>) -> Option<Footprint> {
    let exe = std::env::current_exe().ok()?;
    let mut command = tokio::process::Command::new(exe);
    command.args(["--footprint-child", "--events", &events.to_string()]);
    if let Some(cache_sessions) = cache_sessions {
        command.args(["--cache-sessions", &cache_sessions.to_string()]);
    }
    let output = command.output().await.ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let mut numbers = text.split_whitespace().map(|n| n.parse::<f64>().ok());
    Some(Footprint {
        rss_kb: numbers.next()??,
        disk_per_event: numbers.next()?? / events as f64,
        workload_kb: numbers.next()??,
        cache_states: numbers.next()??,
        cache_bytes: numbers.next()??,
        open_disk_per_event: numbers.next()?? / events as f64,
    })
}

/// Figure 8: `clients` concurrent HTTP clients posting single MoneyKit events to an in-process
/// server on loopback.
async fn http_ingest(deliveries: &[Delivery], clients: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // As `linkflow serve` opens it (the log's first segment zero-filled).
    let config = EngineConfig::new(dir.path()).preallocating_log();
    let engine = Engine::open_with(config).expect("the engine opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let app = linkflow_http::router(engine.clone(), linkflow_http::HttpConfig::default());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let moneykit: Vec<String> = deliveries
        .iter()
        .filter(|delivery| delivery.provider == Provider::Moneykit)
        .map(|delivery| delivery.body.clone())
        .collect();
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); clients];
    for (index, body) in moneykit.into_iter().enumerate() {
        shares[index % clients].push(body);
    }
    let client = reqwest::Client::new();
    let url = format!("http://{address}/v1/events/moneykit");
    let started = Instant::now();
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(share.len());
                for body in share {
                    let call = Instant::now();
                    let response = client.post(&url).body(body).send().await.expect("request");
                    assert!(response.status().is_success());
                    latencies.push(call.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.expect("client"));
    }
    let rate = per_second(latencies.len(), started.elapsed());
    latencies.sort_unstable();
    server.abort();
    (rate, percentile_us(&latencies, 0.99))
}

/// Events of figure 2's workload (and figure 7's single-event part).
fn single_events(options: &Options) -> usize {
    if options.quick {
        1_500
    } else {
        12_000
    }
}

/// Figure 2: 1, 8 and 64 concurrent durable writers of single events.
async fn concurrent_figures(options: &Options, results: &mut BTreeMap<String, f64>) {
    let single = single_events(options);
    let single_deliveries = generate(single, SEED + 1);
    let one = concurrent_single(1, &single_deliveries[..single.min(1_000)]).await;
    let eight = concurrent_single(8, &single_deliveries).await;
    let sixty_four = concurrent_single(64, &single_deliveries).await;
    results.insert("writers_64_vs_1_ratio".into(), sixty_four.rate / one.rate);
    write_path_figures(&sixty_four, results);
    for (writers, run) in [(1, one), (8, eight), (64, sixty_four)] {
        results.insert(format!("writers_{writers}_events_per_s"), run.rate);
        results.insert(format!("writers_{writers}_p50_us"), run.p50_us);
        results.insert(format!("writers_{writers}_p99_us"), run.p99_us);
    }
}

/// Where a 64-writer request's time goes (the engine's `write_stats`): the mean per request of
/// each stage, events per group, and how busy the writer and sync threads were.
fn write_path_figures(run: &Concurrent, results: &mut BTreeMap<String, f64>) {
    let stats = &run.stats;
    let requests = stats.requests.max(1) as f64;
    let mean_us = |total: Duration| total.as_secs_f64() * 1e6 / requests;
    for (stage, total) in [
        ("queued", stats.queued),
        ("committing", stats.committing),
        ("waiting_for_sync", stats.waiting_for_sync),
        ("syncing", stats.syncing),
    ] {
        results.insert(format!("writers_64_{stage}_us"), mean_us(total));
    }
    results.insert(
        "writers_64_events_per_group".into(),
        stats.events as f64 / stats.groups.max(1) as f64,
    );
    let elapsed = run.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    results.insert(
        "writers_64_writer_busy_share".into(),
        stats.writer_busy.as_secs_f64() / elapsed,
    );
    results.insert(
        "writers_64_sync_busy_share".into(),
        stats.sync_busy.as_secs_f64() / elapsed,
    );
}

/// Figure 4: session reads on a cache miss at 10 and 1,000 events per session.
async fn read_figures(options: &Options, results: &mut BTreeMap<String, f64>) {
    let (sessions_short, sessions_long) = if options.quick { (50, 5) } else { (400, 40) };
    let short = cache_miss_reads(10, sessions_short).await;
    let long = cache_miss_reads(1_000, sessions_long).await;
    results.insert("read_miss_10_events_p50_us".into(), short.0);
    results.insert("read_miss_10_events_p99_us".into(), short.1);
    results.insert("read_miss_1000_events_p50_us".into(), long.0);
    results.insert("read_miss_1000_events_p99_us".into(), long.1);
    results.insert("read_miss_p99_1000_vs_10_ratio".into(), long.1 / short.1);
}

pub async fn run_all(options: &Options, results: &mut BTreeMap<String, f64>) {
    match options.only {
        Some(Only::Writers) => return concurrent_figures(options, results).await,
        Some(Only::Reads) => return read_figures(options, results).await,
        Some(Only::Scale) => return crate::scale::figures(options, results).await,
        Some(Only::Sse) => return crate::sse::figures(options, results).await,
        Some(Only::Privacy) => return crate::privacy::figures(options, results).await,
        Some(Only::Notify) => return crate::notify::figures(options, results).await,
        Some(Only::Console) => return crate::console::figures(options, results).await,
        _ => {}
    }
    let deliveries = generate(options.events, SEED);
    results.insert("events".into(), deliveries.len() as f64);

    let engine_dir = tempfile::tempdir().expect("a temporary directory");
    let bare_dir = tempfile::tempdir().expect("a temporary directory");
    let ingest = batch_ingest(engine_dir.path(), &deliveries).await;
    let bare = bare_sled_ingest(bare_dir.path(), &deliveries);
    results.insert("batch_ingest_events_per_s".into(), ingest);
    results.insert("bare_sled_ingest_events_per_s".into(), bare);
    results.insert("batch_ingest_vs_bare_sled_ratio".into(), ingest / bare);
    if let Some(cli) = cli_file_ingest(&deliveries) {
        results.insert("cli_file_ingest_events_per_s".into(), cli);
        results.insert("cli_file_ingest_vs_batch_ingest_ratio".into(), cli / ingest);
    }
    if let Some(binary) = &options.baseline_bin {
        if let Some(theirs) = baseline_bin_ingest(binary, options.events) {
            // Alternating: this build, the other, this build again, the other again; the
            // better of each build's two runs is compared (neither is only ever measured
            // first, and each gets as many tries).
            let dir = tempfile::tempdir().expect("a temporary directory");
            let again = batch_ingest(dir.path(), &deliveries).await;
            let ours = ingest.max(again);
            let theirs = baseline_bin_ingest(binary, options.events)
                .map_or(theirs, |again| theirs.max(again));
            results.insert("baseline_bin_batch_ingest_events_per_s".into(), theirs);
            results.insert("batch_ingest_vs_baseline_bin_ratio".into(), ours / theirs);
        }
    }
    let (shuffled, in_order) = plaid_shape_ingest(&deliveries).await;
    results.insert("plaid_shape_shuffled_events_per_s".into(), shuffled);
    results.insert("plaid_shape_in_order_events_per_s".into(), in_order);
    results.insert(
        "plaid_shape_shuffled_vs_in_order_ratio".into(),
        shuffled / in_order,
    );
    results.insert(
        "disk_bytes_per_event".into(),
        directory_bytes(engine_dir.path()) as f64 / deliveries.len() as f64,
    );
    match options.only {
        Some(Only::Ingest) => return,
        Some(Only::Postgres) => {
            let single_deliveries = generate(single_events(options), SEED + 1);
            crate::postgres::figures(options, &deliveries, &single_deliveries, results).await;
            return;
        }
        None | Some(Only::Writers) | Some(Only::Reads) | Some(Only::Rebuild)
        | Some(Only::Scale) | Some(Only::Sse) | Some(Only::Privacy) | Some(Only::Notify)
        | Some(Only::Console) => {}
    }

    let (first, rebuild, folded, scan) = settled_scans(engine_dir.path()).await;
    results.insert("bare_scan_first_open_events_per_s".into(), first);
    results.insert("cold_rebuild_events_per_s".into(), rebuild);
    results.insert("cold_rebuild_events_folded".into(), folded);
    results.insert("bare_scan_decode_events_per_s".into(), scan);
    results.insert(
        "cold_rebuild_vs_bare_scan_decode_ratio".into(),
        rebuild / scan,
    );
    if options.only == Some(Only::Rebuild) {
        return;
    }

    concurrent_figures(options, results).await;

    read_figures(options, results).await;
    crate::scale::figures(options, results).await;
    crate::sse::figures(options, results).await;
    crate::privacy::figures(options, results).await;
    crate::notify::figures(options, results).await;
    crate::console::figures(options, results).await;

    let sizes: &[usize] = if options.quick {
        &[20_000]
    } else {
        &[100_000, 1_000_000]
    };
    // Each size twice: with the default cache, and with a 1,000-state cache so that the
    // configuration is the same at every size and what grows with the log shows.
    let mut measured = Vec::new();
    for &size in sizes {
        let Some(full) = footprint(size, None).await else {
            continue;
        };
        // The child streams the workload (one 1,000-event batch in memory at a time); the
        // workload's total size is reported to show the peak does not follow it.
        results.insert(format!("peak_rss_kb_at_{size}"), full.rss_kb);
        results.insert(format!("workload_kb_at_{size}"), full.workload_kb);
        results.insert(
            format!("disk_bytes_per_event_at_{size}"),
            full.disk_per_event,
        );
        results.insert(
            format!("disk_bytes_per_event_open_at_{size}"),
            full.open_disk_per_event,
        );
        let small = footprint(size, Some(SMALL_CACHE)).await;
        if let Some(small) = &small {
            results.insert(
                format!("peak_rss_kb_at_{size}_cache_{SMALL_CACHE}"),
                small.rss_kb,
            );
        }
        measured.push((size, full, small));
    }
    if let (Some((_, _, Some(first))), Some((_, _, Some(last)))) =
        (measured.first(), measured.last())
    {
        results.insert(
            format!("peak_rss_cache_{SMALL_CACHE}_largest_vs_smallest_ratio"),
            last.rss_kb / first.rss_kb,
        );
    }
    // What one cached state costs, two ways. Accounted: the engine's own count of the bytes
    // its cache holds (compact states, ids, table slots), over the states it holds. RSS: the
    // difference in peak RSS between the default and the 1,000-state cache at the largest
    // size, over the difference in cached states (noisy: sled's and the allocator's memory
    // move by tens of megabytes between runs).
    if let Some((_, full, small)) = measured.last() {
        if full.cache_states > 0.0 {
            results.insert(
                "cache_accounted_bytes_per_state".into(),
                full.cache_bytes / full.cache_states,
            );
        }
        if let Some(small) = small {
            let cached = full.cache_states - small.cache_states;
            if cached > 0.0 {
                results.insert(
                    "cache_rss_bytes_per_state".into(),
                    (full.rss_kb - small.rss_kb) * 1024.0 / cached,
                );
            }
        }
    }

    let single_deliveries = generate(single_events(options), SEED + 1);
    crate::postgres::figures(options, &deliveries, &single_deliveries, results).await;

    let http_events = if options.quick { 1_000 } else { 10_000 };
    let (http_rate, http_p99) = http_ingest(&generate(http_events, SEED + 2), 32).await;
    results.insert("http_single_event_events_per_s".into(), http_rate);
    results.insert("http_single_event_p99_us".into(), http_p99);
}

/// Figure 6: figures 1 and 3 at several sizes, and peak RSS with a fixed configuration.
pub async fn scaling(options: &Options, results: &mut BTreeMap<String, f64>) -> Vec<Point> {
    let sizes: &[usize] = if options.quick {
        &[5_000, 20_000]
    } else {
        &[100_000, 1_000_000, 5_000_000]
    };
    let mut points = Vec::new();
    for &size in sizes {
        let deliveries = generate(size, SEED);
        let engine_dir = tempfile::tempdir().expect("a temporary directory");
        let bare_dir = tempfile::tempdir().expect("a temporary directory");
        let ingest = batch_ingest(engine_dir.path(), &deliveries).await;
        let bare = bare_sled_ingest(bare_dir.path(), &deliveries);
        let (_, rebuild, _, _) = settled_scans(engine_dir.path()).await;
        results.insert(format!("scaling_ingest_events_per_s_at_{size}"), ingest);
        results.insert(
            format!("scaling_ingest_vs_bare_sled_ratio_at_{size}"),
            ingest / bare,
        );
        results.insert(format!("scaling_rebuild_events_per_s_at_{size}"), rebuild);
        drop(deliveries);
        if let Some(measured) = footprint(size, Some(SMALL_CACHE)).await {
            results.insert(
                format!("scaling_peak_rss_kb_at_{size}_cache_{SMALL_CACHE}"),
                measured.rss_kb,
            );
        }
        points.push(Point {
            events: size,
            ingest_per_s: ingest,
            rebuild_per_s: rebuild,
            bare_ingest_per_s: bare,
        });
    }
    points
}

pub fn print_table(results: &BTreeMap<String, f64>) {
    println!("{:<48} {:>14}", "figure", "value");
    for (key, value) in results {
        println!("{key:<48} {value:>14.2}");
    }
}

//! Figure 12: reads at 10k, 100k and 1M sessions. At each size a fresh store takes that many
//! sessions, starting evenly over the same seven days (a busier integration, not a longer
//! history: the workload streamed 1,000 events per durable call); then the reads are timed:
//! funnels (no filter, by institution, one week's window), a page of 100 sessions with a
//! filter, one user's sessions, and what a metrics scrape reads from the engine. Each figure's
//! baseline is itself at the smallest size, in the same run: `_largest_vs_smallest_ratio`
//! near 1 means flat.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use linkflow::{Engine, EngineConfig, SessionFilter};
use linkflow_core::funnel::{FunnelQuery, GroupBy};
use linkflow_core::Phase;
use linkflow_providers::DecodeContext;

use crate::figures::{incoming, peak_rss_kb, per_second, percentile_us, BATCH, SEED};
use crate::workload::Workload;
use crate::Options;

/// Each read's p50 and p99 (microseconds) at one size.
type AtSize = BTreeMap<&'static str, (f64, f64)>;

/// The days every size's sessions start over.
const SPAN_MS: i64 = 7 * 24 * 3_600_000;

/// Timed repetitions of each read at each size.
const REPEATS: usize = 60;

fn label(size: usize) -> String {
    match size {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// p50 and p99 (microseconds) of `REPEATS` runs of `read`, after one untimed run.
async fn p50_p99<F, Fut>(mut read: F) -> (f64, f64)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    read(0).await;
    let mut times: Vec<Duration> = Vec::with_capacity(REPEATS);
    for repeat in 0..REPEATS {
        let started = Instant::now();
        read(repeat).await;
        times.push(started.elapsed());
    }
    times.sort();
    (percentile_us(&times, 0.5), percentile_us(&times, 0.99))
}

pub async fn figures(options: &Options, results: &mut BTreeMap<String, f64>) {
    let sizes: &[usize] = if options.quick {
        &[1_000, 10_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let context = DecodeContext::received_at(Utc::now());
    let mut ingested = 0usize;
    let mut ingest_time = Duration::ZERO;
    // The workload's sessions start from 2023-11-14 22:13:20 UTC over seven days: a week's
    // window from the first day's midnight.
    let since = Utc.with_ymd_and_hms(2023, 11, 14, 0, 0, 0).unwrap();
    let mut figures: Vec<(usize, AtSize)> = Vec::new();
    for &size in sizes {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let engine = Engine::open_with(EngineConfig::new(dir.path())).expect("the engine opens");
        let mut workload = Workload::spread(SEED + 12, size, SPAN_MS).peekable();
        let mut events_here = 0usize;
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            while batch.len() < BATCH {
                match workload.peek() {
                    Some(delivery) if delivery.session < size => {
                        let delivery = workload.next().expect("peeked");
                        batch.push(incoming(&delivery, &context));
                    }
                    _ => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            ingested += batch.len();
            events_here += batch.len();
            let started = Instant::now();
            engine.ingest_batch(batch).await.expect("ingest succeeds");
            ingest_time += started.elapsed();
        }
        let now = Utc::now();
        let mut at_size: AtSize = BTreeMap::new();
        for (name, group_by, window) in [
            ("funnel_all", GroupBy::Nothing, false),
            ("funnel_by_institution", GroupBy::Institution, false),
            ("funnel_week", GroupBy::Nothing, true),
        ] {
            let engine = &engine;
            let figure = p50_p99(|_| async move {
                let mut query = FunnelQuery::at(now);
                query.group_by = group_by;
                if window {
                    query.since = Some(since);
                    query.until = Some(since + chrono::Duration::days(7));
                }
                let funnels = engine.funnel(query).await.expect("a funnel");
                assert!(!funnels.is_empty());
            })
            .await;
            at_size.insert(name, figure);
        }
        let engine_ref = &engine;
        at_size.insert(
            "session_page",
            p50_p99(|_| async move {
                let filter = SessionFilter {
                    phase: Some(Phase::Succeeded),
                    ..SessionFilter::default()
                };
                let page = engine_ref
                    .sessions_page(filter, 100, None)
                    .await
                    .expect("a page");
                assert_eq!(page.sessions.len(), 100);
            })
            .await,
        );
        at_size.insert(
            "user_sessions",
            p50_p99(|repeat| async move {
                // Benji's sessions name their user `user_<session>`; a session every 7th.
                let session = (repeat * 7_919) % size;
                let filter = SessionFilter {
                    external_user_id: Some(format!("user_{session}")),
                    ..SessionFilter::default()
                };
                engine_ref
                    .sessions_page(filter, 100, None)
                    .await
                    .expect("a page");
            })
            .await,
        );
        at_size.insert(
            "metrics_scrape",
            p50_p99(|_| async move {
                let gauges = engine_ref.gauges().await.expect("gauges");
                std::hint::black_box((gauges, engine_ref.write_stats(), engine_ref.cache_stats()));
            })
            .await,
        );
        for (name, (p50, p99)) in &at_size {
            results.insert(format!("scale_{name}_p50_us_at_{}", label(size)), *p50);
            results.insert(format!("scale_{name}_p99_us_at_{}", label(size)), *p99);
        }
        results.insert(
            format!("scale_events_at_{}", label(size)),
            events_here as f64,
        );
        results.insert(
            format!("scale_peak_rss_kb_at_{}", label(size)),
            peak_rss_kb() as f64,
        );
        figures.push((size, at_size));
        engine.shutdown().await.expect("shutdown");
    }
    results.insert(
        "scale_ingest_events_per_s".into(),
        per_second(ingested, ingest_time),
    );
    if let (Some((_, smallest)), Some((_, largest))) = (figures.first(), figures.last()) {
        for (name, (p50, p99)) in largest {
            if let Some((base50, base99)) = smallest.get(name) {
                results.insert(
                    format!("scale_{name}_p50_largest_vs_smallest_ratio"),
                    p50 / base50,
                );
                results.insert(
                    format!("scale_{name}_p99_largest_vs_smallest_ratio"),
                    p99 / base99,
                );
            }
        }
    }
}

//! Figure 13: a writer among a crowd of catching-up subscribers (issue 28: 300 subscribers
//! catching up from position 0 delayed a POST by 2.3 s). An in-process `serve_with` on loopback
//! over a store of already-ingested events; single-event POSTs, one at a time, are timed with
//! no subscriber (the baseline, same run), then while `SUBSCRIBERS` raw connections read
//! `/v1/stream` from position 0 as fast as they can (reading and discarding bytes: the cheapest
//! client). The process's resident memory is read before, during, and after they leave.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use linkflow::{Engine, EngineConfig};
use linkflow_core::Provider;
use linkflow_providers::DecodeContext;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::figures::{incoming, percentile_us, status_kb, BATCH, SEED};
use crate::workload::generate;
use crate::Options;

/// The process's resident memory now, in KiB.
fn rss_kb() -> f64 {
    status_kb("VmRSS:") as f64
}

/// `posts` single-event POSTs one after another; their latencies, sorted.
async fn post_each(client: &reqwest::Client, url: &str, bodies: &[String]) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(bodies.len());
    for body in bodies {
        let started = Instant::now();
        let response = client
            .post(url)
            .body(body.clone())
            .send()
            .await
            .expect("a POST");
        assert!(response.status().is_success(), "{}", response.status());
        latencies.push(started.elapsed());
    }
    latencies.sort_unstable();
    latencies
}

pub async fn figures(options: &Options, results: &mut BTreeMap<String, f64>) {
    let (seeded, subscribers, posts) = if options.quick {
        (5_000, 30, 60)
    } else {
        (50_000, 300, 1_000)
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let engine = Engine::open_with(EngineConfig::new(dir.path()).preallocating_log())
        .expect("the engine opens");
    let context = DecodeContext::received_at(chrono::Utc::now());
    let deliveries = generate(seeded + posts * 4, SEED + 13);
    let (seed, rest) = deliveries.split_at(seeded);
    for chunk in seed.chunks(BATCH) {
        let batch = chunk
            .iter()
            .map(|delivery| incoming(delivery, &context))
            .collect();
        engine.ingest_batch(batch).await.expect("ingest succeeds");
    }
    let bodies: Vec<String> = rest
        .iter()
        .filter(|delivery| delivery.provider == Provider::Moneykit)
        .map(|delivery| delivery.body.clone())
        .take(posts * 2)
        .collect();
    let (before_bodies, during_bodies) = bodies.split_at(bodies.len() / 2);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let mut config = linkflow_http::HttpConfig::default();
    config.max_subscribers = subscribers + 10;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(linkflow_http::serve_with(
        listener,
        engine,
        config,
        linkflow_http::ServeConfig::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let url = format!("http://{address}/v1/events/moneykit");

    let alone = post_each(&client, &url, before_bodies).await;
    let rss_before = rss_kb();

    // Bytes the crowd has read, all subscribers together.
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let crowd = |count: usize| {
        (0..count)
            .map(|_| {
                let delivered = std::sync::Arc::clone(&delivered);
                tokio::spawn(async move {
                    let mut stream = tokio::net::TcpStream::connect(address)
                        .await
                        .expect("connect");
                    stream
                        .write_all(b"GET /v1/stream?after=0 HTTP/1.1\r\nHost: bench\r\n\r\n")
                        .await
                        .expect("request");
                    let mut buffer = vec![0u8; 64 * 1024];
                    let mut read = 0u64;
                    loop {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => break read,
                            Ok(n) => {
                                read += n as u64;
                                delivered.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    let leave = |readers: Vec<tokio::task::JoinHandle<u64>>| async move {
        for reader in &readers {
            reader.abort();
        }
        for reader in readers {
            let _ = reader.await;
        }
        // The server notices the closed connections and drops their subscriptions.
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let readers = crowd(subscribers);
    let crowd_started = Instant::now();
    // Let every subscriber start its catch-up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crowded = post_each(&client, &url, during_bodies).await;
    let rss_during = rss_kb();
    let delivered_mb_per_s = delivered.load(std::sync::atomic::Ordering::Relaxed) as f64
        / 1e6
        / crowd_started.elapsed().as_secs_f64();
    leave(readers).await;
    let rss_after = rss_kb();
    // A second crowd, caught up for a few seconds, then gone: memory that subscribers keep
    // would grow again; what stays from the first (sled's page cache, bounded by the
    // configuration, filled by their reads of the log; the allocator's freed heap) does not.
    let readers = crowd(subscribers);
    tokio::time::sleep(Duration::from_secs(3)).await;
    leave(readers).await;
    let rss_after_second = rss_kb();
    let _ = stop.send(());
    server
        .await
        .expect("the server task")
        .expect("the server shuts down");

    let label = subscribers.to_string();
    results.insert("sse_post_alone_p50_us".into(), percentile_us(&alone, 0.5));
    results.insert("sse_post_alone_p99_us".into(), percentile_us(&alone, 0.99));
    results.insert(
        format!("sse_post_with_{label}_subscribers_p50_us"),
        percentile_us(&crowded, 0.5),
    );
    results.insert(
        format!("sse_post_with_{label}_subscribers_p99_us"),
        percentile_us(&crowded, 0.99),
    );
    results.insert(
        "sse_post_p99_with_subscribers_vs_alone_ratio".into(),
        percentile_us(&crowded, 0.99) / percentile_us(&alone, 0.99),
    );
    results.insert(
        format!("sse_{label}_subscribers_read_mb_per_s"),
        delivered_mb_per_s,
    );
    results.insert("sse_rss_kb_before".into(), rss_before);
    results.insert("sse_rss_kb_with_subscribers".into(), rss_during);
    results.insert("sse_rss_kb_after_they_left".into(), rss_after);
    results.insert(
        "sse_rss_after_vs_before_ratio".into(),
        rss_after / rss_before.max(1.0),
    );
    results.insert("sse_rss_kb_after_a_second_crowd".into(), rss_after_second);
    results.insert(
        "sse_rss_after_second_vs_first_crowd_ratio".into(),
        rss_after_second / rss_after.max(1.0),
    );
}

//! Figure 7: the PostgreSQL peer, when `LINKFLOW_BENCH_PG` names a database (or is `throwaway`:
//! a cluster started for the run in a temporary directory).
//!
//! The peer is an events table as teams often build it: an identity global position, unique
//! (session, version), the event as `jsonb`, one transaction per 1,000-row INSERT, synchronous
//! commit. Next to it, linkflow itself on the same database (`linkflow on PostgreSQL`).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use chrono::Utc;
use linkflow::EngineConfig;
use linkflow_postgres::testing::TestCluster;
use linkflow_postgres::PgStore;
use linkflow_providers::DecodeContext;
use tokio_postgres::{Client, NoTls};

use crate::figures::{
    batch_ingest_with, concurrent_single_with, delivered, incoming, per_second, percentile_us,
    BATCH,
};
use crate::workload::Delivery;
use crate::Options;

const TABLE: &str = "
    DROP TABLE IF EXISTS bench_events;
    CREATE TABLE bench_events (
        position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        session text NOT NULL,
        version bigint NOT NULL,
        event jsonb NOT NULL,
        UNIQUE (session, version)
    );";

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("the benchmark database accepts connections");
    tokio::spawn(connection);
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .expect("set");
    client
}

/// (session, version, event JSON) for each delivery: the same records figure 1's bare-sled
/// baseline writes, versions numbered per session as a writer would.
fn rows(deliveries: &[Delivery]) -> Vec<(String, i64, String)> {
    let context = DecodeContext::received_at(Utc::now());
    let mut versions: HashMap<String, i64> = HashMap::new();
    deliveries
        .iter()
        .map(|delivery| {
            let (session, record) = delivered(delivery, &context);
            let session = session.to_string();
            let version = versions.entry(session.clone()).or_default();
            *version += 1;
            let json = serde_json::to_string(&record).expect("encode");
            (session, *version, json)
        })
        .collect()
}

/// The plain table, 1,000 rows per INSERT and per transaction. Returns events/s and bytes on
/// disk per event (table, indexes and TOAST).
async fn plain_table_batches(url: &str, rows: &[(String, i64, String)]) -> (f64, f64) {
    let client = connect(url).await;
    client.batch_execute(TABLE).await.expect("create table");
    let insert = client
        .prepare(
            "INSERT INTO bench_events (session, version, event)
             SELECT s, v, e::jsonb FROM unnest($1::text[], $2::int8[], $3::text[]) AS t(s, v, e)",
        )
        .await
        .expect("prepare");
    let started = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let sessions: Vec<&str> = chunk.iter().map(|row| row.0.as_str()).collect();
        let versions: Vec<i64> = chunk.iter().map(|row| row.1).collect();
        let events: Vec<&str> = chunk.iter().map(|row| row.2.as_str()).collect();
        client
            .execute(&insert, &[&sessions, &versions, &events])
            .await
            .expect("insert");
    }
    let rate = per_second(rows.len(), started.elapsed());
    client.batch_execute("CHECKPOINT").await.ok();
    let bytes: i64 = client
        .query_one("SELECT pg_total_relation_size('bench_events')", &[])
        .await
        .expect("size")
        .get(0);
    (rate, bytes as f64 / rows.len() as f64)
}

/// The plain table from `connections` connections, one event per transaction. Returns
/// events/s and p99 latency in microseconds.
async fn plain_table_single(
    url: &str,
    rows: &[(String, i64, String)],
    connections: usize,
) -> (f64, f64) {
    let setup = connect(url).await;
    setup.batch_execute(TABLE).await.expect("create table");
    let mut shares: Vec<Vec<(String, i64, String)>> = vec![Vec::new(); connections];
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for row in rows {
        let next = owner.len() % connections;
        let share = *owner.entry(row.0.as_str()).or_insert(next);
        shares[share].push(row.clone());
    }
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(url).await);
    }
    let started = Instant::now();
    let handles: Vec<_> = shares
        .into_iter()
        .zip(clients)
        .map(|(share, client)| {
            tokio::spawn(async move {
                let insert = client
                    .prepare("INSERT INTO bench_events (session, version, event) VALUES ($1, $2, $3::text::jsonb)")
                    .await
                    .expect("prepare");
                let mut latencies = Vec::with_capacity(share.len());
                for (session, version, event) in share {
                    let call = Instant::now();
                    client
                        .execute(&insert, &[&session, &version, &event])
                        .await
                        .expect("insert");
                    latencies.push(call.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.expect("writer"));
    }
    let rate = per_second(latencies.len(), started.elapsed());
    latencies.sort_unstable();
    (rate, percentile_us(&latencies, 0.99))
}

/// Runs figure 7 when `LINKFLOW_BENCH_PG` is set, next to the sled figures already in
/// `results` (whose ratios against the peer it adds).
pub async fn figures(
    options: &Options,
    deliveries: &[Delivery],
    single_deliveries: &[Delivery],
    results: &mut BTreeMap<String, f64>,
) {
    let Ok(setting) = std::env::var("LINKFLOW_BENCH_PG") else {
        eprintln!("linkflow-bench: figure 7 (PostgreSQL peer) skipped: set LINKFLOW_BENCH_PG to a database URL, or to `throwaway`");
        return;
    };
    let (_cluster, url) = if setting == "throwaway" {
        let cluster = TestCluster::start().unwrap_or_else(|error| {
            eprintln!("linkflow-bench: cannot start a throwaway PostgreSQL: {error}");
            std::process::exit(2);
        });
        let url = cluster.create_database();
        (Some(cluster), url)
    } else {
        (None, setting)
    };

    let rows = rows(deliveries);
    let (table, table_bytes) = plain_table_batches(&url, &rows).await;
    results.insert("pg_table_batch_events_per_s".into(), table);
    results.insert("pg_table_disk_bytes_per_event".into(), table_bytes);
    if let Some(ingest) = results.get("batch_ingest_events_per_s") {
        results.insert("batch_ingest_vs_pg_table_ratio".into(), ingest / table);
    }
    if let Some(bytes) = results.get("disk_bytes_per_event") {
        results.insert("disk_bytes_vs_pg_table_ratio".into(), bytes / table_bytes);
    }

    let single_rows = self::rows(single_deliveries);
    let (one, _) = plain_table_single(&url, &single_rows[..single_rows.len().min(1_000)], 1).await;
    let (sixty_four, p99) = plain_table_single(&url, &single_rows, 64).await;
    results.insert("pg_table_1_connection_events_per_s".into(), one);
    results.insert("pg_table_64_connections_events_per_s".into(), sixty_four);
    results.insert("pg_table_64_connections_p99_us".into(), p99);
    if let Some(writers) = results.get("writers_64_events_per_s") {
        results.insert(
            "writers_64_vs_pg_table_64_ratio".into(),
            writers / sixty_four,
        );
    }

    // linkflow itself on PostgreSQL, on a fresh schema in the same database, on the first
    // events of the workload (the rate is per event either way; a 1M-event run would spend
    // minutes here for the same figure).
    let (batch_events, single_events) = if options.quick {
        (2_000, 300)
    } else {
        (100_000, 12_000)
    };
    let deliveries = &deliveries[..deliveries.len().min(batch_events)];
    let single_deliveries = &single_deliveries[..single_deliveries.len().min(single_events)];
    results.insert(
        "linkflow_pg_events_measured".into(),
        deliveries.len() as f64,
    );
    PgStore::drop_schema(&url).expect("the linkflow schema can be reset");
    let on_pg = batch_ingest_with(EngineConfig::postgres(&url), deliveries).await;
    results.insert("linkflow_pg_batch_events_per_s".into(), on_pg);
    results.insert("linkflow_pg_vs_pg_table_ratio".into(), on_pg / table);
    let size = PgStore::open(&url)
        .and_then(|store| store.size_on_disk())
        .expect("size");
    results.insert(
        "linkflow_pg_disk_bytes_per_event".into(),
        size as f64 / deliveries.len() as f64,
    );
    // The same with a master key (figure 14 on PostgreSQL): a new key is inserted into the
    // shared key table, one round trip per new session's keys, on the ingest path.
    PgStore::drop_schema(&url).expect("the linkflow schema can be reset");
    let mut sealed_config = EngineConfig::postgres(&url);
    sealed_config.master_key = crate::privacy::master();
    let sealed = batch_ingest_with(sealed_config, deliveries).await;
    results.insert("linkflow_pg_sealed_batch_events_per_s".into(), sealed);
    results.insert(
        "linkflow_pg_sealed_vs_unsealed_batch_ratio".into(),
        sealed / on_pg,
    );
    PgStore::drop_schema(&url).expect("the linkflow schema can be reset");
    let writers = if options.quick { 8 } else { 64 };
    let run =
        concurrent_single_with(EngineConfig::postgres(&url), writers, single_deliveries).await;
    results.insert(
        format!("linkflow_pg_writers_{writers}_events_per_s"),
        run.rate,
    );
    results.insert(format!("linkflow_pg_writers_{writers}_p99_us"), run.p99_us);
    if !options.quick {
        results.insert(
            "linkflow_pg_writers_64_vs_pg_table_64_ratio".into(),
            run.rate / sixty_four,
        );
    }

    // Nodes: one engine, then two (each with its own pool and sequencer, as two processes
    // would have), `writers` writers each, on the same events; a subscriber on the first.
    PgStore::drop_schema(&url).expect("the linkflow schema can be reset");
    let one = nodes_run(&url, 1, writers, single_deliveries).await;
    PgStore::drop_schema(&url).expect("the linkflow schema can be reset");
    let two = nodes_run(&url, 2, writers, single_deliveries).await;
    results.insert("linkflow_pg_nodes_1_events_per_s".into(), one.rate);
    results.insert("linkflow_pg_nodes_2_events_per_s".into(), two.rate);
    results.insert("linkflow_pg_nodes_2_vs_1_ratio".into(), two.rate / one.rate);
    results.insert(
        "linkflow_pg_nodes_1_subscriber_lag_p99_us".into(),
        one.lag_p99_us,
    );
    results.insert(
        "linkflow_pg_nodes_2_subscriber_lag_p99_us".into(),
        two.lag_p99_us,
    );
    results.insert(
        "linkflow_pg_nodes_2_subscriber_lag_p50_us".into(),
        two.lag_p50_us,
    );
    PgStore::drop_schema(&url).expect("the linkflow schema can be reset");
    let client = connect(&url).await;
    client
        .batch_execute("DROP TABLE IF EXISTS bench_events")
        .await
        .ok();
}

/// What [`nodes_run`] measured.
struct NodesRun {
    /// Events acknowledged per second, over every node.
    rate: f64,
    /// From an event's ingest returning to the subscriber receiving it.
    lag_p50_us: f64,
    lag_p99_us: f64,
}

/// `nodes` engines on the database at `url` (each opens its own `PgStore`: its pool, its
/// commit watcher, its sequencer; one of them wins the lease), `tasks` writers on each, every
/// writer ingesting single events of its own sessions; one subscriber on the first node reads
/// the whole log as it is numbered.
async fn nodes_run(url: &str, nodes: usize, tasks: usize, deliveries: &[Delivery]) -> NodesRun {
    use linkflow::{Engine, IngestOutcome};
    use linkflow_core::Position;
    use std::sync::{Arc, Mutex};

    let engines: Vec<Engine> = (0..nodes)
        .map(|_| Engine::open_with(EngineConfig::postgres(url)).expect("the engine opens"))
        .collect();
    let context = DecodeContext::received_at(Utc::now());
    let lanes = nodes * tasks;
    let mut shares: Vec<Vec<linkflow::IncomingEvent>> = vec![Vec::new(); lanes];
    for delivery in deliveries {
        shares[delivery.session % lanes].push(incoming(delivery, &context));
    }
    let acked: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    let mut subscription = engines[0].subscribe(Position::START);
    let (stop, mut stopped) = tokio::sync::watch::channel(None::<Position>);
    let subscriber = tokio::spawn(async move {
        let mut received: Vec<(String, u64, Instant)> = Vec::new();
        loop {
            let through = *stopped.borrow();
            if through.is_some_and(|head| subscription.position() >= head) {
                return received;
            }
            tokio::select! {
                event = subscription.next() => {
                    let event = event.expect("the subscription reads");
                    received.push((event.stream.to_string(), event.version.0, Instant::now()));
                }
                _ = stopped.changed() => {}
            }
        }
    });
    let started = Instant::now();
    let writers: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(lane, share)| {
            let engine = engines[lane % nodes].clone();
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                for event in share {
                    let outcome = engine.ingest(event).await.expect("ingest succeeds");
                    let now = Instant::now();
                    if let IngestOutcome::Accepted {
                        session, version, ..
                    }
                    | IngestOutcome::Rejected {
                        session, version, ..
                    } = outcome
                    {
                        acked
                            .lock()
                            .expect("not poisoned")
                            .insert((session.to_string(), version.0), now);
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let elapsed = started.elapsed();
    let head = {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || {
            use linkflow_store::EventStore;
            PgStore::open(&url).and_then(|store| store.settle())
        })
        .await
        .expect("settle")
        .expect("the numbering settles")
    };
    let _ = stop.send(Some(head));
    let received = subscriber.await.expect("subscriber");
    let acked = std::mem::take(&mut *acked.lock().expect("not poisoned"));
    let mut lags: Vec<std::time::Duration> = received
        .iter()
        .filter_map(|(stream, version, at)| {
            let acked = acked.get(&(stream.clone(), *version))?;
            Some(at.saturating_duration_since(*acked))
        })
        .collect();
    lags.sort_unstable();
    let events = acked.len();
    for engine in engines {
        engine.shutdown().await.expect("shutdown");
    }
    NodesRun {
        rate: per_second(events, elapsed),
        lag_p50_us: percentile_us(&lags, 0.5),
        lag_p99_us: percentile_us(&lags, 0.99),
    }
}

//! `linkflow-bench`: the engine's figures, each against a baseline measured in the same run (this
//! machine is shared and noisy: ratios hold, absolute times drift).
//!
//! Figures: (1) batch ingest of provider JSON, durable, vs bare sled writing the same records;
//! (2) concurrent durable single-event ingest from 1, 8 and 64 writers; (3) cold rebuild of
//! every state from the log vs a bare sled scan + decode of the same records, each in a fresh
//! process; (4) session reads on a cache miss at 10 and 1,000 events per session; (5) peak RSS
//! (default and fixed configuration) and bytes on disk per event; (6) `--scaling`: figures 1
//! and 3 and the fixed-configuration peak RSS at 100k, 1M and 5M events; (8) HTTP
//! ingest from an in-process load generator on loopback; (7) with `LINKFLOW_BENCH_PG` (a URL,
//! or `throwaway` for a cluster started for the run): a plain PostgreSQL events table as the
//! peer, and linkflow itself on PostgreSQL; (9) `linkflow ingest` of figure 1's workload as
//! JSON Lines files, vs figure 1 (needs the release `linkflow` binary next to this one); (10)
//! the Plaid shape (each session's events after its first in one burst ~1,200 events later),
//! bursts shuffled vs the same bursts in provider-time order; (11) with `--baseline-bin FILE`
//! (another build of this bench, e.g. an earlier commit's): figure 1 as that build measures it,
//! in the same run; (12) reads at 10k, 100k and 1M sessions (funnels, a filtered page, a
//! user's sessions, a metrics scrape's reads), p99 at each size against the smallest; (13)
//! posts among event-stream subscribers; (14) sealing and erasure; (15) notifications; (16)
//! the web console's pages at 100k sessions against the API reads behind them.
//!
//! Usage: `linkflow-bench [--events N] [--quick] [--json] [--scaling] [--chart FILE]
//! [--baseline-bin FILE] [--only ingest|writers|rebuild|reads|postgres|scale|sse|privacy|notify|console]`.
#![forbid(unsafe_code)]

mod chart;
mod console;
mod figures;
mod notify;
mod postgres;
mod privacy;
mod scale;
mod sse;
mod workload;

use std::collections::BTreeMap;

/// What to run.
pub struct Options {
    pub events: usize,
    pub json: bool,
    pub quick: bool,
    pub scaling: bool,
    pub chart: Option<std::path::PathBuf>,
    /// Internal: measure peak RSS and disk use of one batch ingest in this process.
    pub footprint_child: bool,
    /// Internal: the footprint child's session cache size (default: the engine's).
    pub cache_sessions: Option<usize>,
    /// `--only`: a subset of the figures (for profiling).
    pub only: Option<Only>,
    /// Internal: run one of figure 3's scans over a store in this process and print its rate.
    pub scan_child: Option<(figures::Scan, std::path::PathBuf)>,
    /// `--baseline-bin FILE`: another build of this bench (an earlier commit's) whose figure 1
    /// is measured in the same run (figure 11).
    pub baseline_bin: Option<std::path::PathBuf>,
}

/// The subsets `--only` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// `--only ingest`: figure 1, its baseline, and figures 9, 10 and 11.
    Ingest,
    /// `--only postgres`: figure 1 and figure 7 (needs `LINKFLOW_BENCH_PG`).
    Postgres,
    /// `--only writers`: figure 2.
    Writers,
    /// `--only reads`: figure 4.
    Reads,
    /// `--only rebuild`: figures 1 and 3 (figure 3 reads figure 1's store).
    Rebuild,
    /// `--only scale`: figure 12 (reads at 10k, 100k and 1M sessions).
    Scale,
    /// `--only sse`: figure 13 (POSTs among catching-up subscribers).
    Sse,
    /// `--only notify`: figure 15 (notifications delivered per second, ingest while delivering).
    Notify,
    /// `--only privacy`: figure 14 (the cost of sealing, the time to erase a user).
    Privacy,
    /// `--only console`: figure 16 (the web console's pages at 100k sessions).
    Console,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        events: 1_000_000,
        json: false,
        quick: false,
        scaling: false,
        chart: None,
        footprint_child: false,
        cache_sessions: None,
        only: None,
        scan_child: None,
        baseline_bin: None,
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
            "--quick" => {
                options.quick = true;
                options.events = 20_000;
            }
            "--json" => options.json = true,
            "--scaling" => options.scaling = true,
            "--chart" => options.chart = Some(args.next().ok_or("--chart needs a file")?.into()),
            "--baseline-bin" => {
                options.baseline_bin =
                    Some(args.next().ok_or("--baseline-bin needs a file")?.into());
            }
            "--footprint-child" => options.footprint_child = true,
            "--scan-child" => {
                let scan = match args.next().as_deref() {
                    Some("rebuild") => figures::Scan::Rebuild,
                    Some("bare") => figures::Scan::Bare,
                    _ => return Err("--scan-child takes `rebuild` or `bare`, then a directory".into()),
                };
                let dir = args.next().ok_or("--scan-child needs a directory")?;
                options.scan_child = Some((scan, dir.into()));
            }
            "--cache-sessions" => {
                let value = args.next().ok_or("--cache-sessions needs a number")?;
                options.cache_sessions = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--cache-sessions: `{value}` is not a number"))?,
                );
            }
            "--only" => {
                options.only = Some(match args.next().as_deref() {
                    Some("ingest") => Only::Ingest,
                    Some("postgres") => Only::Postgres,
                    Some("writers") => Only::Writers,
                    Some("reads") => Only::Reads,
                    Some("rebuild") => Only::Rebuild,
                    Some("scale") => Only::Scale,
                    Some("sse") => Only::Sse,
                    Some("privacy") => Only::Privacy,
                    Some("notify") => Only::Notify,
                    Some("console") => Only::Console,
                    _ => return Err("--only takes `ingest` (figure 1), `writers` (figure 2), `rebuild` (figures 1 and 3), `reads` (figure 4) or `postgres` (figures 1 and 7)".into()),
                })
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; expected --events N, --quick, --json, --scaling, --chart FILE, --baseline-bin FILE, --only ingest|writers|rebuild|reads|postgres|scale|sse|privacy|notify|console"
                ))
            }
        }
    }
    if options.events < 2_000 {
        return Err("--events must be at least 2000".into());
    }
    Ok(options)
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
    if options.footprint_child {
        figures::footprint_child(options.events, options.cache_sessions).await;
        return;
    }
    if let Some((scan, dir)) = &options.scan_child {
        figures::scan_child(*scan, dir).await;
        return;
    }
    let mut results: BTreeMap<String, f64> = BTreeMap::new();
    figures::run_all(&options, &mut results).await;
    if options.scaling {
        let points = figures::scaling(&options, &mut results).await;
        if let Some(path) = &options.chart {
            if let Err(error) = std::fs::write(path, chart::scaling_svg(&points)) {
                eprintln!("linkflow-bench: cannot write {}: {error}", path.display());
                std::process::exit(2);
            }
        }
    }
    if options.json {
        println!(
            "{}",
            serde_json::to_string(&results).expect("numbers serialize")
        );
    } else {
        figures::print_table(&results);
    }
}

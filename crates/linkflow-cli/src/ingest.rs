//! `linkflow ingest`: provider payloads from a file or standard input into the engine, read a
//! chunk at a time (a file of any size, memory bounded by [`CHUNK_BYTES`] and the engine's
//! [`linkflow::INTAKE_BATCH`]), with progress on standard error.
//!
//! Output: every payload that was not simply stored (refused, rejected, quarantined, or stored
//! with warnings) is named by its line as it is read, then a summary. With `--json` each of
//! those is one JSON line (a `PayloadResult`), and the last line is `{"summary": counts}`.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use linkflow::{Engine, Feed, IngestOutcome, Intake, IntakeCounts, PayloadContext, PayloadResult};
use tokio::sync::mpsc;

use crate::CliError;

/// Bytes read per chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Chunks read ahead of the engine: bounds the memory a fast disk can fill.
const CHUNKS_AHEAD: usize = 4;

/// The chunks of an input, as the reader thread sends them.
pub type Chunks = mpsc::Receiver<std::io::Result<Vec<u8>>>;

/// How often a progress line is printed when standard error is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How the payloads' outcomes are shown.
#[derive(Debug, Clone, Copy)]
pub struct Show {
    /// JSON lines instead of text for people.
    pub json: bool,
    /// Progress on standard error.
    pub progress: bool,
    /// A line for every payload not simply stored.
    pub lines: bool,
}

/// Reads `input` (a path, or `-` for standard input) and ingests it; exits 0 when every
/// payload was stored, 1 when any was refused.
pub async fn run(
    engine: &Engine,
    feed: Feed,
    context: PayloadContext,
    input: &str,
    show: Show,
) -> Result<ExitCode, CliError> {
    let (chunks, total) = read_chunks(input)?;
    let counts = ingest_chunks(engine, feed, context, chunks, total, show).await?;
    print_summary(&counts, show.json);
    Ok(if counts.refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Starts a thread that reads `input` in [`CHUNK_BYTES`] chunks; returns its channel and the
/// input's size when known.
fn read_chunks(input: &str) -> Result<(Chunks, Option<u64>), CliError> {
    let (reader, total): (Box<dyn Read + Send>, Option<u64>) = if input == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let file = std::fs::File::open(Path::new(input))
            .map_err(|error| CliError(format!("cannot read {input}: {error}")))?;
        let total = file.metadata().ok().map(|metadata| metadata.len());
        (Box::new(file), total)
    };
    let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
    std::thread::Builder::new()
        .name("linkflow-ingest-read".into())
        .spawn(move || read_into(reader, &sender))
        .map_err(|error| CliError(format!("cannot start the reader thread: {error}")))?;
    Ok((receiver, total))
}

fn read_into(mut reader: Box<dyn Read + Send>, sender: &mpsc::Sender<std::io::Result<Vec<u8>>>) {
    loop {
        let mut chunk = vec![0; CHUNK_BYTES];
        match reader.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => {
                chunk.truncate(read);
                if sender.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                let _ = sender.blocking_send(Err(error));
                return;
            }
        }
    }
}

/// Ingests every chunk the channel brings, showing problems as they come; returns the counts.
pub async fn ingest_chunks(
    engine: &Engine,
    feed: Feed,
    context: PayloadContext,
    mut chunks: Chunks,
    total: Option<u64>,
    show: Show,
) -> Result<IntakeCounts, CliError> {
    let mut intake = Intake::new(engine, feed, context);
    let mut counts = IntakeCounts::default();
    let mut progress = Progress::new(show.progress, total);
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|error| CliError(format!("cannot read the input: {error}")))?;
        let results = intake.push(&chunk).await?;
        progress.read(chunk.len() as u64);
        report(&results, &mut counts, show, &mut progress);
    }
    let results = intake.finish().await?;
    report(&results, &mut counts, show, &mut progress);
    progress.finish();
    Ok(counts)
}

fn report(
    results: &[PayloadResult],
    counts: &mut IntakeCounts,
    show: Show,
    progress: &mut Progress,
) {
    for result in results {
        counts.add(result);
        let notable = !result.warnings.is_empty()
            || !matches!(
                result.outcome,
                IngestOutcome::Accepted { .. } | IngestOutcome::Duplicate { .. }
            );
        if notable && show.lines {
            progress.suspend(|| print_result(result, show.json));
        }
    }
    progress.payloads(results.len() as u64, counts);
}

fn print_result(result: &PayloadResult, json: bool) {
    if json {
        out!(
            "{}",
            serde_json::to_string(result).expect("a result serializes")
        );
        return;
    }
    let at = result.at;
    match &result.outcome {
        IngestOutcome::Refused { error } => out!("  refused at {at}: {error}"),
        IngestOutcome::Rejected { reason, .. } => out!("  rejected (for now) at {at}: {reason}"),
        IngestOutcome::Quarantined { entry, reason, .. } => {
            out!("  quarantined at {at} as {entry}: {reason}")
        }
        IngestOutcome::Accepted { .. } | IngestOutcome::Duplicate { .. } => {}
    }
    for warning in &result.warnings {
        out!("  warning at {at}: {warning}");
    }
}

/// Prints the counts for people, or as the last JSON line.
pub fn print_summary(counts: &IntakeCounts, json: bool) {
    if json {
        out!("{}", serde_json::json!({ "summary": counts }));
        return;
    }
    out!(
        "accepted {}, rejected {}, duplicate {}, quarantined {}, refused {}, unrecognized {}, with warnings {} (account events written: {})",
        counts.accepted,
        counts.rejected,
        counts.duplicate,
        counts.quarantined,
        counts.refused,
        counts.unrecognized,
        counts.warned,
        counts.account_events
    );
}

/// Progress on standard error: a bar on a terminal, a line every [`PROGRESS_EVERY`]
/// otherwise, nothing with `--quiet`.
struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    started: Instant,
    last_line: Instant,
    bytes: u64,
    total: Option<u64>,
    payloads: u64,
}

impl Progress {
    fn new(enabled: bool, total: Option<u64>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let bar = match total {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::no_length(),
            };
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} eta {eta}")
                    .expect("the template is valid"),
            );
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            lines: enabled && !terminal,
            started: now,
            last_line: now,
            bytes: 0,
            total,
            payloads: 0,
        }
    }

    fn read(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(bar) = &self.bar {
            bar.set_position(self.bytes);
        }
    }

    fn payloads(&mut self, done: u64, counts: &IntakeCounts) {
        self.payloads += done;
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{} payloads, {} refused, {} quarantined",
                self.payloads, counts.refused, counts.quarantined
            ));
        }
        if self.lines && self.last_line.elapsed() >= PROGRESS_EVERY {
            self.last_line = Instant::now();
            self.line();
        }
    }

    fn line(&self) {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let of = self
            .total
            .map(|total| format!(" of {:.1} MiB", total as f64 / 1_048_576.0))
            .unwrap_or_default();
        eprintln!(
            "linkflow ingest: {} payloads, {:.1} MiB read{of}, {:.0} payloads/s",
            self.payloads,
            self.bytes as f64 / 1_048_576.0,
            self.payloads as f64 / seconds
        );
    }

    /// Runs `print` with the bar out of the way.
    fn suspend(&self, print: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.lines {
            self.line();
        }
    }
}

/// Ingests an in-memory body the way a file is ingested (the demo's flows).
pub async fn ingest_body(
    engine: &Engine,
    feed: Feed,
    body: &str,
    context: PayloadContext,
    show: Show,
) -> Result<IntakeCounts, CliError> {
    let (sender, receiver) = mpsc::channel(1);
    sender
        .send(Ok(body.as_bytes().to_vec()))
        .await
        .map_err(|_| CliError("the ingest stopped".into()))?;
    drop(sender);
    ingest_chunks(engine, feed, context, receiver, None, show).await
}

/// The context of a `linkflow ingest` run.
pub fn context(
    input: &str,
    session: Option<&str>,
    user: Option<String>,
) -> Result<PayloadContext, CliError> {
    let channel = format!("linkflow ingest {input}");
    let mut context = PayloadContext::new(&channel, Utc::now());
    if let Some(session) = session {
        context = context.with_session(crate::session_id(session)?);
    }
    if let Some(user) = user {
        context = context.with_user(user);
    }
    Ok(context)
}

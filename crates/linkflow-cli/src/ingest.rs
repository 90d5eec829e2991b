//! `linkflow ingest`: provider payloads from a file or standard input into the engine.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use linkflow::{Engine, IncomingEvent, IngestOutcome};
use linkflow_core::{EventBody, EventKind, Provider};
use linkflow_providers::{decode, split_located, DecodeContext, Location};
use serde::Serialize;

use crate::CliError;

/// Events per engine call: one group commit each.
const CHUNK: usize = 1_000;

/// Inputs from which on a progress bar is worth drawing.
const PROGRESS_FROM: usize = 5_000;

/// What happened to a delivery's events.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Appended to their stream.
    pub accepted: usize,
    /// Already stored.
    pub duplicate: usize,
    /// Refused by the state machine and parked.
    pub parked: usize,
    /// Accepted with a name no adapter knows (also counted in `accepted`).
    pub unrecognized: usize,
    /// Not stored: not decodable, or refused by the engine.
    pub invalid: usize,
    /// Parked events (from this input or earlier) that this input made legal and that were
    /// accepted right after, plus account `linked` events written for successes.
    pub redriven: usize,
    /// The reason for each invalid or parked input.
    pub problems: Vec<Problem>,
}

/// One invalid or parked input.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// Where it is in the input.
    pub at: Location,
    /// `invalid` or `parked`.
    pub outcome: &'static str,
    /// Why.
    pub reason: String,
}

/// Decodes and ingests a whole body; every decodable event is stored even if others are not.
pub async fn ingest_body(
    engine: &Engine,
    provider: Provider,
    body: &str,
    context: &DecodeContext,
    progress: bool,
) -> Result<Report, CliError> {
    let mut report = Report::default();
    let located = match split_located(body) {
        Ok(located) => located,
        Err(error) => {
            report.invalid += 1;
            report.problems.push(Problem {
                at: Location::Line(1),
                outcome: "invalid",
                reason: error.to_string(),
            });
            return Ok(report);
        }
    };
    let bar = (progress && located.len() >= PROGRESS_FROM && std::io::stderr().is_terminal()).then(
        || {
            let bar = ProgressBar::new(located.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
                    .expect("the template is valid"),
            );
            bar
        },
    );
    let mut pending: Vec<(Location, IncomingEvent)> = Vec::with_capacity(CHUNK);
    for (at, text) in located {
        let decoded = text
            .and_then(|text| decode(provider, text, context))
            .and_then(|decoded| IncomingEvent::from_decoded(decoded, context.received_at));
        match decoded {
            Ok(incoming) => pending.push((at, incoming)),
            Err(error) => {
                report.invalid += 1;
                report.problems.push(Problem {
                    at,
                    outcome: "invalid",
                    reason: error.to_string(),
                });
            }
        }
        if pending.len() == CHUNK {
            flush(engine, &mut pending, &mut report, bar.as_ref()).await?;
        }
    }
    flush(engine, &mut pending, &mut report, bar.as_ref()).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(report)
}

async fn flush(
    engine: &Engine,
    pending: &mut Vec<(Location, IncomingEvent)>,
    report: &mut Report,
    bar: Option<&ProgressBar>,
) -> Result<(), CliError> {
    if pending.is_empty() {
        return Ok(());
    }
    let (locations, events): (Vec<Location>, Vec<IncomingEvent>) = pending.drain(..).unzip();
    let unrecognized: Vec<bool> = events
        .iter()
        .map(|event| matches!(&event.body, EventBody::Session(session) if matches!(session.kind, EventKind::Unrecognized { .. })))
        .collect();
    let outcomes = engine.ingest_batch(events).await?;
    for ((at, outcome), unrecognized) in locations.into_iter().zip(outcomes).zip(unrecognized) {
        match outcome {
            IngestOutcome::Accepted {
                redriven, linked, ..
            } => {
                report.redriven += redriven.len() + usize::from(linked.is_some());
                report.accepted += 1;
                report.unrecognized += usize::from(unrecognized);
            }
            IngestOutcome::Duplicate { .. } => report.duplicate += 1,
            IngestOutcome::Parked { reason, .. } => {
                report.parked += 1;
                report.problems.push(Problem {
                    at,
                    outcome: "parked",
                    reason,
                });
            }
            IngestOutcome::Refused { error } => {
                report.invalid += 1;
                report.problems.push(Problem {
                    at,
                    outcome: "invalid",
                    reason: error.to_string(),
                });
            }
        }
        if let Some(bar) = bar {
            bar.inc(1);
        }
    }
    Ok(())
}

/// Prints a report for people.
pub fn print_report(report: &Report) {
    out!(
        "accepted {}, duplicate {}, parked {}, unrecognized {}, invalid {} (then accepted by retries or links: {})",
        report.accepted, report.duplicate, report.parked, report.unrecognized, report.invalid, report.redriven
    );
    for problem in &report.problems {
        out!(
            "  {} at {}: {}",
            problem.outcome,
            problem.at,
            problem.reason
        );
    }
}

pub async fn run(
    engine: &Engine,
    provider: Provider,
    session: Option<&str>,
    user: Option<String>,
    input: &str,
    json: bool,
) -> Result<ExitCode, CliError> {
    let body = if input == "-" {
        let mut body = String::new();
        std::io::stdin()
            .read_to_string(&mut body)
            .map_err(|error| CliError(format!("cannot read standard input: {error}")))?;
        body
    } else {
        std::fs::read_to_string(input)
            .map_err(|error| CliError(format!("cannot read {input}: {error}")))?
    };
    let mut context = DecodeContext::received_at(Utc::now());
    context.session_id = session.map(crate::session_id).transpose()?;
    context.external_user_id = user;
    let report = ingest_body(engine, provider, &body, &context, true).await?;
    if json {
        crate::print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(if report.invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

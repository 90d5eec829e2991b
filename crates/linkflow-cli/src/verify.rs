//! `linkflow verify`: exit 0 when the store is consistent, else a report and exit 1.
//! `linkflow repair`: recover what precedes the damage of a damaged write-ahead log.

use std::process::ExitCode;

use linkflow::{Engine, EngineError};

use crate::{print_json, Cli, CliError};

/// The report of a store that cannot be opened because its data is damaged: exit 1.
pub fn damaged(error: &EngineError, json: bool) -> Result<ExitCode, CliError> {
    if json {
        print_json(&serde_json::json!({
            "consistent": false,
            "problems": [{"record": "store", "message": error.to_string()}],
        }));
    } else {
        out!("  store: {error}");
        out!("INCONSISTENT (the store cannot be opened; see `linkflow repair`)");
    }
    Ok(ExitCode::from(1))
}

/// `linkflow repair` on the embedded store.
pub fn repair(cli: &Cli, json: bool) -> Result<ExitCode, CliError> {
    if cli.store.is_some() {
        return Err(CliError(
            "repair works on the embedded store (--data-dir); PostgreSQL keeps its own log".into(),
        ));
    }
    let report = linkflow::store::SledStore::repair(&cli.data_dir)
        .map_err(|error| CliError(format!("cannot repair {}: {error}", cli.data_dir.display())))?;
    let lost_events: usize = report
        .lost
        .iter()
        .map(|frame| frame.events.as_ref().map_or(0, Vec::len))
        .sum();
    if json {
        print_json(&report);
    } else if let (Some(copy), Some(frame)) = (&report.copy, report.damaged_frame) {
        out!(
            "the write-ahead log was damaged at frame {frame}; its files are kept in {}",
            copy.display()
        );
        out!("recovered: {} frames before the damage", report.replayed);
        for lost in &report.lost {
            match &lost.events {
                None => out!(
                    "lost: frame {}, unreadable (its events cannot be named)",
                    lost.frame
                ),
                Some(events) => {
                    for event in events {
                        out!(
                            "lost: frame {}, event `{}` version {} position {}",
                            lost.frame,
                            event.stream,
                            event.version,
                            event.position
                        );
                    }
                }
            }
        }
        out!(
            "{lost_events} events named above could not be recovered, and whatever the unreadable frame held; senders that retry deliver them again"
        );
    } else {
        out!("the write-ahead log is not damaged: nothing to repair");
    }
    Ok(if report.lost.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn run(engine: &Engine, json: bool) -> Result<ExitCode, CliError> {
    let report = engine.verify().await?;
    if json {
        print_json(&report);
    } else {
        out!(
            "walked {} events in {} streams, {} snapshots",
            report.events,
            report.streams,
            report.snapshots
        );
        for problem in &report.problems {
            out!("  {}: {}", problem.record, problem.message);
        }
        out!(
            "{}",
            if report.is_clean() {
                "consistent"
            } else {
                "INCONSISTENT"
            }
        );
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

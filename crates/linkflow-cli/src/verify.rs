//! `linkflow verify`: exit 0 when the store is consistent, else a report and exit 1.

use std::process::ExitCode;

use linkflow::Engine;

use crate::{print_json, CliError};

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

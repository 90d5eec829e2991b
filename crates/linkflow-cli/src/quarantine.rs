//! `linkflow quarantine`, `linkflow redrive`: payloads that named no stream.

use std::process::ExitCode;

use linkflow::{Engine, QuarantineFilter, QuarantineRedrive, Redrove};

use crate::{print_json, session_id, CliError};

pub async fn list(
    engine: &Engine,
    filter: QuarantineFilter,
    limit: usize,
    cursor: Option<String>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let after = crate::cursor(cursor.as_deref())?;
    let list = engine.quarantine(filter, limit, after).await?;
    if json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    for entry in &list.entries {
        let state = match &entry.released {
            Some(stream) => format!("released into {stream}"),
            None => "pending".to_owned(),
        };
        out!(
            "{}  {}  {}  received {}  {state}\n    from {}\n    why: {}",
            entry.entry,
            entry.feed,
            entry.raw_name.as_deref().unwrap_or("-"),
            entry.received_at.to_rfc3339(),
            entry.origin,
            entry.reason
        );
    }
    if let Some(next) = &list.next_cursor {
        out!("(more: --cursor {next})");
    }
    out!(
        "{} pending, {} released",
        list.counts.pending,
        list.counts.released
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn redrive(
    engine: &Engine,
    entry: Option<&str>,
    session: Option<&str>,
    user: Option<String>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let request = QuarantineRedrive {
        entry: entry.map(session_id).transpose()?,
        session_id: session.map(session_id).transpose()?,
        external_user_id: user,
    };
    let report = engine.redrive_quarantine(request).await?;
    if json {
        print_json(&report);
        return Ok(ExitCode::SUCCESS);
    }
    let mut released = 0;
    for result in &report.results {
        match result {
            Redrove::Released { entry, outcome, .. } => {
                released += 1;
                out!(
                    "released {entry}: {}",
                    serde_json::to_string(outcome).expect("an outcome serializes")
                );
            }
            Redrove::StillQuarantined { entry, reason } => {
                out!("still quarantined {entry}: {reason}")
            }
            Redrove::Refused { entry, error } => out!("refused {entry}: {error}"),
        }
    }
    out!(
        "{released} of {} released; {} pending left for another run",
        report.results.len(),
        report.remaining
    );
    Ok(ExitCode::SUCCESS)
}

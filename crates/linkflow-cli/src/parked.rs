//! `linkflow parked`, `redrive`.

use std::process::ExitCode;

use linkflow::views::ParkedJson;
use linkflow::Engine;

use crate::{print_json, session_id, CliError};

pub async fn list(
    engine: &Engine,
    session: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let session = session.map(session_id).transpose()?;
    let parked = engine.parked(session).await?;
    let entries: Vec<ParkedJson> = parked.iter().map(ParkedJson::from).collect();
    if json {
        print_json(&entries);
        return Ok(ExitCode::SUCCESS);
    }
    for entry in &entries {
        out!(
            "{}  {}  received {}\n    {}",
            entry.session_id,
            entry.raw_name.as_deref().unwrap_or(&entry.event),
            entry.received_at.to_rfc3339(),
            entry.reason
        );
    }
    out!("{} parked events", entries.len());
    Ok(ExitCode::SUCCESS)
}

pub async fn redrive(
    engine: &Engine,
    session: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let session = session.map(session_id).transpose()?;
    let redriven = engine.redrive(session).await?;
    if json {
        print_json(&redriven);
    } else {
        for event in &redriven {
            out!(
                "accepted {} of `{}` as version {}",
                event.event_id,
                event.session,
                event.version
            );
        }
        out!("{} parked events accepted", redriven.len());
    }
    Ok(ExitCode::SUCCESS)
}

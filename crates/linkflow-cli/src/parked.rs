//! `linkflow parked`: the events their streams' folds reject now.

use std::process::ExitCode;

use linkflow::views::RejectedListJson;
use linkflow::Engine;

use crate::{print_json, session_id, CliError};

pub async fn list(
    engine: &Engine,
    session: Option<&str>,
    limit: usize,
    cursor: Option<String>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let list = match session.map(session_id).transpose()? {
        Some(session) => engine.rejected(Some(session)).await?,
        None => {
            let after = crate::cursor(cursor.as_deref())?;
            engine.rejected_page(limit, after).await?
        }
    };
    let list = RejectedListJson::from(&list);
    if json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    for entry in &list.events {
        out!(
            "{}  v{}  {}  at {}{}  received {}\n    {}",
            entry.session_id,
            entry.version,
            entry.raw_name.as_deref().unwrap_or(&entry.event),
            entry
                .event_time
                .map_or_else(|| "(no time)".to_owned(), |at| at.to_rfc3339()),
            if entry.late { " (late)" } else { "" },
            entry.received_at.to_rfc3339(),
            entry.reason
        );
    }
    if let Some(next) = &list.next_cursor {
        out!(
            "{} rejected events listed; more: --cursor {next}",
            list.events.len()
        );
    } else if list.truncated {
        out!(
            "{} rejected events listed; more are rejected (ask for one session with --session)",
            list.events.len()
        );
    } else {
        out!("{} rejected events", list.events.len());
    }
    Ok(ExitCode::SUCCESS)
}

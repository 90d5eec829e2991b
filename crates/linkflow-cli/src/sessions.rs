//! `linkflow sessions`, `show`, `history`.

use std::process::ExitCode;

use linkflow::views::{HistoryJson, SessionJson};
use linkflow::{Engine, SessionFilter, SessionView};
use linkflow_core::Version;

use crate::{print_json, session_id, CliError};

fn dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

/// Which page(s) `sessions` prints.
pub struct Paging {
    pub limit: usize,
    pub cursor: Option<String>,
    pub all: bool,
}

pub async fn list(
    engine: &Engine,
    filter: SessionFilter,
    paging: Paging,
    json: bool,
) -> Result<ExitCode, CliError> {
    let mut after = crate::cursor(paging.cursor.as_deref())?;
    if !json {
        out!(
            "{:<46} {:<9} {:<21} {:<22} {:>7} {:>6}  last event",
            "session",
            "provider",
            "phase",
            "institution",
            "events",
            "reject"
        );
    }
    let mut shown = 0;
    loop {
        let page = engine
            .sessions_page(filter.clone(), paging.limit, after.take())
            .await?;
        let views: Vec<SessionJson> = page
            .sessions
            .iter()
            .map(|view| SessionJson::new(view, engine.is_abandoned(&view.state)))
            .collect();
        shown += views.len();
        match (json, paging.all) {
            (true, true) => {
                for view in &views {
                    let line = serde_json::to_string(view).expect("views serialize");
                    out!("{line}");
                }
            }
            (true, false) => print_json(&serde_json::json!({
                "sessions": views,
                "next_cursor": page.next.as_ref().map(ToString::to_string),
            })),
            (false, _) => page.sessions.iter().for_each(print_row),
        }
        match page.next {
            Some(next) if paging.all => after = Some(next),
            Some(next) => {
                if !json {
                    out!("{shown} sessions on this page; the next: --cursor {next}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            None => {
                if !json {
                    out!("{shown} sessions");
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn print_row(view: &SessionView) {
    let state = &view.state;
    out!(
        "{:<46} {:<9} {:<21} {:<22} {:>7} {:>6}  {}",
        view.session_id.as_str(),
        view.provider.as_str(),
        state.phase().as_str(),
        dash(
            state
                .institution()
                .map(|institution| institution.id.clone())
        ),
        view.events,
        view.rejected,
        dash(state.last_event_at().map(|at| at.to_rfc3339())),
    );
}

pub async fn show(
    engine: &Engine,
    session: &str,
    at: Option<Version>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let id = session_id(session)?;
    let Some(mut view) = engine.session(&id).await? else {
        return Err(CliError(format!("no session `{session}`")));
    };
    if let Some(version) = at {
        view = engine
            .session_at(&id, version)
            .await?
            .ok_or_else(|| CliError(format!("no session `{session}`")))?;
    }
    let shown = SessionJson::new(&view, engine.is_abandoned(&view.state));
    if json {
        print_json(&shown);
        return Ok(ExitCode::SUCCESS);
    }
    out!("session        {}", shown.session_id);
    out!("provider       {}", shown.provider);
    out!("phase          {}", shown.phase);
    out!("link type      {}", dash(shown.link_type));
    out!(
        "institution    {}",
        dash(shown.institution.as_ref().map(|i| match &i.name {
            Some(name) => format!("{} ({name})", i.id),
            None => i.id.clone(),
        }))
    );
    out!(
        "version        {} ({} accepted, {} rejected)",
        shown.version,
        shown.accepted,
        shown.rejected
    );
    out!("current screen {}", dash(shown.current_screen.as_ref()));
    out!(
        "last error     {}",
        dash(shown.last_error.as_ref().map(|e| format!(
            "{} {} {}",
            dash(e.code.as_ref()),
            dash(e.id.as_ref()),
            dash(e.message.as_deref().map(crate::shown).as_ref())
        )))
    );
    out!(
        "exit           {}",
        dash(shown.exit.as_ref().map(|e| format!(
            "from {} ({})",
            e.phase,
            dash(e.status.as_ref())
        )))
    );
    out!(
        "first event    {}",
        dash(shown.first_event_at.map(|at| at.to_rfc3339()))
    );
    out!(
        "last event     {}",
        dash(shown.last_event_at.map(|at| at.to_rfc3339()))
    );
    out!("abandoned      {}", shown.abandoned);
    if let Some(version) = shown.compacted_at {
        out!("compacted at   version {version} (its history up to it is no longer stored)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn history(engine: &Engine, session: &str, json: bool) -> Result<ExitCode, CliError> {
    let id = session_id(session)?;
    let Some(history) = engine.history(&id).await? else {
        return Err(CliError(format!("no session `{session}`")));
    };
    if json {
        print_json(&history.iter().map(HistoryJson::from).collect::<Vec<_>>());
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:>4} {:>8} {:<26} {:<30} {:<21} {:<21} event time",
        "v",
        "position",
        "event",
        "raw name",
        "phase before",
        "phase after"
    );
    for entry in &history {
        out!(
            "{:>4} {:>8} {:<26} {:<30} {:<21} {:<21} {}{}",
            entry.version.0,
            entry.position.0,
            entry.event,
            dash(entry.raw_name.as_ref()),
            dash(entry.phase_before),
            dash(entry.phase_after),
            entry
                .event_time
                .map_or_else(|| "-".to_owned(), |at| at.to_rfc3339()),
            if entry.late { "  (late)" } else { "" },
        );
        if let Some(rejection) = &entry.rejection {
            out!("     rejected: {rejection}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

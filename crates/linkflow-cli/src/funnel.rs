//! `linkflow funnel`: sessions reaching each phase, conversion, drop-off (exited / abandoned),
//! top exit statuses and error codes, time in phase; as text, JSON, CSV and an SVG chart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use linkflow::chart::funnel_svg;
use linkflow::Engine;
use linkflow_core::funnel::{Funnel, FunnelQuery, GroupBy};
use linkflow_core::LinkType;

use crate::{print_json, CliError, ProviderArg};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ByArg {
    Provider,
    Institution,
    LinkType,
    /// The session's last screen (Plaid's `view_name`).
    Screen,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LinkTypeArg {
    Link,
    Relink,
    FailoverLink,
}

#[derive(Debug, Args)]
pub struct FunnelArgs {
    /// Only sessions whose first event is at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only sessions whose first event is before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Only this provider.
    #[arg(long, value_enum)]
    provider: Option<ProviderArg>,
    /// Only this institution id.
    #[arg(long)]
    institution: Option<String>,
    /// Only this link type.
    #[arg(long, value_enum)]
    link_type: Option<LinkTypeArg>,
    /// One funnel per provider, institution, link type or last screen.
    #[arg(long, value_enum)]
    by: Option<ByArg>,
    /// Print CSV (one row per group and step).
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// Also write the funnel as an SVG chart here (one file per group when grouped:
    /// `NAME-GROUP.svg`).
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn svg_path(base: &Path, group: &str, grouped: bool) -> PathBuf {
    if !grouped {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or("funnel");
    let safe: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.with_file_name(format!("{stem}-{safe}.svg"))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn print_csv(funnels: &[Funnel]) {
    out!("group,phase,reached,conversion,dropped_exited,dropped_abandoned,time_in_phase_p50_s,time_in_phase_p90_s,top_exit_status,top_error_code");
    let number = |value: Option<f64>| value.map_or_else(String::new, |value| format!("{value:.4}"));
    for funnel in funnels {
        for step in &funnel.steps {
            out!(
                "{},{},{},{},{},{},{},{},{},{}",
                csv_field(&funnel.group),
                step.phase,
                step.reached,
                number(step.conversion),
                step.dropped_exited,
                step.dropped_abandoned,
                number(step.time_in_phase_p50_s),
                number(step.time_in_phase_p90_s),
                csv_field(step.exit_statuses.first().map_or("", |(status, _)| status)),
                csv_field(step.error_codes.first().map_or("", |(code, _)| code)),
            );
        }
    }
}

fn print_text(funnels: &[Funnel]) {
    for funnel in funnels {
        out!(
            "== {}: {} sessions, {} succeeded, {} exited, {} abandoned, {} in progress",
            funnel.group,
            funnel.sessions,
            funnel.succeeded,
            funnel.exited,
            funnel.abandoned,
            funnel.in_progress
        );
        out!(
            "{:<22} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9}  top exit status / error",
            "phase",
            "reached",
            "conversion",
            "exited",
            "abandoned",
            "p50",
            "p90"
        );
        for step in &funnel.steps {
            let seconds = |value: Option<f64>| {
                value.map_or_else(|| "-".to_owned(), |value| format!("{value:.0}s"))
            };
            out!(
                "{:<22} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9}  {} / {}",
                step.phase.as_str(),
                step.reached,
                step.conversion
                    .map_or_else(|| "-".to_owned(), |rate| format!("{:.1}%", rate * 100.0)),
                step.dropped_exited,
                step.dropped_abandoned,
                seconds(step.time_in_phase_p50_s),
                seconds(step.time_in_phase_p90_s),
                step.exit_statuses
                    .first()
                    .map_or("-", |(status, _)| status.as_str()),
                step.error_codes
                    .first()
                    .map_or("-", |(code, _)| code.as_str()),
            );
        }
    }
}

pub async fn run(engine: &Engine, args: FunnelArgs, json: bool) -> Result<ExitCode, CliError> {
    let mut query = FunnelQuery::at(Utc::now());
    query.inactivity_timeout = engine.inactivity_timeout();
    query.since = args.since;
    query.until = args.until;
    query.provider = args.provider.map(Into::into);
    query.institution = args.institution;
    query.link_type = args.link_type.map(|link_type| match link_type {
        LinkTypeArg::Link => LinkType::Link,
        LinkTypeArg::Relink => LinkType::Relink,
        LinkTypeArg::FailoverLink => LinkType::FailoverLink,
    });
    query.group_by = match args.by {
        None => GroupBy::Nothing,
        Some(ByArg::Provider) => GroupBy::Provider,
        Some(ByArg::Institution) => GroupBy::Institution,
        Some(ByArg::LinkType) => GroupBy::LinkType,
        Some(ByArg::Screen) => GroupBy::Screen,
    };
    let funnels = engine.funnel(query.clone()).await?;
    if let Some(base) = &args.svg {
        for funnel in &funnels {
            let path = svg_path(base, &funnel.group, args.by.is_some());
            std::fs::write(&path, funnel_svg(funnel, &query))
                .map_err(|error| CliError(format!("cannot write {}: {error}", path.display())))?;
        }
    }
    if json {
        print_json(&funnels);
    } else if args.csv {
        print_csv(&funnels);
    } else {
        print_text(&funnels);
    }
    Ok(ExitCode::SUCCESS)
}

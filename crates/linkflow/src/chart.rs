//! The SVG funnel chart: one bar per step with how many sessions reached it, their share of
//! the sessions that started (overall) and of the step before (step), and what was lost there.
//! Plain SVG 1.1 text (no scripts, no external resources), so any viewer or `resvg` renders it.
//!
//! Each colour means one thing: indigo bars are sessions that reached a step (lighter for the
//! side step, MFA), the green bar the sessions that succeeded; red text is drop-off (exited,
//! abandoned), amber the top error code, grey time in phase. The canvas is as wide as its
//! longest line needs (text width estimated from the font size), so nothing is cut off.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use linkflow_core::funnel::{Funnel, FunnelQuery};
use linkflow_core::Phase;

const MIN_WIDTH: u32 = 960;
const MARGIN: u32 = 24;
const ROW: u32 = 52;
const TOP: u32 = 112;
const LABEL_W: u32 = 210;
const BAR_MAX_W: u32 = 400;
/// Where the two conversion columns start, after the bars.
const RATES_X: u32 = LABEL_W + BAR_MAX_W + 20;
const RATE_W: u32 = 84;
/// Where each step's notes start.
const NOTES_X: u32 = RATES_X + 2 * RATE_W + 12;
/// The most characters of an error code shown.
const MAX_CODE_CHARS: usize = 40;

const INK: &str = "#111827";
const MUTED: &str = "#4b5563";
const REACHED: &str = "#4f46e5";
const SIDE_STEP: &str = "#a5b4fc";
const SUCCEEDED: &str = "#059669";
const DROP_OFF: &str = "#b91c1c";
const ERROR: &str = "#b45309";
const TIME: &str = "#6b7280";

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The width of `text` at `size` px, over-estimated (DejaVu Sans averages ~0.55 em a
/// character; 0.62 leaves room for wide ones).
fn text_width(text: &str, size: u32) -> u32 {
    (text.chars().count() as f64 * f64::from(size) * 0.62).ceil() as u32
}

/// A duration in seconds for people: `45 s`, `3 min 20 s`, `1 h 5 min`, `2 d 3 h`.
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    let total = seconds.round() as u64;
    let (days, hours, minutes, secs) = (
        total / 86_400,
        total % 86_400 / 3_600,
        total % 3_600 / 60,
        total % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) if seconds < 1.0 => format!("{:.0} ms", seconds * 1000.0),
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, _) if secs == 0 => format!("{minutes} min"),
        (0, 0, _) => format!("{minutes} min {secs} s"),
        (0, _, 0) => format!("{hours} h"),
        (0, _, _) => format!("{hours} h {minutes} min"),
        (_, 0, _) => format!("{days} d"),
        _ => format!("{days} d {hours} h"),
    }
}

/// A count with thousands separators: `1,234,567`.
pub fn grouped(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (n, digit) in digits.chars().enumerate() {
        if n > 0 && (digits.len() - n) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// What the chart covers: the window of first events and the filters.
fn scope(query: &FunnelQuery) -> String {
    let window = match (query.since, query.until) {
        (None, None) => "all sessions".to_owned(),
        (Some(since), None) => format!("sessions started from {}", time(since)),
        (None, Some(until)) => format!("sessions started before {}", time(until)),
        (Some(since), Some(until)) => {
            format!("sessions started {} to {}", time(since), time(until))
        }
    };
    let mut parts = vec![window];
    if let Some(provider) = query.provider {
        parts.push(format!("provider {provider}"));
    }
    if let Some(institution) = &query.institution {
        parts.push(format!("institution {institution}"));
    }
    if let Some(link_type) = query.link_type {
        parts.push(format!("link type {link_type}"));
    }
    parts.push(format!(
        "abandoned after {} without events, as of {}",
        human_duration(query.inactivity_timeout.num_seconds() as f64),
        time(query.now)
    ));
    parts.join(" · ")
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |rate| format!("{:.1}%", rate * 100.0))
}

/// One line of notes, in pieces of one colour each.
type Notes = Vec<(String, &'static str)>;

fn notes_width(notes: &Notes) -> u32 {
    let text: Vec<&str> = notes.iter().map(|(text, _)| text.as_str()).collect();
    text_width(&text.join("  ·  "), 12)
}

/// Renders one funnel of `query` as an SVG document.
pub fn funnel_svg(funnel: &Funnel, query: &FunnelQuery) -> String {
    let first = funnel.steps.first().map_or(0, |step| step.reached);
    let max = funnel
        .steps
        .iter()
        .map(|step| step.reached)
        .max()
        .unwrap_or(0)
        .max(1);
    // Each step's notes: drop-off on the first line, error and time on the second.
    let notes: Vec<(Notes, Notes)> = funnel
        .steps
        .iter()
        .map(|step| {
            let mut lost = Notes::new();
            if step.dropped_exited > 0 {
                lost.push((format!("{} exited", grouped(step.dropped_exited)), DROP_OFF));
            }
            if step.dropped_abandoned > 0 {
                lost.push((
                    format!("{} abandoned", grouped(step.dropped_abandoned)),
                    DROP_OFF,
                ));
            }
            let mut more = Notes::new();
            if let Some((code, count)) = step.error_codes.first() {
                let code: String = code.chars().take(MAX_CODE_CHARS).collect();
                more.push((format!("top error {code} ({})", grouped(*count)), ERROR));
            }
            if let (Some(p50), Some(p90)) = (step.time_in_phase_p50_s, step.time_in_phase_p90_s) {
                more.push((
                    format!(
                        "time here: median {}, p90 {}",
                        human_duration(p50),
                        human_duration(p90)
                    ),
                    TIME,
                ));
            }
            (lost, more)
        })
        .collect();
    let title = format!("Link funnel: {}", funnel.group);
    let summary = format!(
        "{} sessions: {} succeeded ({}), {} exited, {} abandoned, {} in progress",
        grouped(funnel.sessions),
        grouped(funnel.succeeded),
        percent((funnel.sessions > 0).then(|| funnel.succeeded as f64 / funnel.sessions as f64)),
        grouped(funnel.exited),
        grouped(funnel.abandoned),
        grouped(funnel.in_progress)
    );
    let scope = scope(query);
    let legend = [
        "Bars: sessions that reached each step (a session that skipped a step it must have passed counts there).",
        "Overall: share of the sessions that started; step: share of the step before (MFA and authenticated: of authenticating).",
    ];
    let widest_notes = notes
        .iter()
        .map(|(lost, more)| notes_width(lost).max(notes_width(more)))
        .max()
        .unwrap_or(0);
    let width = [
        MIN_WIDTH,
        NOTES_X + widest_notes + MARGIN,
        MARGIN * 2 + text_width(&title, 22),
        MARGIN * 2 + text_width(&summary, 14),
        MARGIN * 2 + text_width(&scope, 12),
        MARGIN * 2
            + legend
                .iter()
                .map(|line| text_width(line, 11))
                .max()
                .unwrap_or(0),
    ]
    .into_iter()
    .max()
    .unwrap_or(MIN_WIDTH);
    let rows = funnel.steps.len() as u32;
    let height = TOP + rows * ROW + 52;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"##
    );
    let _ = write!(
        svg,
        r##"<rect width="{width}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = write!(
        svg,
        r##"<text x="{MARGIN}" y="36" font-size="22" font-weight="bold" fill="{INK}">{}</text>"##,
        escape(&title)
    );
    let _ = write!(
        svg,
        r##"<text x="{MARGIN}" y="60" font-size="14" fill="{INK}">{}</text>"##,
        escape(&summary)
    );
    let _ = write!(
        svg,
        r##"<text x="{MARGIN}" y="80" font-size="12" fill="{MUTED}">{}</text>"##,
        escape(&scope)
    );
    // Column heads.
    for (x, head) in [
        (MARGIN, "step"),
        (LABEL_W + BAR_MAX_W / 2, "sessions that reached it"),
        (RATES_X + RATE_W / 2, "overall"),
        (RATES_X + RATE_W + RATE_W / 2, "step"),
        (NOTES_X, "lost here · errors · time"),
    ] {
        let anchor = if x == MARGIN || x == NOTES_X {
            "start"
        } else {
            "middle"
        };
        let _ = write!(
            svg,
            r##"<text x="{x}" y="{}" font-size="11" font-weight="bold" fill="{MUTED}" text-anchor="{anchor}">{head}</text>"##,
            TOP - 8
        );
    }
    for (index, (step, (lost, more))) in funnel.steps.iter().zip(&notes).enumerate() {
        let y = TOP + index as u32 * ROW;
        let side_step = step.phase == Phase::Mfa;
        let bar = (u64::from(BAR_MAX_W) * step.reached / max) as u32;
        let x = LABEL_W + (BAR_MAX_W - bar) / 2;
        let fill = if step.phase == Phase::Succeeded {
            SUCCEEDED
        } else if side_step {
            SIDE_STEP
        } else {
            REACHED
        };
        let label = if side_step {
            format!("{} (side step)", step.phase)
        } else {
            step.phase.to_string()
        };
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="14" fill="{INK}">{}</text>"##,
            MARGIN + if side_step { 14 } else { 0 },
            y + 26,
            escape(&label)
        );
        if bar > 0 {
            let _ = write!(
                svg,
                r##"<rect x="{x}" y="{}" width="{bar}" height="34" rx="4" fill="{fill}"/>"##,
                y + 4
            );
        }
        let count = grouped(step.reached);
        let inside = bar > text_width(&count, 14) + 12 && !side_step;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="14" text-anchor="middle" font-weight="bold" fill="{}">{count}</text>"##,
            LABEL_W + BAR_MAX_W / 2,
            y + 26,
            if inside { "#ffffff" } else { INK },
        );
        let overall = (first > 0).then(|| step.reached as f64 / first as f64);
        for (column, rate) in [(0, overall), (1, step.conversion)] {
            let _ = write!(
                svg,
                r##"<text x="{}" y="{}" font-size="13" text-anchor="middle" fill="{INK}">{}</text>"##,
                RATES_X + column * RATE_W + RATE_W / 2,
                y + 26,
                percent(rate)
            );
        }
        // Two lines around the bar's middle, or one on it.
        let lines: Vec<&Notes> = [lost, more].into_iter().filter(|n| !n.is_empty()).collect();
        let first_line = if lines.len() == 2 { y + 18 } else { y + 26 };
        for (line, pieces) in lines.into_iter().enumerate() {
            let _ = write!(
                svg,
                r##"<text x="{NOTES_X}" y="{}" font-size="12">"##,
                first_line + line as u32 * 16
            );
            for (n, (text, colour)) in pieces.iter().enumerate() {
                let separator = if n > 0 { "  ·  " } else { "" };
                let _ = write!(
                    svg,
                    r##"<tspan fill="{colour}">{separator}{}</tspan>"##,
                    escape(text)
                );
            }
            svg.push_str("</text>");
        }
    }
    for (n, line) in legend.iter().enumerate() {
        let _ = write!(
            svg,
            r##"<text x="{MARGIN}" y="{}" font-size="11" fill="{MUTED}">{}</text>"##,
            height - 32 + n as u32 * 16,
            escape(line)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(0.25), "250 ms");
        assert_eq!(human_duration(45.0), "45 s");
        assert_eq!(human_duration(200.0), "3 min 20 s");
        assert_eq!(human_duration(180.0), "3 min");
        assert_eq!(human_duration(3_900.0), "1 h 5 min");
        assert_eq!(human_duration(7_200.0), "2 h");
        assert_eq!(human_duration(183_600.0), "2 d 3 h");
        assert_eq!(human_duration(f64::NAN), "-");
    }
}

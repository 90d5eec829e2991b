//! The SVG funnel chart: one bar per step with its count and conversion, drop-off annotated.
//! Plain SVG 1.1 text (no scripts, no external resources), so any viewer or `resvg` renders it.

use std::fmt::Write as _;

use linkflow_core::funnel::Funnel;
use linkflow_core::Phase;

const WIDTH: u32 = 960;
const ROW: u32 = 46;
const TOP: u32 = 78;
const LABEL_W: u32 = 190;
const BAR_MAX_W: u32 = 460;

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders one funnel as an SVG document.
pub fn funnel_svg(funnel: &Funnel) -> String {
    let rows = funnel.steps.len() as u32;
    let height = TOP + rows * ROW + 40;
    let max = funnel
        .steps
        .iter()
        .map(|step| step.reached)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"##
    );
    let _ = write!(
        svg,
        r##"<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = write!(
        svg,
        r##"<text x="24" y="36" font-size="22" font-weight="bold" fill="#1f2937">Link funnel: {}</text>"##,
        escape(&funnel.group)
    );
    let _ = write!(
        svg,
        r##"<text x="24" y="60" font-size="14" fill="#4b5563">{} sessions: {} succeeded, {} exited, {} abandoned, {} in progress</text>"##,
        funnel.sessions, funnel.succeeded, funnel.exited, funnel.abandoned, funnel.in_progress
    );
    for (index, step) in funnel.steps.iter().enumerate() {
        let y = TOP + index as u32 * ROW;
        let side_step = step.phase == Phase::Mfa;
        let width = (u64::from(BAR_MAX_W) * step.reached / max) as u32;
        let x = LABEL_W + (BAR_MAX_W - width) / 2;
        let fill = if step.phase == Phase::Succeeded {
            "#059669"
        } else if side_step {
            "#a5b4fc"
        } else {
            "#4f46e5"
        };
        let label = if side_step {
            format!("  {} (side step)", step.phase)
        } else {
            step.phase.to_string()
        };
        let _ = write!(
            svg,
            r##"<text x="24" y="{}" font-size="14" fill="#111827">{}</text>"##,
            y + 24,
            escape(&label)
        );
        if width > 0 {
            let _ = write!(
                svg,
                r##"<rect x="{x}" y="{}" width="{width}" height="32" rx="4" fill="{fill}"/>"##,
                y + 4
            );
        }
        let conversion = step
            .conversion
            .map_or_else(String::new, |rate| format!("  ({:.1}%)", rate * 100.0));
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="14" text-anchor="middle" fill="{}" font-weight="bold">{}{}</text>"##,
            LABEL_W + BAR_MAX_W / 2,
            y + 25,
            if width > 120 { "#ffffff" } else { "#111827" },
            step.reached,
            conversion
        );
        let mut notes = Vec::new();
        if step.dropped_exited > 0 {
            notes.push(format!("{} exited", step.dropped_exited));
        }
        if step.dropped_abandoned > 0 {
            notes.push(format!("{} abandoned", step.dropped_abandoned));
        }
        if let Some((code, count)) = step.error_codes.first() {
            notes.push(format!("top error {code} ×{count}"));
        }
        if let Some(p50) = step.time_in_phase_p50_s {
            notes.push(format!("p50 {p50:.0}s"));
        }
        if !notes.is_empty() {
            let _ = write!(
                svg,
                r##"<text x="{}" y="{}" font-size="12" fill="#b91c1c">{}</text>"##,
                LABEL_W + BAR_MAX_W + 16,
                y + 24,
                escape(&notes.join(" · "))
            );
        }
    }
    let _ = write!(
        svg,
        r##"<text x="24" y="{}" font-size="11" fill="#6b7280">Bars: sessions that reached each phase (skipped phases a session must have passed included). Red: drop-off in that phase.</text>"##,
        height - 14
    );
    svg.push_str("</svg>\n");
    svg
}

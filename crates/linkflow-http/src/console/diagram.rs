//! The session state diagram as inline SVG, with one session's path drawn on it: the phases in
//! a column in forward order, every move of the transition table as an arc (forward moves on
//! the right, moves back on the left), the moves the session made drawn thick and numbered.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use linkflow_core::diagram::session_graph;
use linkflow_core::Phase;

const WIDTH: u32 = 560;
const NODE_LEFT: u32 = 200;
const NODE_WIDTH: u32 = 160;
const NODE_HEIGHT: u32 = 24;
const ROW: u32 = 36;
const TOP: u32 = 16;
/// How far an arc bulges per row it spans.
const BULGE: u32 = 17;

fn row(phase: Phase) -> u32 {
    u32::from(phase.rank())
}

fn middle(phase: Phase) -> u32 {
    TOP + row(phase) * ROW + NODE_HEIGHT / 2
}

/// An arc from one phase to another: on the right going forward, on the left going back.
fn arc(from: Phase, to: Phase, offset: i32) -> String {
    let (y1, y2) = (middle(from) as i32 + offset, middle(to) as i32 + offset);
    let span = row(from).abs_diff(row(to)) as i32;
    if row(to) > row(from) {
        let x = (NODE_LEFT + NODE_WIDTH) as i32;
        let bulge = x + 10 + BULGE as i32 * span;
        format!("M{x},{y1} C{bulge},{y1} {bulge},{y2} {},{y2}", x + 2)
    } else {
        let x = NODE_LEFT as i32;
        let bulge = x - 10 - BULGE as i32 * span;
        format!("M{x},{y1} C{bulge},{y1} {bulge},{y2} {},{y2}", x - 2)
    }
}

/// The diagram, with `path` (the session's phase moves in order) drawn on it and `current`
/// outlined.
pub(crate) fn session_svg(path: &[(Phase, Phase)], current: Option<&str>) -> String {
    let height = TOP * 2 + ROW * (Phase::ALL.len() as u32 - 1) + NODE_HEIGHT;
    let moves: Vec<(Phase, Phase)> = path
        .iter()
        .copied()
        .filter(|(before, after)| before != after)
        .collect();
    let mut edges = BTreeSet::new();
    for edge in session_graph().edges {
        if let (Ok(from), Ok(to)) = (edge.from.parse::<Phase>(), edge.to.parse::<Phase>()) {
            if from != to {
                edges.insert((from, to));
            }
        }
    }
    let mut visited: BTreeSet<Phase> = moves.iter().flat_map(|(a, b)| [*a, *b]).collect();
    let current = current.and_then(|phase| phase.parse::<Phase>().ok());
    visited.extend(current);
    let described: Vec<&str> = std::iter::once(moves.first().map(|(a, _)| *a))
        .flatten()
        .chain(moves.iter().map(|(_, b)| *b))
        .map(Phase::as_str)
        .collect();
    let label = if described.is_empty() {
        "State diagram of a session; this session made no phase move".to_owned()
    } else {
        format!(
            "State diagram of a session; this session's path: {}",
            described.join(" → ")
        )
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="diagram" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="{label}" xmlns="http://www.w3.org/2000/svg">"#
    );
    svg.push_str(
        r#"<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" class="arrow-head"/></marker><marker id="arrow-taken" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="5" markerHeight="5" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" class="arrow-taken"/></marker></defs>"#,
    );
    for (from, to) in &edges {
        let _ = write!(
            svg,
            r#"<path class="edge" d="{}" marker-end="url(#arrow)"/>"#,
            arc(*from, *to, 0)
        );
    }
    for (number, (from, to)) in moves.iter().enumerate() {
        // Repeated moves are drawn a little apart so each stays visible.
        let offset = (number % 3) as i32 * 3 - 3;
        let _ = write!(
            svg,
            r#"<path class="taken" d="{}" marker-end="url(#arrow-taken)"><title>move {}: {} → {}</title></path>"#,
            arc(*from, *to, offset),
            number + 1,
            from.as_str(),
            to.as_str()
        );
    }
    for phase in Phase::ALL {
        let y = TOP + row(phase) * ROW;
        let mut class = String::from("node");
        if visited.contains(&phase) {
            class.push_str(" visited");
        }
        if current == Some(phase) {
            class.push_str(" current");
        }
        let _ = write!(
            svg,
            r#"<g class="{class}"><rect x="{NODE_LEFT}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="5"/><text x="{}" y="{}" text-anchor="middle">{}</text></g>"#,
            NODE_LEFT + NODE_WIDTH / 2,
            y + NODE_HEIGHT / 2 + 4,
            phase.as_str()
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_drawn_and_named() {
        let svg = session_svg(
            &[
                (Phase::Created, Phase::Opened),
                (Phase::Opened, Phase::Opened),
                (Phase::Opened, Phase::Exited),
            ],
            Some("exited"),
        );
        assert_eq!(svg.matches(r#"class="taken""#).count(), 2, "{svg}");
        assert!(svg.contains("created → opened → exited"), "{svg}");
        assert!(svg.contains(r#"class="node visited current""#));
        // Every phase is a node, and every move of the table between two phases an edge.
        assert_eq!(svg.matches("<rect").count(), Phase::ALL.len());
        assert!(svg.matches(r#"class="edge""#).count() > 10);
    }

    #[test]
    fn a_session_without_moves_has_no_path() {
        let svg = session_svg(&[], Some("created"));
        assert!(!svg.contains(r#"class="taken""#));
        assert!(svg.contains("made no phase move"));
    }
}

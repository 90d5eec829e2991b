//! Mermaid and Graphviz DOT diagrams generated from the transition table, and the Markdown
//! rule table embedded in `docs/state-machine.md`.

use std::fmt::Write as _;

use crate::transition::{Guard, RuleKind, SESSION_TABLE};

/// How an edge is drawn: the normal flow, a named back-edge, or a terminal exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeStyle {
    /// A forward move or a start.
    Forward,
    /// A named back-edge or retry.
    Back,
    /// An exception to a terminal phase.
    Terminal,
}

/// One drawn edge of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The state the edge leaves.
    pub from: &'static str,
    /// The state the edge enters.
    pub to: &'static str,
    /// The edge's label (the step, and the rule kind when it is not a plain forward move).
    pub label: String,
    /// How to draw it.
    pub style: EdgeStyle,
}

/// A state machine as a diagram sees it: its initial state and its edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineGraph {
    /// The graph's name (`session`).
    pub name: &'static str,
    /// The state a new instance starts in.
    pub initial: &'static str,
    /// Every edge, one per (from, to, label), in table order.
    pub edges: Vec<Edge>,
}

/// The session machine's graph, one edge per (row, from-phase) of [`SESSION_TABLE`].
pub fn session_graph() -> MachineGraph {
    let mut edges = Vec::new();
    for rule in SESSION_TABLE {
        let mut label = rule.step.as_str().to_owned();
        match (rule.kind, rule.guard) {
            (RuleKind::Start | RuleKind::Forward, Guard::FirstPhaseEvent) => {
                label.push_str(" (first phase event only)")
            }
            (RuleKind::Start | RuleKind::Forward, Guard::Always) => {}
            (kind, _) => {
                let _ = write!(label, " ({})", kind.as_str());
            }
        }
        let style = match rule.kind {
            RuleKind::Start | RuleKind::Forward => EdgeStyle::Forward,
            RuleKind::Reselect | RuleKind::Retry => EdgeStyle::Back,
            RuleKind::ExitAfterSuccess
            | RuleKind::LateSuccess
            | RuleKind::SuccessConfirmed
            | RuleKind::ExitConfirmed => EdgeStyle::Terminal,
        };
        for from in rule.from {
            edges.push(Edge {
                from: from.as_str(),
                to: rule.to.as_str(),
                label: label.clone(),
                style,
            });
        }
    }
    MachineGraph {
        name: "session",
        initial: crate::Phase::Created.as_str(),
        edges,
    }
}

/// The account machine's graph, one edge per (row, from-state) of
/// [`crate::account::ACCOUNT_TABLE`].
pub fn account_graph() -> MachineGraph {
    let mut edges = Vec::new();
    for rule in crate::account::ACCOUNT_TABLE {
        for from in rule.from {
            edges.push(Edge {
                from: from.as_str(),
                to: rule.to.as_str(),
                label: rule.step.as_str().to_owned(),
                style: EdgeStyle::Forward,
            });
        }
    }
    MachineGraph {
        name: "account",
        initial: crate::account::AccountState::Absent.as_str(),
        edges,
    }
}

/// Renders a graph as a Mermaid `stateDiagram-v2`.
pub fn mermaid(graph: &MachineGraph) -> String {
    let mut out = String::from("stateDiagram-v2\n");
    let _ = writeln!(out, "    [*] --> {}", graph.initial);
    for edge in &graph.edges {
        let _ = writeln!(out, "    {} --> {}: {}", edge.from, edge.to, edge.label);
    }
    out
}

/// Renders a graph as Graphviz DOT; back-edges are dashed, terminal exceptions dotted.
pub fn dot(graph: &MachineGraph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", graph.name);
    out.push_str("    rankdir=LR;\n    node [shape=box, style=rounded];\n");
    let _ = writeln!(
        out,
        "    start [shape=point];\n    start -> {};",
        graph.initial
    );
    for edge in &graph.edges {
        let style = match edge.style {
            EdgeStyle::Forward => "solid",
            EdgeStyle::Back => "dashed",
            EdgeStyle::Terminal => "dotted",
        };
        let _ = writeln!(
            out,
            "    {} -> {} [label=\"{}\", style={}];",
            edge.from, edge.to, edge.label, style
        );
    }
    out.push_str("}\n");
    out
}

/// The session table as Markdown: one line per row, with the event kinds of each step.
pub fn session_rules_markdown() -> String {
    let mut out =
        String::from("| step | event kinds | from | to | kind |\n|---|---|---|---|---|\n");
    for rule in SESSION_TABLE {
        let kinds: Vec<&str> = rule.step.event_kinds().map(|kind| kind.name()).collect();
        let from: Vec<&str> = rule.from.iter().map(|phase| phase.as_str()).collect();
        let mut kind = rule.kind.as_str().to_owned();
        if rule.guard == Guard::FirstPhaseEvent {
            kind.push_str(", first phase event only");
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            rule.step,
            kinds.join(", "),
            from.join(", "),
            rule.to,
            kind
        );
    }
    out
}

/// The account table as Markdown: one line per row.
pub fn account_rules_markdown() -> String {
    let mut out = String::from("| step | from | to |\n|---|---|---|\n");
    for rule in crate::account::ACCOUNT_TABLE {
        let from: Vec<&str> = rule.from.iter().map(|state| state.as_str()).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            rule.step.as_str(),
            from.join(", "),
            rule.to
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_row_and_phase_appears_in_the_diagrams() {
        let graph = session_graph();
        let rows: usize = SESSION_TABLE.iter().map(|rule| rule.from.len()).sum();
        assert_eq!(graph.edges.len(), rows);
        let mermaid = mermaid(&graph);
        let dot = dot(&graph);
        for phase in crate::Phase::ALL {
            assert!(mermaid.contains(phase.as_str()), "{phase} missing");
            assert!(dot.contains(phase.as_str()), "{phase} missing");
        }
        assert!(mermaid.contains("exited --> succeeded: succeed (late_success)"));
        assert!(dot.contains(
            "mfa -> institution_selected [label=\"select_institution (reselect)\", style=dashed];"
        ));
    }
}

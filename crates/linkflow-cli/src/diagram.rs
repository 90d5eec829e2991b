//! `linkflow diagram`: a state machine as Mermaid or Graphviz DOT, generated from its table.

use clap::ValueEnum;
use linkflow_core::diagram::{account_graph, dot, mermaid, session_graph};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Mermaid,
    Dot,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Machine {
    Session,
    Account,
}

pub fn run(format: Format, machine: Machine) {
    let graph = match machine {
        Machine::Session => session_graph(),
        Machine::Account => account_graph(),
    };
    match format {
        Format::Mermaid => out_raw!("{}", mermaid(&graph)),
        Format::Dot => out_raw!("{}", dot(&graph)),
    }
}

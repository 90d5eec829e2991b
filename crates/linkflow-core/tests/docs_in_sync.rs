//! `docs/state-machine.md` embeds the diagram and rule table generated from the transition
//! table; this test fails when the doc no longer matches the table.
//!
//! To refresh the doc after changing the table: `LINKFLOW_BLESS=1 cargo test -p linkflow-core
//! --test docs_in_sync`.

use std::path::PathBuf;

use linkflow_core::diagram::{mermaid, session_graph, session_rules_markdown};

const BEGIN: &str = "<!-- BEGIN GENERATED: session table (edit SESSION_TABLE, then bless) -->";
const END: &str = "<!-- END GENERATED: session table -->";

fn generated_block() -> String {
    format!(
        "{BEGIN}\n```mermaid\n{}```\n\n{}{END}",
        mermaid(&session_graph()),
        session_rules_markdown()
    )
}

#[test]
fn state_machine_doc_matches_the_transition_table() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/state-machine.md");
    let doc = std::fs::read_to_string(&path).expect("docs/state-machine.md exists");
    let start = doc.find(BEGIN).expect("the doc has the BEGIN marker");
    let end = doc.find(END).expect("the doc has the END marker") + END.len();
    let expected = generated_block();
    if doc[start..end] == expected {
        return;
    }
    if std::env::var_os("LINKFLOW_BLESS").is_some() {
        let updated = format!("{}{}{}", &doc[..start], expected, &doc[end..]);
        std::fs::write(&path, updated).expect("docs/state-machine.md is writable");
        return;
    }
    panic!(
        "docs/state-machine.md is out of date with SESSION_TABLE; run \
         `LINKFLOW_BLESS=1 cargo test -p linkflow-core --test docs_in_sync`. Expected block:\n{expected}"
    );
}

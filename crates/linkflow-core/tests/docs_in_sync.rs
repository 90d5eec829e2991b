//! `docs/state-machine.md` embeds the diagrams and rule tables generated from the session and
//! account tables; this test fails when the doc no longer matches them.
//!
//! To refresh the doc after changing the table: `LINKFLOW_BLESS=1 cargo test -p linkflow-core
//! --test docs_in_sync`.

use std::path::PathBuf;

use linkflow_core::diagram::{
    account_graph, account_rules_markdown, mermaid, session_graph, session_rules_markdown,
};

/// A generated block of the doc: its markers and what belongs between them.
struct Block {
    table: &'static str,
    begin: &'static str,
    end: &'static str,
    body: String,
}

fn blocks() -> [Block; 2] {
    [
        Block {
            table: "SESSION_TABLE",
            begin: "<!-- BEGIN GENERATED: session table (edit SESSION_TABLE, then bless) -->",
            end: "<!-- END GENERATED: session table -->",
            body: format!(
                "```mermaid\n{}```\n\n{}",
                mermaid(&session_graph()),
                session_rules_markdown()
            ),
        },
        Block {
            table: "ACCOUNT_TABLE",
            begin: "<!-- BEGIN GENERATED: account table (edit ACCOUNT_TABLE, then bless) -->",
            end: "<!-- END GENERATED: account table -->",
            body: format!(
                "```mermaid\n{}```\n\n{}",
                mermaid(&account_graph()),
                account_rules_markdown()
            ),
        },
    ]
}

#[test]
fn state_machine_doc_matches_the_transition_tables() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/state-machine.md");
    let mut doc = std::fs::read_to_string(&path).expect("docs/state-machine.md exists");
    let bless = std::env::var_os("LINKFLOW_BLESS").is_some();
    for block in blocks() {
        let start = doc.find(block.begin).expect("the doc has the BEGIN marker");
        let end = doc.find(block.end).expect("the doc has the END marker") + block.end.len();
        let expected = format!("{}\n{}{}", block.begin, block.body, block.end);
        if doc[start..end] == expected {
            continue;
        }
        assert!(
            bless,
            "docs/state-machine.md is out of date with {}; run \
             `LINKFLOW_BLESS=1 cargo test -p linkflow-core --test docs_in_sync`. Expected block:\n{expected}",
            block.table
        );
        doc = format!("{}{}{}", &doc[..start], expected, &doc[end..]);
    }
    if bless {
        std::fs::write(&path, doc).expect("docs/state-machine.md is writable");
    }
}

//! `linkflow demo`: the bundled sample flows of all four providers (from `flows/` in this
//! crate) into a fresh temporary store, and what the engine made of them.
//!
//! The flows include a duplicate delivery (MoneyKit's `submit_permissions` forwarded twice, a
//! Knot webhook retried), out-of-order deliveries (Benji's partner choice delivered after the
//! authentication, with no time of its own: it takes its place before it; a Knot checkout
//! before `AUTHENTICATED`, rejected until the account's link arrives, then accepted in its
//! place; merchant updates newest first; Plaid's end-of-flow burst shuffled, then its `EVENTS`
//! webhook repeating three of those events, stored once) and an illegal event (a second
//! MoneyKit `open` after the success, rejected). The Plaid session links its item, which a
//! `PENDING_EXPIRATION` webhook then marks.

use std::process::ExitCode;

use chrono::Utc;
use linkflow::views::{AccountJson, MerchantJson, RejectedListJson, SessionJson};
use linkflow::{Engine, Feed, PayloadContext, SessionFilter};
use serde_json::json;

use crate::ingest::{ingest_body, print_summary, Show};
use crate::CliError;

/// The bundled flows: (input, file name, contents, the end user the integrator knows).
const FLOWS: [(Feed, &str, &str, Option<&str>); 5] = [
    (
        Feed::Moneykit,
        "flows/moneykit_flow.jsonl",
        include_str!("../flows/moneykit_flow.jsonl"),
        Some("user_17"),
    ),
    (
        Feed::Benji,
        "flows/benji_callbacks.json",
        include_str!("../flows/benji_callbacks.json"),
        None,
    ),
    (
        Feed::Knot,
        "flows/knot_webhooks.jsonl",
        include_str!("../flows/knot_webhooks.jsonl"),
        None,
    ),
    (
        Feed::Plaid,
        "flows/plaid_link.jsonl",
        include_str!("../flows/plaid_link.jsonl"),
        None,
    ),
    (
        Feed::PlaidWebhook,
        "flows/plaid_webhooks.jsonl",
        include_str!("../flows/plaid_webhooks.jsonl"),
        None,
    ),
];

pub async fn run(json: bool) -> Result<ExitCode, CliError> {
    let dir = tempfile::tempdir()
        .map_err(|error| CliError(format!("cannot create a temporary store: {error}")))?;
    let engine = Engine::open(dir.path())?;
    let mut reports = serde_json::Map::new();
    for (feed, name, body, user) in FLOWS {
        let mut context = PayloadContext::new(&format!("linkflow demo {name}"), Utc::now());
        if let Some(user) = user {
            context = context.with_user(user);
        }
        if !json {
            out!("== ingest {name} ({feed})");
        }
        // The JSON report holds the counts; the payloads' lines are shown to people only.
        let show = Show {
            json: false,
            progress: false,
            lines: !json,
        };
        let counts = ingest_body(&engine, feed, body, context, show).await?;
        if !json {
            print_summary(&counts, false);
            out!();
        }
        reports.insert(
            name.to_owned(),
            serde_json::to_value(counts).expect("counts serialize"),
        );
    }
    let sessions = engine.sessions(SessionFilter::default()).await?;
    let accounts = engine.accounts().await?;
    let merchants = engine.merchants().await?;
    let rejected = RejectedListJson::from(&engine.rejected(None).await?);
    let verified = engine.verify().await?;
    if json {
        crate::print_json(&json!({
            "ingest": reports,
            "sessions": sessions.iter().map(|view| SessionJson::new(view, engine.is_abandoned(&view.state))).collect::<Vec<_>>(),
            "accounts": accounts.iter().map(AccountJson::from).collect::<Vec<_>>(),
            "merchants": merchants.iter().map(MerchantJson::from).collect::<Vec<_>>(),
            "rejected": rejected,
            "verify_clean": verified.is_clean(),
        }));
    } else {
        out!("== sessions");
        for view in &sessions {
            let state = &view.state;
            out!(
                "{:<46} {:<9} {:<16} institution {:<22} events {:>2}  last error {}  exit {}",
                view.session_id.as_str(),
                view.provider.as_str(),
                state.phase().as_str(),
                state
                    .institution()
                    .map_or("-", |institution| institution.id.as_str()),
                view.events,
                state
                    .last_error()
                    .and_then(|error| error.value.code.clone())
                    .unwrap_or_else(|| "-".into()),
                state
                    .exit()
                    .map_or_else(|| "-".to_owned(), |exit| format!("from {}", exit.phase)),
            );
        }
        out!("\n== linked accounts");
        for account in accounts.iter().map(AccountJson::from) {
            out!(
                "{:<9} user {:<38} institution {:<12} {:<15} operations {}",
                account.provider.as_str(),
                account.external_user_id,
                account.institution_id,
                account.state,
                account.operations.len()
            );
        }
        out!("\n== merchant availability");
        for merchant in merchants.iter().map(MerchantJson::from) {
            out!(
                "merchant {} ({}) {} on {}: {:?} since {}",
                merchant.merchant_id,
                merchant.name.as_deref().unwrap_or("-"),
                merchant.product_type,
                merchant.platform,
                merchant.status,
                merchant.since.to_rfc3339()
            );
        }
        out!("\n== rejected (kept, shown with the reason; `linkflow parked`)");
        for entry in &rejected.events {
            out!(
                "{} v{} {}: {}",
                entry.session_id,
                entry.version,
                entry.raw_name.as_deref().unwrap_or(&entry.event),
                entry.reason
            );
        }
        out!(
            "\n== verify: {} ({} events in {} streams)",
            if verified.is_clean() {
                "consistent"
            } else {
                "INCONSISTENT"
            },
            verified.events,
            verified.streams
        );
    }
    engine.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

//! `linkflow accounts`, `merchants`.

use std::process::ExitCode;

use linkflow::views::{AccountJson, MerchantJson};
use linkflow::Engine;

use crate::{print_json, CliError};

pub async fn accounts(
    engine: &Engine,
    limit: usize,
    cursor: Option<String>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let after = crate::cursor(cursor.as_deref())?;
    let page = engine.accounts_page(limit, after).await?;
    let accounts: Vec<AccountJson> = page.accounts.iter().map(AccountJson::from).collect();
    let next = page.next.map(|cursor| cursor.to_string());
    if json {
        print_json(&serde_json::json!({"accounts": accounts, "next_cursor": next}));
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<9} {:<38} {:<20} {:<15} operations",
        "provider",
        "user",
        "institution",
        "state"
    );
    for account in &accounts {
        let operations: Vec<String> = account
            .operations
            .iter()
            .map(|operation| format!("{:?} {:?}", operation.kind, operation.outcome).to_lowercase())
            .collect();
        out!(
            "{:<9} {:<38} {:<20} {:<15} {}",
            account.provider.as_str(),
            crate::shown(&account.external_user_id),
            account.institution_id,
            account.state,
            if operations.is_empty() {
                "-".to_owned()
            } else {
                operations.join(", ")
            }
        );
    }
    match next {
        Some(next) => out!("{} accounts; more: --cursor {next}", accounts.len()),
        None => out!("{} accounts", accounts.len()),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn merchants(engine: &Engine, json: bool) -> Result<ExitCode, CliError> {
    let merchants: Vec<MerchantJson> = engine
        .merchants()
        .await?
        .iter()
        .map(MerchantJson::from)
        .collect();
    if json {
        print_json(&merchants);
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<10} {:<16} {:<16} {:<8} {:<8} {:<6} since",
        "merchant",
        "name",
        "type",
        "platform",
        "sdk",
        "status"
    );
    for merchant in &merchants {
        out!(
            "{:<10} {:<16} {:<16} {:<8} {:<8} {:<6} {}",
            merchant.merchant_id,
            merchant.name.as_deref().unwrap_or("-"),
            merchant.product_type,
            merchant.platform,
            merchant.sdk.as_deref().unwrap_or("-"),
            format!("{:?}", merchant.status).to_lowercase(),
            merchant.since.to_rfc3339()
        );
    }
    out!("{} merchant availabilities", merchants.len());
    Ok(ExitCode::SUCCESS)
}

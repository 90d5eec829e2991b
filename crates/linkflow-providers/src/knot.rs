//! Knot webhooks: `{event, session_id?, task_id?, external_user_id, merchant{id, name, logo?,
//! category?}, data?, timestamp}` with `timestamp` in epoch milliseconds (a number, or a
//! string in one of the doc's samples).
//!
//! `AUTHENTICATED` completes the link session `session_id` (the merchant is the institution).
//! Cart syncs, checkouts and `ACCOUNT_LOGIN_REQUIRED` belong to the linked account (knot,
//! `external_user_id`, merchant id). `MERCHANT_STATUS_UPDATE` is merchant availability.

use linkflow_core::{
    AccountEvent, AccountEventKind, AccountKey, Event, EventKind, OperationKind, Outcome, Provider,
};
use serde_json::Value;

use crate::json::{At, Obj};
use crate::{
    dedupe_key, epoch_millis, session_id, Availability, DecodeContext, DecodeError, Decoded,
    MerchantStatus, Target,
};

/// Every documented webhook name.
pub const EVENT_NAMES: [&str; 7] = [
    "AUTHENTICATED",
    "SYNC_CART_SUCCEEDED",
    "SYNC_CART_FAILED",
    "CHECKOUT_SUCCEEDED",
    "CHECKOUT_FAILED",
    "ACCOUNT_LOGIN_REQUIRED",
    "MERCHANT_STATUS_UPDATE",
];

/// Decodes one Knot webhook body. (Check its signature first: [`crate::signature`].)
pub fn decode(value: &Value, text: &str, _context: &DecodeContext) -> Result<Decoded, DecodeError> {
    let root = Obj::new(At::root(value))?;
    let name = root.str("event")?;
    let timestamp_path = root.path_of("timestamp");
    let occurred_at = epoch_millis(
        &timestamp_path,
        root.value("timestamp").ok_or(DecodeError::Missing {
            path: timestamp_path.clone(),
        })?,
    )?;
    let merchant = root.obj("merchant")?;
    let merchant_id = merchant.id("id")?;

    let target = match name {
        "AUTHENTICATED" => {
            let session = session_id(&root.path_of("session_id"), root.str("session_id")?)?;
            let mut event = Event::new(EventKind::Succeeded)
                .at(occurred_at)
                .with_institution(merchant_id, merchant.opt_str("name")?);
            event.attributes.external_user_id = Some(root.str("external_user_id")?.to_owned());
            Target::Session { session, event }
        }
        "MERCHANT_STATUS_UPDATE" => {
            let data = root.obj("data")?;
            let status = match data.str("status")? {
                "UP" => Availability::Up,
                "DOWN" => Availability::Down,
                other => {
                    return Err(DecodeError::invalid(
                        data.path_of("status"),
                        format!("`{other}` is not a status (UP, DOWN)"),
                    ))
                }
            };
            Target::Merchant(MerchantStatus {
                merchant_id,
                name: merchant.opt_str("name")?.map(str::to_owned),
                category: merchant.opt_str("category")?.map(str::to_owned),
                logo: merchant.opt_str("logo")?.map(str::to_owned),
                product_type: data.str("type")?.to_owned(),
                platform: data.str("platform")?.to_owned(),
                sdk: data.opt_str("sdk")?.map(str::to_owned),
                status,
                since: occurred_at,
            })
        }
        _ => {
            let account_kind = match name {
                "SYNC_CART_SUCCEEDED" => {
                    Some(operation(OperationKind::CartSync, Outcome::Succeeded))
                }
                "SYNC_CART_FAILED" => Some(operation(OperationKind::CartSync, Outcome::Failed)),
                "CHECKOUT_SUCCEEDED" => {
                    Some(operation(OperationKind::Checkout, Outcome::Succeeded))
                }
                "CHECKOUT_FAILED" => Some(operation(OperationKind::Checkout, Outcome::Failed)),
                "ACCOUNT_LOGIN_REQUIRED" => Some(AccountEventKind::LoginRequired),
                _ => None,
            };
            match (account_kind, root.opt_str("session_id")?) {
                // A name no adapter knows, for a session: kept on the session.
                (None, Some(session)) => Target::Session {
                    session: session_id(&root.path_of("session_id"), session)?,
                    event: Event::new(EventKind::Unrecognized {
                        raw_name: name.to_owned(),
                    })
                    .at(occurred_at),
                },
                (kind, _) => {
                    let kind = kind.unwrap_or_else(|| AccountEventKind::Unrecognized {
                        raw_name: name.to_owned(),
                    });
                    let mut event = AccountEvent::new(kind).at(occurred_at);
                    event.transaction_ids = transaction_ids(&root)?;
                    Target::Account {
                        account: AccountKey {
                            provider: Provider::Knot,
                            external_user_id: root.str("external_user_id")?.to_owned(),
                            institution_id: merchant_id,
                        },
                        event,
                    }
                }
            }
        }
    };
    let stream = match &target {
        Target::Session { session, .. } => session.to_string(),
        Target::Account { account, .. } => {
            format!("{}:{}", account.external_user_id, account.institution_id)
        }
        Target::Merchant(status) => status.merchant_id.clone(),
    };
    Ok(Decoded {
        provider: Provider::Knot,
        raw_name: name.to_owned(),
        event_id: None,
        dedupe_key: dedupe_key(Provider::Knot, &stream, name, Some(occurred_at), value),
        raw: text.to_owned(),
        target,
    })
}

fn operation(kind: OperationKind, outcome: Outcome) -> AccountEventKind {
    AccountEventKind::Operation { kind, outcome }
}

/// `data.transactions[].id`, when present.
fn transaction_ids(root: &Obj<'_>) -> Result<Vec<String>, DecodeError> {
    let Some(data) = root.opt_obj("data")? else {
        return Ok(Vec::new());
    };
    let path = data.path_of("transactions");
    let Some(transactions) = data.value("transactions") else {
        return Ok(Vec::new());
    };
    let items = transactions
        .as_array()
        .ok_or_else(|| DecodeError::wrong_type(&path, "an array", transactions))?;
    let mut ids = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let at = format!("{path}[{index}]");
        let object = Obj::new(At {
            value: item,
            path: &at,
        })?;
        ids.push(object.id("id")?);
    }
    Ok(ids)
}

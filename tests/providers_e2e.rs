//! Provider payloads end to end: decoded by the adapters, stored by the engine, read back as
//! sessions, accounts and merchant availability.

use chrono::{DateTime, TimeZone, Utc};
use linkflow::{AccountFollow, Engine, IngestOutcome, PayloadContext};
use linkflow_core::{
    AccountState, Availability, LinkType, OperationKind, Origin, Phase, Provider, SessionId,
};
use linkflow_e2e::fixtures_dir;
use linkflow_providers::{signature, DecodeContext};
use serde_json::json;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 0).unwrap()
}

fn fixture(relative: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join(relative)).unwrap()
}

/// The body through `Engine::ingest_payload`, the call the CLI and HTTP share.
async fn ingest(
    engine: &Engine,
    provider: Provider,
    body: &str,
    context: &DecodeContext,
) -> Vec<IngestOutcome> {
    let context = PayloadContext {
        decode: context.clone(),
        origin: Origin::new("providers_e2e"),
    };
    engine
        .ingest_payload(provider.into(), body.as_bytes(), &context)
        .await
        .unwrap()
        .results
        .into_iter()
        .map(|result| result.outcome)
        .collect()
}

fn moneykit(
    name: &str,
    session: &str,
    second: u32,
    properties: serde_json::Value,
    institution: Option<&str>,
    link_type: &str,
) -> String {
    let mut meta = json!({
        "link_type": link_type,
        "link_session_id": session,
        "timestamp": format!("2023-11-29T12:44:{second:02}.000Z"),
    });
    if let Some(id) = institution {
        meta["institution_id"] = json!(id);
        meta["institution_name"] = json!(format!("{id} bank"));
    }
    json!({"name": name, "properties": properties, "meta": meta}).to_string()
}

fn flow(events: &[String]) -> String {
    format!("[{}]", events.join(","))
}

fn count(outcomes: &[IngestOutcome], pattern: fn(&IngestOutcome) -> bool) -> usize {
    outcomes.iter().filter(|outcome| pattern(outcome)).count()
}

fn accepted(outcome: &IngestOutcome) -> bool {
    matches!(outcome, IngestOutcome::Accepted { .. })
}
fn rejected(outcome: &IngestOutcome) -> bool {
    matches!(outcome, IngestOutcome::Rejected { .. })
}
fn late(outcome: &IngestOutcome) -> bool {
    matches!(outcome, IngestOutcome::Accepted { late: true, .. })
}
fn linked(outcome: &IngestOutcome) -> bool {
    matches!(outcome, IngestOutcome::Accepted { accounts, .. }
        if accounts.iter().any(|account| matches!(account, AccountFollow::Linked { .. })))
}
fn duplicate(outcome: &IngestOutcome) -> bool {
    matches!(outcome, IngestOutcome::Duplicate { .. })
}

async fn phase(engine: &Engine, session: &str) -> Phase {
    engine
        .session(&SessionId::new(session).unwrap())
        .await
        .unwrap()
        .unwrap()
        .state
        .phase()
}

#[tokio::test]
async fn moneykit_doc_flow_succeeds_and_a_full_redelivery_is_all_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let context = DecodeContext::received_at(now());
    let body = fixture("moneykit/sample_flow.json");
    let outcomes = ingest(&engine, Provider::Moneykit, &body, &context).await;
    assert_eq!(count(&outcomes, accepted), 14);
    let session = "sandbox_6624ccbc-69bb-4d0d-951a-807715fe6a94";
    assert_eq!(phase(&engine, session).await, Phase::Succeeded);
    let history = engine
        .history(&SessionId::new(session).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history[4].event, "unrecognized");
    assert_eq!(history[4].raw_name.as_deref(), Some("submit_credentails"));
    // Redelivered later (a retry of the whole forward): stored once.
    let mut later = context.clone();
    later.received_at += chrono::Duration::minutes(3);
    let again = ingest(&engine, Provider::Moneykit, &body, &later).await;
    assert_eq!(count(&again, duplicate), 14);
    assert!(engine.verify().await.unwrap().is_clean());
}

#[tokio::test]
async fn moneykit_oauth_mfa_retry_exit_and_reselection_flows() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let context = DecodeContext::received_at(now());
    let empty = json!({});
    let oauth = flow(&[
        moneykit("open", "oauth", 0, empty.clone(), None, "Link"),
        moneykit(
            "select_institution",
            "oauth",
            1,
            json!({"institution_id": "ins_oauth", "institution_name": "OAuth Bank"}),
            None,
            "Link",
        ),
        moneykit(
            "open_oauth",
            "oauth",
            2,
            empty.clone(),
            Some("ins_oauth"),
            "Link",
        ),
        moneykit(
            "submit_accounts",
            "oauth",
            3,
            empty.clone(),
            Some("ins_oauth"),
            "Link",
        ),
        moneykit(
            "success",
            "oauth",
            4,
            empty.clone(),
            Some("ins_oauth"),
            "Link",
        ),
    ]);
    let mfa = flow(&[
        moneykit("open", "mfa", 0, empty.clone(), None, "Link"),
        moneykit(
            "submit_credentials",
            "mfa",
            1,
            empty.clone(),
            Some("ins_1"),
            "Link",
        ),
        moneykit(
            "submit_otp_device",
            "mfa",
            2,
            empty.clone(),
            Some("ins_1"),
            "Link",
        ),
        moneykit("submit_otp", "mfa", 3, empty.clone(), Some("ins_1"), "Link"),
        moneykit(
            "submit_accounts",
            "mfa",
            4,
            empty.clone(),
            Some("ins_1"),
            "Link",
        ),
        moneykit("success", "mfa", 5, empty.clone(), Some("ins_1"), "Link"),
    ]);
    let retry = flow(&[
        moneykit("open", "retry", 0, empty.clone(), None, "Link"),
        moneykit(
            "submit_credentials",
            "retry",
            1,
            empty.clone(),
            Some("ins_1"),
            "Link",
        ),
        moneykit(
            "error",
            "retry",
            2,
            json!({"error_id": "e1", "displayed_message": "Wrong password", "request_id": "r1"}),
            Some("ins_1"),
            "Link",
        ),
        moneykit(
            "submit_credentials",
            "retry",
            3,
            empty.clone(),
            Some("ins_1"),
            "Link",
        ),
    ]);
    let exit = flow(&[
        moneykit("open", "exit", 0, empty.clone(), None, "Link"),
        moneykit(
            "search_institution",
            "exit",
            1,
            json!({"search_term": "bmo"}),
            None,
            "Link",
        ),
        moneykit("exit", "exit", 2, empty.clone(), None, "Link"),
    ]);
    let back = flow(&[
        moneykit("open", "back", 0, empty.clone(), None, "Link"),
        moneykit(
            "select_institution",
            "back",
            1,
            json!({"institution_id": "ins_1"}),
            None,
            "Link",
        ),
        moneykit(
            "submit_credentials",
            "back",
            2,
            empty.clone(),
            Some("ins_1"),
            "Link",
        ),
        moneykit(
            "submit_mfa",
            "back",
            3,
            empty.clone(),
            Some("ins_1"),
            "Link",
        ),
        moneykit(
            "select_institution",
            "back",
            4,
            json!({"institution_id": "ins_2"}),
            None,
            "Link",
        ),
    ]);
    for body in [&oauth, &mfa, &retry, &exit, &back] {
        let outcomes = ingest(&engine, Provider::Moneykit, body, &context).await;
        assert!(outcomes.iter().all(accepted), "{outcomes:?}");
    }
    assert_eq!(phase(&engine, "oauth").await, Phase::Succeeded);
    assert_eq!(phase(&engine, "mfa").await, Phase::Succeeded);
    let retry = engine
        .session(&SessionId::new("retry").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retry.state.phase(), Phase::Authenticating);
    assert_eq!(
        retry
            .state
            .last_error()
            .unwrap()
            .value
            .request_id
            .as_deref(),
        Some("r1")
    );
    let exit = engine
        .session(&SessionId::new("exit").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.state.phase(), Phase::Exited);
    assert_eq!(exit.state.exit().unwrap().phase, Phase::Opened);
    let back = engine
        .session(&SessionId::new("back").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.state.phase(), Phase::InstitutionSelected);
    assert_eq!(back.state.institution().unwrap().id, "ins_2");
}

#[tokio::test]
async fn moneykit_out_of_order_success_takes_the_late_step_in_its_place_and_relink_repairs_the_account(
) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut context = DecodeContext::received_at(now());
    context.external_user_id = Some("user_7".into());
    let empty = json!({});
    // success arrives before submit_accounts: the late step is folded in its place, before
    // the success, and nothing is rejected.
    let outcomes = ingest(
        &engine,
        Provider::Moneykit,
        &flow(&[
            moneykit("open", "relink", 0, empty.clone(), None, "Relink"),
            moneykit(
                "submit_credentials",
                "relink",
                1,
                empty.clone(),
                Some("ins_1"),
                "Relink",
            ),
            moneykit(
                "success",
                "relink",
                3,
                empty.clone(),
                Some("ins_1"),
                "Relink",
            ),
            moneykit(
                "submit_accounts",
                "relink",
                2,
                empty.clone(),
                Some("ins_1"),
                "Relink",
            ),
        ]),
        &context,
    )
    .await;
    assert_eq!(count(&outcomes, accepted), 4, "{outcomes:?}");
    assert_eq!(count(&outcomes, rejected), 0);
    assert!(late(&outcomes[3]), "{outcomes:?}");
    assert!(
        linked(&outcomes[2]),
        "a success with a known user links the account"
    );
    let history = engine
        .history(&SessionId::new("relink").unwrap())
        .await
        .unwrap()
        .unwrap();
    let names: Vec<&str> = history.iter().map(|entry| entry.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "opened",
            "credentials_submitted",
            "accounts_selected",
            "succeeded"
        ]
    );
    assert!(history.iter().all(|entry| entry.accepted));
    assert!(history[2].late);
    assert_eq!(history[2].version.0, 4, "its arrival number");
    let accounts = engine.accounts().await.unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].key.external_user_id, "user_7");
    assert_eq!(accounts[0].account.state(), AccountState::Active);
    assert_eq!(accounts[0].account.link_type(), Some(LinkType::Relink));
}

#[tokio::test]
async fn benji_flow_with_an_early_authentication_and_exit_after_success() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let context = DecodeContext::received_at(now());
    let envelope = |callback: &str, extra: serde_json::Value| {
        let mut value = json!({"callback": callback, "session_id": "benji_1"});
        for (key, item) in extra.as_object().unwrap() {
            value[key] = item.clone();
        }
        value.to_string()
    };
    let outcomes = ingest(&engine, Provider::Benji, &flow(&[
        envelope("onEvent", json!({"event": "user_authenticated_with_partner", "timestamp": 2000})),
        envelope("onEvent", json!({"event": "user_partner_select", "metadata": {"partner_id": "marriott", "external_user_id": "user_9"}, "timestamp": 1000})),
        envelope("onError", json!({"error": "partner_connect_error", "error_id": "err_1", "timestamp": 2500})),
        envelope("onSuccess", json!({"metadata": {"partner_id": "marriott", "external_user_id": "user_9"}, "timestamp": 3000})),
        envelope("onExit", json!({"timestamp": 4000})),
    ]), &context).await;
    // The authentication arrives before the partner choice that happened before it: the
    // choice is folded in its place (by its timestamp), and nothing is rejected.
    assert!(matches!(outcomes[0], IngestOutcome::Accepted { .. }));
    assert!(late(&outcomes[1]), "{outcomes:?}");
    assert_eq!(count(&outcomes, rejected), 0);
    assert_eq!(phase(&engine, "benji_1").await, Phase::Succeeded);
    let view = engine
        .session(&SessionId::new("benji_1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.state.exit().unwrap().phase, Phase::Succeeded);
    assert_eq!(
        view.state.last_error().unwrap().value.code.as_deref(),
        Some("partner_connect_error")
    );
    let accounts = engine.accounts().await.unwrap();
    assert_eq!(accounts[0].key.provider, Provider::Benji);
    assert_eq!(accounts[0].key.institution_id, "marriott");
}

#[tokio::test]
async fn knot_checkout_before_authenticated_waits_for_the_account_then_login_breaks_and_relinks() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let context = DecodeContext::received_at(now());
    let user = "3dcbb19a-b2f1-4a7b-8792-d76027b627b3";
    let checkout = fixture("knot/checkout_succeeded.json")
        .replace("{your-unique-identifier}", user)
        .replace("\"id\": 7", "\"id\": 10");
    // The checkout webhook arrives first: the account does not exist yet, it is rejected
    // (for now: kept, and listed with the reason).
    let outcomes = ingest(&engine, Provider::Knot, &checkout, &context).await;
    assert!(rejected(&outcomes[0]), "{outcomes:?}");
    assert!(
        engine.accounts().await.unwrap().is_empty(),
        "no account exists yet"
    );
    assert_eq!(engine.rejected(None).await.unwrap().events.len(), 1);
    // AUTHENTICATED completes the session, creates the account and lets the checkout in.
    let outcomes = ingest(
        &engine,
        Provider::Knot,
        &fixture("knot/authenticated.json"),
        &context,
    )
    .await;
    assert!(linked(&outcomes[0]), "{outcomes:?}");
    assert_eq!(
        phase(&engine, "fb5aa994-ed1c-4c3e-b29a-b2a53222e584").await,
        Phase::Succeeded
    );
    let account = &engine.accounts().await.unwrap()[0];
    assert_eq!(account.account.state(), AccountState::Active);
    assert_eq!(
        account.rejected, 0,
        "the checkout is accepted after the link"
    );
    assert!(engine.rejected(None).await.unwrap().events.is_empty());
    assert_eq!(
        account.account.operations()[0].kind,
        OperationKind::Checkout
    );
    assert_eq!(account.account.operations()[0].transaction_ids.len(), 2);
    // Knot retries the same webhook: stored once.
    let again = ingest(
        &engine,
        Provider::Knot,
        &fixture("knot/authenticated.json"),
        &context,
    )
    .await;
    assert!(duplicate(&again[0]));
    // The login breaks, then a new AUTHENTICATED (a new session) repairs it.
    let login = fixture("knot/account_login_required.json")
        .replace("{your-unique-identifier}", user)
        .replace("\"id\": 36", "\"id\": 10");
    ingest(&engine, Provider::Knot, &login, &context).await;
    assert_eq!(
        engine.accounts().await.unwrap()[0].account.state(),
        AccountState::LoginRequired
    );
    let relink = fixture("knot/authenticated.json")
        .replace("fb5aa994-ed1c-4c3e-b29a-b2a53222e584", "second-session")
        .replace("1710864923198", "1710864999999");
    ingest(&engine, Provider::Knot, &relink, &context).await;
    assert_eq!(
        engine.accounts().await.unwrap()[0].account.state(),
        AccountState::Active
    );
    assert!(engine.verify().await.unwrap().is_clean());
}

#[tokio::test]
async fn knot_merchant_availability_keeps_the_newest_status_whatever_the_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let context = DecodeContext::received_at(now());
    let up = fixture("knot/merchant_status_update.json");
    let newer_down = up
        .replace("\"UP\"", "\"DOWN\"")
        .replace("1710864923198", "1710864999999");
    ingest(&engine, Provider::Knot, &newer_down, &context).await;
    ingest(&engine, Provider::Knot, &up, &context).await;
    let merchants = engine.merchants().await.unwrap();
    assert_eq!(merchants.len(), 1);
    assert_eq!(merchants[0].status, Availability::Down);
    assert_eq!(merchants[0].since.timestamp_millis(), 1_710_864_999_999);
    let android = up.replace("\"ios\"", "\"android\"");
    ingest(&engine, Provider::Knot, &android, &context).await;
    assert_eq!(engine.merchants().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_webhook_with_a_bad_signature_is_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let body = fixture("knot/authenticated.json");
    let forged = signature::sign(b"not the secret", body.as_bytes(), "application/json").unwrap();
    let checked = signature::verify(
        b"the secret",
        Some(&forged),
        body.as_bytes(),
        "application/json",
    );
    assert_eq!(checked, Err(signature::SignatureError::Mismatch));
    // The caller stops here; the engine never saw the event.
    assert_eq!(engine.head().unwrap().0, 0);
    assert!(engine
        .sessions(Default::default())
        .await
        .unwrap()
        .is_empty());
}

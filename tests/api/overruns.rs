//! Overruns end to end: a charge above its hold, settled by billing-worker from the queue,
//! takes only what other holds leave free and is listed for the admin.

use std::str::FromStr;

use bigdecimal::BigDecimal;
use domain::{Money, Usage};
use integration_tests::{BillingWorker, Credential, eventually, spawn_app};
use reqwest::Method;
use serde_json::json;

fn dec(s: &str) -> BigDecimal {
    BigDecimal::from_str(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overrun_settled_from_the_queue_is_listed_for_the_admin_only() {
    let app = spawn_app().await;
    let mock = mock_llm::start(mock_llm::MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let setup = app.chat_setup(mock, &[("good-key", 1)], "10").await;
    let admin = app.admin_token().to_owned();

    // Three calls of the user are held: the overrun's 0.3, a normal call's 0.2, and 9.4 of a
    // call still running. 0.1 of the balance is free.
    let [overrun, normal, running] = [(); 3].map(|_| uuid::Uuid::new_v4());
    let mut conn = app.pool.get().await.unwrap();
    for (request, amount) in [(overrun, "0.3"), (normal, "0.2"), (running, "9.4")] {
        persistence::billing::place_hold(
            &mut conn,
            setup.user_id,
            request,
            &Money::parse(amount).unwrap(),
            600,
        )
        .await
        .unwrap()
        .unwrap();
    }
    drop(conn);
    let charge = |request_id, cost: &str| domain::BillingMessage {
        request_id,
        user_id: setup.user_id,
        access_key_id: None,
        model_id: setup.model_id,
        model_name: setup.model.clone(),
        usage: Usage {
            prompt_tokens: 100,
            completion_tokens: 1000,
            ..Usage::default()
        },
        cost: Money::parse(cost).unwrap(),
        lease_id: None,
        occurred_at: chrono::Utc::now(),
    };
    let broker = messaging::Broker::connect(app.settings.broker.clone())
        .await
        .unwrap();
    let batch = domain::BillingBatch {
        charges: vec![charge(overrun, "0.9"), charge(normal, "0.1")],
    };
    broker
        .publish_json(
            messaging::BILLING_LOG_QUEUE,
            &batch.to_json_bytes(),
            "overrun-test",
        )
        .await
        .unwrap();
    let worker = BillingWorker::start(&app).await;
    eventually(15, || async {
        (app.usage_of(setup.user_id).await.len() == 2).then_some(())
    })
    .await;
    worker.stop().await;
    broker.close().await;

    // The overrun took its own 0.3 and the free 0.1; the running call's 9.4 is untouched.
    let (balance, ledger) = app.balance_and_ledger_sum(setup.user_id).await;
    assert_eq!((balance.clone(), ledger), (dec("9.5"), dec("9.5")));
    assert_eq!(app.open_holds(setup.user_id).await, 1);
    let mut costs: Vec<BigDecimal> = app
        .usage_of(setup.user_id)
        .await
        .into_iter()
        .map(|(_, _, cost)| cost)
        .collect();
    costs.sort();
    assert_eq!(
        costs,
        [dec("0.1"), dec("0.4")],
        "usage says what was charged"
    );
    app.assert_books_balance().await;

    let list = app.get("/v1/admin/overruns", &admin).await;
    let list = list.assert_status(200);
    assert_eq!(
        (&list["total"], &list["limit"], &list["offset"]),
        (&json!(1), &json!(50), &json!(0))
    );
    let row = &list["data"][0];
    assert_eq!(row["request_id"], overrun.to_string());
    assert_eq!(row["user_id"], setup.user_id);
    assert_eq!(row["model_name"], setup.model);
    assert_eq!(
        (
            dec(row["priced_cost"].as_str().unwrap()),
            dec(row["held_amount"].as_str().unwrap()),
            dec(row["charged"].as_str().unwrap()),
            dec(row["uncollected"].as_str().unwrap()),
        ),
        (dec("0.9"), dec("0.3"), dec("0.4"), dec("0.5"))
    );
    assert!(row["created_at"].is_string());

    // Filtered by user, paged, validated like the other admin lists.
    let mine = app
        .get(
            &format!("/v1/admin/overruns?user_id={}", setup.user_id),
            &admin,
        )
        .await;
    assert_eq!(mine.assert_status(200)["total"], 1);
    let nobody = app
        .get("/v1/admin/overruns?user_id=987654321", &admin)
        .await;
    assert_eq!(nobody.assert_status(200)["data"], json!([]));
    let past = app.get("/v1/admin/overruns?offset=1", &admin).await;
    assert_eq!(past.assert_status(200)["data"], json!([]));
    app.get("/v1/admin/overruns?limit=0", &admin)
        .await
        .assert_error(400, "invalid_request");

    // Users see none of it; without a token, 401.
    app.get("/v1/admin/overruns", &setup.token)
        .await
        .assert_error(403, "forbidden");
    app.send(Method::GET, "/v1/admin/overruns", Credential::None, None)
        .await
        .assert_error(401, "unauthorized");

    // The OpenAPI document describes it.
    let spec = app
        .send(Method::GET, "/openapi.json", Credential::None, None)
        .await;
    assert!(
        spec.assert_status(200)["paths"]
            .as_object()
            .unwrap()
            .contains_key("/v1/admin/overruns")
    );
}

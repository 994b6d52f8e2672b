//! Processes dying or being stopped: a killed worker's job is taken over after its lease, a
//! SIGTERM lets in-flight work finish; either way every job ends once and is billed once. A
//! gateway killed with SIGKILL under load loses no answered call's charge, and two gateway
//! processes sharing one user never admit more calls than the balance covers.

use std::str::FromStr;
use std::time::Duration;

use bigdecimal::BigDecimal;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::StreamExt;
use integration_tests::{
    BillingWorker, Credential, GatewayProcess, InvocationWorker, TestApp, eventually, job_status,
    spawn_app,
};
use mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

async fn submit_slow_job(app: &integration_tests::TestApp, key: &str) -> uuid::Uuid {
    let reply = app
        .send(
            Method::POST,
            "/v1/jobs/image-generation",
            Credential::Bearer(key),
            Some(json!({"model": "demo-image", "prompt": "take your time [[sleep:1500]]"})),
        )
        .await;
    reply.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_job_is_taken_over_and_ends_once_billed_once() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let s = app.chat_setup(mock, &[("good-key", 1)], "1").await;
    let mut doomed = integration_tests::spawn_invocation_worker_process(&app);

    let job_id = submit_slow_job(&app, &s.access_key).await;
    // Claimed and its provider call under way (PROCESSING alone may still be before the call).
    eventually(20, || async {
        (s.mock.calls() == 1 && job_status(&app, job_id).await == "PROCESSING").then_some(())
    })
    .await;
    doomed.kill().unwrap(); // SIGKILL, mid-call
    doomed.wait().unwrap();

    let survivor = InvocationWorker::start(&app).await;
    eventually(30, || async {
        (job_status(&app, job_id).await == "COMPLETED").then_some(())
    })
    .await;
    eventually(15, || async {
        (app.usage_of(s.user_id).await.len() == 1).then_some(())
    })
    .await;
    // Settled to the end: nothing left in the outbox, no hold open (the usage row's request
    // id is the job id, unique, so a second charge could only have changed nothing).
    eventually(15, || async {
        (app.count("billing_outbox").await == 0 && app.open_holds(s.user_id).await == 0)
            .then_some(())
    })
    .await;
    assert_eq!(app.usage_of(s.user_id).await.len(), 1, "billed once");
    assert_eq!(
        app.balance_and_ledger_sum(s.user_id).await.0,
        BigDecimal::from_str("0.96").unwrap()
    );
    assert_eq!(
        s.mock.calls(),
        2,
        "the killed attempt's call, then the takeover's"
    );
    app.assert_books_balance().await;
    survivor.stop().await;
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_in_flight_job_finish_before_the_worker_exits() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let s = app.chat_setup(mock, &[("good-key", 1)], "1").await;
    let mut worker = integration_tests::spawn_invocation_worker_process(&app);

    let job_id = submit_slow_job(&app, &s.access_key).await;
    eventually(20, || async {
        (job_status(&app, job_id).await == "PROCESSING").then_some(())
    })
    .await;
    let pid = worker.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::task::spawn_blocking(move || worker.wait().unwrap())
        .await
        .unwrap();
    assert!(
        exited.success(),
        "the worker exits cleanly after SIGTERM: {exited:?}"
    );
    // It finished the job before leaving: no takeover was needed.
    assert_eq!(job_status(&app, job_id).await, "COMPLETED");
    assert_eq!(s.mock.calls(), 1);
    eventually(15, || async {
        (app.usage_of(s.user_id).await.len() == 1).then_some(())
    })
    .await;
    app.assert_books_balance().await;
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_calls_answers_them_all_and_loses_no_charge() {
    let mut app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(
        MockConfig {
            latency_ms: 1500,
            ..MockConfig::default()
        },
        "127.0.0.1",
        0,
    )
    .await
    .unwrap();
    let s = app.chat_setup(mock, &[("good-key", 1)], "5").await;

    // A second gateway, as its own process, on the same database and queues.
    let gateway = GatewayProcess::spawn(&app).await;
    app.address = gateway.address.clone();

    let body = json!({"model": "demo-chat", "messages": [{"role": "user", "content": "slow one"}]});
    let calls = (0..10).map(|_| {
        app.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&s.access_key),
            Some(body.clone()),
        )
    });
    let stop = async {
        // Every call at the provider (it answers after 1.5 s), then SIGTERM.
        eventually(10, || async { (s.mock.calls() == 10).then_some(()) }).await;
        gateway.terminate().await
    };
    let (replies, exited) = tokio::join!(futures_util::future::join_all(calls), stop);
    for reply in &replies {
        reply.assert_status(200);
    }
    assert!(exited.success(), "{exited:?}");
    // Every answered call is billed, once.
    eventually(20, || async {
        (app.usage_of(s.user_id).await.len() == 10).then_some(())
    })
    .await;
    app.assert_books_balance().await;
    assert_eq!(app.open_holds(s.user_id).await, 0);
    billing.stop().await;
}

/// Concurrent clients calling the gateway that gets killed.
const CLIENTS: usize = 8;
/// Answered calls before the kill: the load is well under way by then.
const KILL_AFTER_ANSWERED: usize = 400;
/// Completion tokens a call may ask for (its `max_tokens`).
const MAX_TOKENS: usize = 64;

/// The body of call number `seq` and the usage it will be billed, (prompt, completion) tokens,
/// which no other call of the test shares: the mock counts a prompt's words, and the
/// `[[tokens:N]]` directive sets the answer's length. The billed usage row thus names the call.
/// (The call's usage row cannot be found by its `X-Request-Id`: the gateway answers with the
/// request's own id, while the charge carries an id the call path mints for it.)
fn numbered_call(model: &str, seq: usize, stream: bool) -> (Value, (i64, i64)) {
    let words = seq % 100 + 1;
    let completion = seq / 100 + 1;
    assert!(
        completion <= MAX_TOKENS,
        "more calls than usages told apart"
    );
    let prompt = format!("[[tokens:{completion}]]{}", " w".repeat(words));
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    (body, (words as i64 + 1, completion as i64))
}

fn usage_of(value: &Value) -> Option<(i64, i64)> {
    Some((
        value["prompt_tokens"].as_i64()?,
        value["completion_tokens"].as_i64()?,
    ))
}

/// Makes one call; answers its usage if the answer arrived complete: a 200 with its whole JSON
/// body, or a stream up to its final `data: [DONE]`.
async fn complete_answer(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> Option<(i64, i64)> {
    let response = client
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    if body["stream"] != json!(true) {
        let answer: Value = response.json().await.ok()?;
        return usage_of(&answer["usage"]);
    }
    let mut events = String::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        events.push_str(&String::from_utf8_lossy(&chunk.ok()?));
    }
    if !events.contains("data: [DONE]") {
        return None;
    }
    let usage = events
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .find_map(|event| usage_of(&event["usage"]));
    assert!(usage.is_some(), "a complete stream without usage: {events}");
    usage
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count_of(app: &TestApp, sql: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

/// `kill -9` of a gateway process while 8 clients make plain and streaming calls through it:
/// once billing has settled, every call that got its complete answer has exactly one usage row,
/// nothing is charged twice, and the books balance. A charge kept only in memory after its
/// answer went out (a publish still lingering or awaiting its confirm) dies with the process
/// and fails this test.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_under_load_loses_no_answered_calls_charge() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let s = app.chat_setup(mock, &[("good-key", 1)], "50").await;
    let gateway = GatewayProcess::spawn(&app).await;
    let url = format!("{}/v1/chat/completions", gateway.address);
    let gateway = Arc::new(std::sync::Mutex::new(gateway));

    // The client whose answer is the KILL_AFTER_ANSWERED-th kills the gateway the moment that
    // answer is complete: a charge that is not durable by then is still in the process.
    let next = Arc::new(AtomicUsize::new(0));
    let answered_so_far = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, key, model) = (
                app.client.clone(),
                url.clone(),
                s.access_key.clone(),
                s.model.clone(),
            );
            let (gateway, next, answered_so_far, killed) = (
                Arc::clone(&gateway),
                Arc::clone(&next),
                Arc::clone(&answered_so_far),
                Arc::clone(&killed),
            );
            tokio::spawn(async move {
                let mut answered = Vec::new();
                while !killed.load(Ordering::SeqCst) {
                    let seq = next.fetch_add(1, Ordering::SeqCst);
                    let (body, expected) = numbered_call(&model, seq, seq % 3 == 0);
                    if let Some(usage) = complete_answer(&client, &url, &key, &body).await {
                        assert_eq!(usage, expected, "call {seq} answered another usage");
                        answered.push((usage, body["stream"] == json!(true)));
                        if answered_so_far.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ANSWERED
                        {
                            gateway.lock().unwrap().kill();
                            killed.store(true, Ordering::SeqCst);
                        }
                    }
                }
                answered
            })
        })
        .collect();
    eventually(60, || async { killed.load(Ordering::SeqCst).then_some(()) }).await;
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    let streams = answered.iter().filter(|(_, stream)| *stream).count();

    // Settled: every answered call billed, nothing left in the outbox or the billing queue. A
    // lost charge never arrives: then the deadline ends the wait.
    let broker = messaging::Broker::connect(app.settings.broker.clone())
        .await
        .unwrap();
    let queue = app.settings.broker.queue_prefix.clone() + "billing_log_queue";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (billed, lost) = loop {
        let mut billed: HashMap<(i64, i64), usize> = HashMap::new();
        for (prompt, completion, _) in app.usage_of(s.user_id).await {
            *billed.entry((prompt, completion)).or_default() += 1;
        }
        let lost: Vec<_> = answered
            .iter()
            .filter(|(usage, _)| !billed.contains_key(usage))
            .collect();
        let settled = lost.is_empty()
            && app.count("billing_outbox").await == 0
            && app.queue_depth(&broker, &queue).await == 0;
        if settled || std::time::Instant::now() > deadline {
            break (billed, lost);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    broker.close().await;
    let lost_streams = lost.iter().filter(|(_, stream)| *stream).count();
    assert!(
        lost.is_empty(),
        "{} of {} calls answered in full ({} of {streams} streams) have no usage row 30 s \
         after the kill: their charges died with the gateway; (prompt, completion) tokens of \
         the lost: {:?}",
        lost.len(),
        answered.len(),
        lost_streams,
        lost.iter().map(|(usage, _)| *usage).collect::<Vec<_>>()
    );
    let doubled: Vec<_> = billed.iter().filter(|(_, rows)| **rows > 1).collect();
    assert!(doubled.is_empty(), "calls billed twice: {doubled:?}");
    assert_eq!(
        count_of(
            &app,
            "SELECT count(*) AS n FROM balance_ledger l \
             LEFT JOIN (SELECT ledger_id, sum(cost) AS cost FROM usage_logs \
                        WHERE ledger_id IS NOT NULL GROUP BY ledger_id) u ON u.ledger_id = l.id \
             WHERE l.kind = 'charge' AND -l.delta <> COALESCE(u.cost, 0)"
        )
        .await,
        0,
        "a ledger charge row that is not the sum of the usage rows naming it"
    );
    assert_eq!(
        count_of(
            &app,
            "SELECT count(*) AS n FROM usage_logs WHERE cost > 0 AND ledger_id IS NULL"
        )
        .await,
        0,
        "a charged usage row that names no ledger row"
    );
    app.assert_books_balance().await;
    eprintln!(
        "killed after {} complete answers ({streams} streams); {} usage rows, {} of them for \
         calls whose answer the kill cut off",
        answered.len(),
        billed.len(),
        billed.len() - answered.len()
    );
    billing.stop().await;
}

/// The amount the gateway holds for the user's open call, if one is open.
async fn open_hold_amount(app: &TestApp, user_id: i64) -> Option<BigDecimal> {
    use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};
    use diesel_async::RunQueryDsl;
    use persistence::schema::balance_holds;
    let mut conn = app.pool.get().await.unwrap();
    balance_holds::table
        .filter(balance_holds::user_id.eq(user_id))
        .filter(balance_holds::status.eq("open"))
        .select(balance_holds::amount)
        .first(&mut conn)
        .await
        .optional()
        .unwrap()
}

/// The single-process test of 200 calls on a balance for 50 (chat.rs), across two gateway
/// processes on one database: the in-test app and a gateway-api binary, 100 calls each, all at
/// once. Together they admit at most the 50 the balance covers, refuse the rest with 402, no
/// balance ever goes below zero, and the books balance.
#[tokio::test(flavor = "multi_thread")]
async fn two_gateway_processes_admit_no_more_calls_than_one_balance_covers() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    // Slow enough that all 200 admissions happen while the first holds are still open.
    let setup = app
        .chat_setup(
            mock_llm::start(
                MockConfig {
                    latency_ms: 3000,
                    ..MockConfig::default()
                },
                "127.0.0.1",
                0,
            )
            .await
            .unwrap(),
            &[("good-key", 1)],
            "1",
        )
        .await;
    let body = json!({"model": setup.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16});
    let one_hold = {
        // Read while the call is open: a settled hold is deleted.
        let call = app.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(body.clone()),
        );
        let held = eventually(10, || open_hold_amount(&app, setup.user_id));
        let (reply, held) = tokio::join!(call, held);
        reply.assert_status(200);
        eventually(10, || async {
            (app.usage_of(setup.user_id).await.len() == 1).then_some(())
        })
        .await;
        held
    };
    let (balance, _) = app.balance_and_ledger_sum(setup.user_id).await;
    let target = one_hold * BigDecimal::from(50);
    let delta = domain::Money::from_decimal_rounded(target.clone() - balance).unwrap();
    app.post(
        &format!("/v1/admin/users/{}/balance-adjustments", setup.user_id),
        app.admin_token(),
        json!({"amount": delta.to_string(), "reason": "exactly fifty calls"}),
    )
    .await
    .assert_status(200);
    let start = app.balance_and_ledger_sum(setup.user_id).await.0;
    assert_eq!(start, target);
    let second = GatewayProcess::spawn(&app).await;

    let calls = (0..200).map(|i| {
        let address = if i % 2 == 0 {
            &app.address
        } else {
            &second.address
        };
        let request = app
            .client
            .post(format!("{address}/v1/chat/completions"))
            .bearer_auth(&setup.access_key)
            .json(&body);
        async move { (i % 2, request.send().await.unwrap().status().as_u16()) }
    });
    let replies = futures_util::future::join_all(calls).await;
    let ok = |process: usize| {
        replies
            .iter()
            .filter(|(p, status)| *p == process && *status == 200)
            .count()
    };
    let (ok_here, ok_there) = (ok(0), ok(1));
    let refused = replies.iter().filter(|(_, status)| *status == 402).count();
    let statuses: std::collections::BTreeMap<u16, usize> =
        replies.iter().fold(Default::default(), |mut m, (_, s)| {
            *m.entry(*s).or_default() += 1;
            m
        });
    assert!(
        ok_here + ok_there <= 50,
        "{ok_here} + {ok_there} calls admitted, the balance covers 50: {statuses:?}"
    );
    assert_eq!(
        ok_here + ok_there,
        50,
        "the 50 affordable calls are admitted: {statuses:?}"
    );
    assert!(
        ok_here > 0 && ok_there > 0,
        "both processes admitted calls: {ok_here} and {ok_there}"
    );
    assert_eq!(ok_here + ok_there + refused, 200, "{statuses:?}");

    let settled = eventually(20, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 51).then_some(rows)
    })
    .await;
    let billed: BigDecimal = settled[1..].iter().map(|r| r.2.clone()).sum();
    let end = app.balance_and_ledger_sum(setup.user_id).await.0;
    assert_eq!(end, start - billed);
    assert_eq!(
        count_of(
            &app,
            &format!(
                "SELECT count(*) AS n FROM balance_ledger WHERE user_id = {} AND balance_after < 0",
                setup.user_id
            )
        )
        .await,
        0,
        "the balance went below zero"
    );
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    drop(second);
    worker.stop().await;
}

//! Failover across a provider's keys against a mock provider.

use std::time::Duration;

use serde_json::{Value, json};
use upstream::{KeyPool, ProviderKey, UpstreamError, with_failover};
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{UPSTREAM_MODEL, client, millis, target};

const PROVIDER: i64 = 7;
const KEY_A: i64 = 1;
const KEY_B: i64 = 2;

/// Key A is all but certain to be picked first (weight 1 000 000 : 1).
fn pool(cooldown: Duration) -> KeyPool {
    let pool = KeyPool::with_cooldown(cooldown, cooldown);
    pool.replace_keys(
        PROVIDER,
        vec![
            ProviderKey {
                id: KEY_A,
                secret: "sk-a".into(),
                weight: 1_000_000,
            },
            ProviderKey {
                id: KEY_B,
                secret: "sk-b".into(),
                weight: 1,
            },
        ],
    );
    pool
}

async fn answer_for(server: &MockServer, key: &str, response: ResponseTemplate) {
    Mock::given(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {key}").as_str()))
        .respond_with(response)
        .mount(server)
        .await;
}

fn ok_from(key: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "model": UPSTREAM_MODEL, "choices": [{"message": {"content": format!("from {key}")}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1}
    }))
}

async fn call(
    pool: &KeyPool,
    server: &MockServer,
    tried: &mut Vec<i64>,
) -> Result<Value, UpstreamError> {
    let client = client();
    let uri = server.uri();
    with_failover(pool, PROVIDER, 3, |key| {
        tried.push(key.id);
        let client = client.clone();
        let target = target(&uri, key.secret());
        async move {
            let answer = client.chat(&target, json!({"messages": []})).await?;
            Ok(serde_json::from_slice(&answer.body).expect("json"))
        }
    })
    .await
}

#[tokio::test]
async fn a_failing_key_fails_over_and_cools_down_until_its_cooldown_passed() {
    let server = MockServer::start().await;
    answer_for(&server, "sk-a", ResponseTemplate::new(500)).await;
    answer_for(&server, "sk-b", ok_from("b")).await;
    let pool = pool(millis(400));

    let mut tried = Vec::new();
    let answer = call(&pool, &server, &mut tried)
        .await
        .expect("key B answers");
    assert_eq!(answer["choices"][0]["message"]["content"], "from b");
    assert_eq!(tried, vec![KEY_A, KEY_B]);

    // A is cooling down: despite its weight, only B is picked.
    assert!(pool.cooldown_remaining(KEY_A).is_some());
    for _ in 0..500 {
        assert_eq!(pool.pick(PROVIDER, &[]).map(|k| k.id), Some(KEY_B));
    }
    tokio::time::sleep(millis(450)).await;
    assert_eq!(pool.cooldown_remaining(KEY_A), None);
    assert_eq!(pool.pick(PROVIDER, &[KEY_B]).map(|k| k.id), Some(KEY_A));
}

#[tokio::test]
async fn a_bad_request_is_not_failed_over() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad messages"))
        .expect(1)
        .mount(&server)
        .await;
    let pool = pool(millis(60_000));
    let mut tried = Vec::new();
    let error = call(&pool, &server, &mut tried).await.expect_err("400");
    assert!(
        matches!(error, UpstreamError::BadRequest { status: 400, ref body } if body == "bad messages"),
        "{error:?}"
    );
    assert_eq!(tried.len(), 1);
    assert_eq!(pool.cooldown_remaining(tried[0]), None);
}

#[tokio::test]
async fn when_every_key_fails_the_last_error_is_returned() {
    let server = MockServer::start().await;
    answer_for(&server, "sk-a", ResponseTemplate::new(500)).await;
    answer_for(&server, "sk-b", ResponseTemplate::new(429)).await;
    let pool = pool(millis(60_000));
    let mut tried = Vec::new();
    let error = call(&pool, &server, &mut tried)
        .await
        .expect_err("all fail");
    assert_eq!(
        tried,
        vec![KEY_A, KEY_B],
        "three attempts allowed, only two keys exist"
    );
    assert!(matches!(error, UpstreamError::RateLimited), "{error:?}");
    assert_eq!(error.http_status_for_client(), 503);

    // Both keys now cool down: nothing left to try.
    let error = call(&pool, &server, &mut Vec::new())
        .await
        .expect_err("no key");
    assert!(matches!(error, UpstreamError::NoKeyAvailable), "{error:?}");
}

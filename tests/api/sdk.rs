//! The official OpenAI and Anthropic SDKs (Python from PyPI, Node from npm) call the gateway
//! unchanged, for a model behind an OpenAI-compatible provider and one behind an Anthropic
//! provider, and each call is billed exactly by the pricing formula.
//! `make test` installs them (`make sdk-deps`) into .run/sdk-venv and tests/sdk/node_modules.

use std::path::PathBuf;
use std::process::Command;

use bigdecimal::BigDecimal;
use integration_tests::{
    BillingWorker, ChatSetup, Running, TestApp, chat_cost, embed_cost, eventually, spawn_app,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A finished SDK script: the app it called, its billing worker and its setup.
struct SdkRun {
    app: TestApp,
    worker: Running,
    setup: ChatSetup,
}

/// Runs an SDK script against a model of a provider of `kind` (the mock LLM speaking its API),
/// with the OpenAI SDKs' and the Anthropic SDKs' environment pointing at the gateway.
async fn run_script(kind: &str, program: &str, args: &[&str], what: &str) -> SdkRun {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app.mock_setup(kind).await;
    let base_url = format!("{}/v1", app.address);
    let root_url = app.address.clone();
    let (key, model) = (setup.access_key.clone(), setup.model.clone());
    // Only OpenAI-kind providers serve embeddings (see `chat_setup_of_kind`).
    let embed_model = if kind == "openai" { "demo-embed" } else { "" };
    let (program, args) = (
        program.to_owned(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(&args)
            .current_dir(repo())
            .env("OPENAI_BASE_URL", base_url)
            .env("OPENAI_API_KEY", &key)
            .env("ANTHROPIC_BASE_URL", root_url)
            .env("ANTHROPIC_API_KEY", &key)
            .env("MODEL", model)
            .env("EMBED_MODEL", embed_model)
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{what} could not start ({e}); run `make sdk-deps`"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    SdkRun { app, worker, setup }
}

/// Runs an SDK script against a model of a provider of `kind` (the mock LLM speaking its API).
async fn run_sdk(kind: &str, program: &str, args: &[&str], what: &str) {
    let SdkRun { app, worker, setup } = run_script(kind, program, args, what).await;
    // Three successful calls (one plain, two streamed) are billed; the 404 is not.
    eventually(15, || async {
        (app.usage_of(setup.user_id).await.len() == 3).then_some(())
    })
    .await;
    app.assert_books_balance().await;
    worker.stop().await;
}

/// API.md's formula for the test pricing of a chat model, or of `demo-embed` when
/// `completion` is `None`.
fn priced(prompt: u64, completion: Option<u64>) -> BigDecimal {
    match completion {
        Some(completion) => chat_cost(prompt, completion),
        None => embed_cost(prompt),
    }
}

/// Runs a script and checks its calls were billed exactly: one usage row per expected
/// `(prompt tokens, completion tokens or None for an embedding)`, each at the formula's cost,
/// and nothing else (refused calls write nothing).
async fn run_billed(kind: &str, program: &str, script: &str, expected: &[(u64, Option<u64>)]) {
    let what = format!("{script} against an {kind} provider");
    let SdkRun { app, worker, setup } = run_script(kind, program, &[script], &what).await;
    let mut rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() >= expected.len()).then_some(rows)
    })
    .await;
    let mut wanted: Vec<(i64, i64, BigDecimal)> = expected
        .iter()
        .map(|&(prompt, completion)| {
            (
                prompt as i64,
                completion.unwrap_or(0) as i64,
                priced(prompt, completion),
            )
        })
        .collect();
    rows.sort();
    wanted.sort();
    assert_eq!(rows, wanted, "{what}");
    assert_eq!(app.open_holds(setup.user_id).await, 0, "{what}");
    app.assert_books_balance().await;
    worker.stop().await;
}

fn python() -> String {
    let python = repo().join(".run/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "the Python SDKs are not installed: run `make sdk-deps`"
    );
    python.to_str().unwrap().to_owned()
}

/// The Responses calls of tests/sdk/responses_*: (5 + 16 words), streamed (3 + 6); then, on
/// an openai provider, one embedding of 4 words.
const RESPONSES_BILLED: [(u64, Option<u64>); 3] = [(5, Some(16)), (3, Some(6)), (4, None)];

/// What an anthropic provider bills of them: the same, without the embedding.
fn responses_billed(kind: &str) -> &'static [(u64, Option<u64>)] {
    match kind {
        "openai" => &RESPONSES_BILLED,
        _ => &RESPONSES_BILLED[..2],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_responses_and_embeddings_are_billed_exactly() {
    for kind in ["openai", "anthropic"] {
        let script = "tests/sdk/responses_python.py";
        run_billed(kind, &python(), script, responses_billed(kind)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_sdk_responses_and_embeddings_are_billed_exactly() {
    for kind in ["openai", "anthropic"] {
        let script = "tests/sdk/responses_node.mjs";
        run_billed(kind, "node", script, responses_billed(kind)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_python_sdk_works_unchanged() {
    let python = repo().join(".run/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "the Python SDK is not installed: run `make sdk-deps`"
    );
    for kind in ["openai", "anthropic"] {
        run_sdk(
            kind,
            python.to_str().unwrap(),
            &["tests/sdk/openai_python.py"],
            &format!("the OpenAI Python SDK against an {kind} provider"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_node_sdk_works_unchanged() {
    assert!(
        repo().join("tests/sdk/node_modules/openai").exists(),
        "the Node SDK is not installed: run `make sdk-deps`"
    );
    for kind in ["openai", "anthropic"] {
        run_sdk(
            kind,
            "node",
            &["tests/sdk/openai_node.mjs"],
            &format!("the OpenAI Node SDK against an {kind} provider"),
        )
        .await;
    }
}

/// The Messages calls of tests/sdk/anthropic_*: (5 + 16 words), streamed (4 + 6 words).
const MESSAGES_BILLED: [(u64, Option<u64>); 2] = [(5, Some(16)), (4, Some(6))];

#[tokio::test(flavor = "multi_thread")]
async fn the_anthropic_python_sdk_is_billed_exactly() {
    for kind in ["openai", "anthropic"] {
        let script = "tests/sdk/anthropic_python.py";
        run_billed(kind, &python(), script, &MESSAGES_BILLED).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anthropic_node_sdk_is_billed_exactly() {
    assert!(
        repo()
            .join("tests/sdk/node_modules/@anthropic-ai/sdk")
            .exists(),
        "the Anthropic Node SDK is not installed: run `make sdk-deps`"
    );
    for kind in ["openai", "anthropic"] {
        let script = "tests/sdk/anthropic_node.mjs";
        run_billed(kind, "node", script, &MESSAGES_BILLED).await;
    }
}

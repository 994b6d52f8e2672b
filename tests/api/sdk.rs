//! The official OpenAI SDKs (Python from PyPI, Node from npm) call the gateway unchanged, for
//! a model behind an OpenAI-compatible provider and one behind an Anthropic provider.
//! `make test` installs them (`make sdk-deps`) into .run/sdk-venv and tests/sdk/node_modules.

use std::path::PathBuf;
use std::process::Command;

use integration_tests::{BillingWorker, eventually, spawn_app};
use mock_llm::MockConfig;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs an SDK script against a model of a provider of `kind` (the mock LLM speaking its API).
async fn run_sdk(kind: &str, program: &str, args: &[&str], what: &str) {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let setup = app
        .chat_setup_of_kind(kind, mock, &[("good-key", 1)], "10")
        .await;
    let base_url = format!("{}/v1", app.address);
    let (key, model) = (setup.access_key.clone(), setup.model.clone());
    let (program, args) = (
        program.to_owned(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(&args)
            .current_dir(repo())
            .env("OPENAI_BASE_URL", base_url)
            .env("OPENAI_API_KEY", key)
            .env("MODEL", model)
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
    // Three successful calls (one plain, two streamed) are billed; the 404 is not.
    eventually(15, || async {
        (app.usage_of(setup.user_id).await.len() == 3).then_some(())
    })
    .await;
    app.assert_books_balance().await;
    worker.stop().await;
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

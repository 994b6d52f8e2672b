//! The web console: served by gateway-api at `/` with its assets, and driven end to end in
//! Debian's headless Chromium (tests/console/console.mjs: playwright-core and axe-core from
//! npm, installed by `make sdk-deps`; Chromium from `apt-get install chromium`).

use std::path::PathBuf;
use std::process::Command;

use integration_tests::{
    ADMIN_EMAIL, ADMIN_PASSWORD, BillingWorker, Credential, InvocationWorker, eventually, spawn_app,
};
use reqwest::Method;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_served_at_the_root_with_its_assets_and_api_paths_stay_json() {
    let app = spawn_app().await;
    let page = app.send(Method::GET, "/", Credential::None, None).await;
    page.assert_status(200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-cache");
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    // Every asset the page names is served from this origin (no CDN) and cached for good.
    let script = page
        .text
        .split('"')
        .find(|part| part.ends_with("/app.js"))
        .unwrap()
        .to_owned();
    assert!(script.starts_with("/console/"), "{script}");
    assert!(!page.text.contains("http://") && !page.text.contains("https://"));
    let base = script.trim_end_matches("app.js");
    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("user.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ] {
        let asset = app
            .send(
                Method::GET,
                &format!("{base}{file}"),
                Credential::None,
                None,
            )
            .await;
        asset.assert_status(200);
        assert_eq!(asset.headers["content-type"], content_type, "{file}");
        assert_eq!(
            asset.headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(!asset.text.contains("https://"), "{file} fetches nothing");
    }
    let spec = app
        .send(Method::GET, "/openapi.json", Credential::None, None)
        .await;
    let paths = &spec.assert_status(200)["paths"];
    assert!(paths["/"]["get"].is_object());
    assert!(paths["/console/{digest}/{file}"]["get"].is_object());
    for missing in [
        format!("{base}nope.js"),
        "/console/0000000000000000/app.js".to_owned(),
        "/console/app.js".to_owned(),
        "/v1/no-such-route".to_owned(),
    ] {
        app.send(Method::GET, &missing, Credential::None, None)
            .await
            .assert_error(404, "not_found");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_and_an_admin_use_the_console_in_chromium() {
    let modules = repo().join("tests/console/node_modules/playwright-core");
    assert!(
        modules.exists(),
        "playwright-core is not installed: run `make sdk-deps`"
    );
    assert!(
        PathBuf::from("/usr/bin/chromium").exists(),
        "Chromium is missing: apt-get install -y chromium"
    );
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let jobs = InvocationWorker::start(&app).await;
    let setup = app.mock_setup("openai").await;
    let me = app.get("/v1/me", &setup.token).await;
    let email = me.assert_status(200)["email"].as_str().unwrap().to_owned();
    let artifacts = repo().join("tests/console/artifacts");
    let (base, model) = (app.address.clone(), setup.model.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("tests/console/console.mjs")
            .current_dir(repo())
            .env("BASE_URL", base)
            .env("ADMIN_EMAIL", ADMIN_EMAIL)
            .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("USER_EMAIL", email)
            // The password `TestApp::new_user` gives.
            .env("USER_PASSWORD", "password-123")
            .env("MODEL", model)
            .env("ARTIFACTS", artifacts)
            .output()
    })
    .await
    .unwrap()
    .expect("node could not start");
    assert!(
        output.status.success(),
        "the console e2e script failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // What the browser did is what the database holds: the 25 top-up credited once on top of
    // the setup's 10 (the order of 3 failed, credited nothing), one playground call and one
    // image job charged, the admin's adjustment credited, the books balanced.
    let orders = app.get("/v1/me/orders", &setup.token).await;
    let orders = &orders.assert_status(200)["data"];
    assert_eq!(orders.as_array().unwrap().len(), 2);
    assert_eq!(orders[0]["status"], "FAILED");
    assert_eq!(orders[0]["amount"], "3");
    assert_eq!(orders[1]["status"], "COMPLETED");
    let amount: bigdecimal::BigDecimal = orders[1]["amount"].as_str().unwrap().parse().unwrap();
    assert_eq!(amount, "25".parse::<bigdecimal::BigDecimal>().unwrap());
    let usage = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let balance: bigdecimal::BigDecimal = app.get("/v1/me", &setup.token).await.json["balance"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let spent: bigdecimal::BigDecimal = usage.iter().map(|row| &row.2).sum();
    // 10 + the 25 order + the admin's 1.5 adjustment.
    let expected = "36.5".parse::<bigdecimal::BigDecimal>().unwrap() - spent;
    assert_eq!(balance, expected);
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    jobs.stop().await;
    worker.stop().await;
}

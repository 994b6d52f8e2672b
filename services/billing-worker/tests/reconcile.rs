//! `billing-worker reconcile`: exit 0 when every balance equals its ledger, every hold total its
//! open holds and every user's charged usage their ledger's charges; 1 (naming the user) when not.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

async fn migrated_database() -> String {
    persistence::testing::migrated_database(2).await.unwrap().0
}

fn reconcile(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_billing-worker"))
        .arg("reconcile")
        .env("APP__DATABASE__URL", url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_passes_on_sound_books_and_fails_on_a_tampered_balance() {
    let url = migrated_database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    for sql in [
        "INSERT INTO users (id, email, password_hash, balance) VALUES (7, 'a@x.io', 'h', 12.5)",
        "INSERT INTO balance_ledger (user_id, delta, balance_after, kind, reference) VALUES (7, 12.5, 12.5, 'topup', 'ord_1')",
        "INSERT INTO users (id, email, password_hash, balance, held) VALUES (8, 'b@x.io', 'h', 0, 0)",
    ] {
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
    }
    let sound = reconcile(&url);
    assert!(
        sound.status.success(),
        "{}",
        String::from_utf8_lossy(&sound.stderr)
    );

    diesel::sql_query("UPDATE users SET balance = balance + 0.00000001 WHERE id = 7")
        .execute(&mut conn)
        .await
        .unwrap();
    let tampered = reconcile(&url);
    assert_eq!(tampered.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("user 7"));

    diesel::sql_query("UPDATE users SET balance = 12.5 WHERE id = 7")
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::sql_query("UPDATE users SET held = 1 WHERE id = 8")
        .execute(&mut conn)
        .await
        .unwrap();
    let held = reconcile(&url);
    assert_eq!(
        held.status.code(),
        Some(1),
        "a held total without open holds is a mismatch"
    );
    assert!(String::from_utf8_lossy(&held.stderr).contains("user 8"));

    // Usage that says a call was charged which the ledger never charged.
    diesel::sql_query("UPDATE users SET held = 0 WHERE id = 8")
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::sql_query(
        "INSERT INTO usage_logs (request_id, user_id, model_name, cost, priced_cost, held_amount)
         VALUES (gen_random_uuid(), 7, 'm', 0.5, 0.5, 0.5)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let usage = reconcile(&url);
    assert_eq!(
        usage.status.code(),
        Some(1),
        "usage the ledger did not charge is a mismatch"
    );
    let report = String::from_utf8_lossy(&usage.stderr);
    assert!(
        report.contains("user 7") && report.contains("usage charged 0.5"),
        "{report}"
    );
}

//! The migrations against a real Postgres: diesel's schema.rs matches them, and the CHECK and
//! UNIQUE constraints refuse what must never be stored.

#![allow(clippy::unwrap_used)]

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use persistence::StoreError;
use persistence::schema::*;

mod common;
use common::migrated_pool;

async fn exec(conn: &mut AsyncPgConnection, sql: &str) -> Result<usize, StoreError> {
    Ok(diesel::sql_query(sql).execute(conn).await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_rs_matches_the_migrations() {
    let pool = migrated_pool().await;
    let mut conn = pool.get().await.unwrap();
    // Selecting every column diesel knows of fails if a column is missing or mistyped.
    users::table
        .select(persistence::users::User::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    providers::table
        .select(persistence::catalog::Provider::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    provider_keys::table
        .select(persistence::catalog::ProviderKey::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    llm_models::table
        .select(persistence::catalog::Model::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    access_keys::table
        .select(persistence::access_keys::AccessKey::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    orders::table
        .select(persistence::orders::Order::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    balance_ledger::table
        .select(persistence::ledger::LedgerEntry::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    usage_logs::table
        .select(persistence::usage::UsageLog::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    payment_events::table
        .select(payment_events::all_columns)
        .load::<(i64, String, String, chrono::DateTime<chrono::Utc>)>(&mut conn)
        .await
        .unwrap();
    async_jobs::table
        .select(async_jobs::id)
        .load::<i64>(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn constraints_protect_money_and_uniqueness() {
    let pool = migrated_pool().await;
    let mut conn = pool.get().await.unwrap();
    exec(
        &mut conn,
        "INSERT INTO users (id, email, password_hash) VALUES (1, 'a@x.io', 'h')",
    )
    .await
    .unwrap();

    let refused = [
        (
            "UPDATE users SET balance = -0.00000001 WHERE id = 1",
            "users_balance_check",
        ),
        (
            "INSERT INTO users (email, password_hash) VALUES ('A@X.io', 'h')",
            "users_email_lowercase",
        ),
        (
            "INSERT INTO users (email, password_hash, role) VALUES ('b@x.io', 'h', 'root')",
            "users_role_check",
        ),
        (
            "INSERT INTO orders (order_no, user_id, amount) VALUES ('o1', 1, 0)",
            "orders_amount_check",
        ),
        (
            "INSERT INTO orders (order_no, user_id, amount, status) VALUES ('o1', 1, 5, 'COMPLETED')",
            "orders_completed_at",
        ),
        (
            "INSERT INTO balance_ledger (user_id, delta, balance_after, kind, reference) VALUES (1, 0, 0, 'topup', 'r')",
            "balance_ledger_delta_check",
        ),
        (
            "INSERT INTO balance_ledger (user_id, delta, balance_after, kind, reference) VALUES (1, -1, -1, 'charge', 'r')",
            "balance_ledger_balance_after_check",
        ),
        (
            "INSERT INTO usage_logs (request_id, user_id, model_name, cost) VALUES (gen_random_uuid(), 1, 'm', -1)",
            "usage_logs_cost_check",
        ),
    ];
    for (sql, constraint) in refused {
        match exec(&mut conn, sql).await {
            Err(StoreError::Check(name)) => assert_eq!(name, constraint, "{sql}"),
            other => panic!("{sql} was not refused by {constraint}: {other:?}"),
        }
    }

    // Money keeps 8 decimals exactly.
    exec(
        &mut conn,
        "UPDATE users SET balance = 0.00000001 WHERE id = 1",
    )
    .await
    .unwrap();
    let balance: bigdecimal::BigDecimal = users::table
        .find(1)
        .select(users::balance)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(domain::Money::from_db(balance).to_string(), "0.00000001");

    // One credit per order, one charge per request, even if code tried twice.
    exec(&mut conn, "INSERT INTO balance_ledger (user_id, delta, balance_after, kind, reference) VALUES (1, 5, 5, 'topup', 'ord_1')").await.unwrap();
    match exec(&mut conn, "INSERT INTO balance_ledger (user_id, delta, balance_after, kind, reference) VALUES (1, 5, 10, 'topup', 'ord_1')").await {
        Err(StoreError::Unique(name)) => assert_eq!(name, "balance_ledger_kind_reference_key"),
        other => panic!("duplicate credit accepted: {other:?}"),
    }
    let request = "INSERT INTO usage_logs (request_id, user_id, model_name, cost) VALUES ('6f1c2a8e-0000-4000-8000-000000000001', 1, 'm', 1)";
    exec(&mut conn, request).await.unwrap();
    match exec(&mut conn, request).await {
        Err(StoreError::Unique(name)) => assert_eq!(name, "usage_logs_request_id_key"),
        other => panic!("duplicate usage log accepted: {other:?}"),
    }
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    synchronous_commit: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_reservation_pool_commits_without_waiting_for_the_flush() {
    let (url, pool) = persistence::testing::migrated_database(2).await.unwrap();
    let settings = persistence::DatabaseSettings {
        url,
        pool_max_size: 2,
        pool_wait_timeout_ms: 5000,
        connect_timeout_ms: 5000,
    };
    let relaxed = persistence::build_reservation_pool(&settings).unwrap();
    let show = "SHOW synchronous_commit";
    let mut conn = relaxed.get().await.unwrap();
    let setting: Setting = diesel::sql_query(show).get_result(&mut conn).await.unwrap();
    assert_eq!(setting.synchronous_commit, "off");
    let mut conn = pool.get().await.unwrap();
    let setting: Setting = diesel::sql_query(show).get_result(&mut conn).await.unwrap();
    assert_eq!(
        setting.synchronous_commit, "on",
        "money moves wait for durability"
    );
}

#[derive(diesel::QueryableByName)]
struct Settings {
    #[diesel(sql_type = diesel::sql_types::Text)]
    synchronous_commit: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    plan_cache_mode: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pinned: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    application_name: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_pools_pin_and_cache_their_plans_and_only_the_relaxed_one_skips_the_flush() {
    let (url, _pool) = persistence::testing::migrated_database(1).await.unwrap();
    // The deployment's own options are kept beside the pools' settings.
    let url = format!("{url}?options=-c%20application_name%3Dgw-test");
    let settings = persistence::DatabaseSettings {
        url,
        pool_max_size: 2,
        pool_wait_timeout_ms: 5000,
        connect_timeout_ms: 5000,
    };
    let show = "SELECT current_setting('synchronous_commit') AS synchronous_commit,
                       current_setting('plan_cache_mode') AS plan_cache_mode,
                       concat_ws(' ', current_setting('enable_seqscan'),
                                 current_setting('enable_hashjoin'),
                                 current_setting('enable_mergejoin')) AS pinned,
                       current_setting('application_name') AS application_name";
    for (pool, synchronous_commit) in [
        (persistence::build_batch_pool(&settings, 1).unwrap(), "on"),
        (
            persistence::build_relaxed_batch_pool(&settings, 1).unwrap(),
            "off",
        ),
    ] {
        let mut conn = pool.get().await.unwrap();
        let current: Settings = diesel::sql_query(show).get_result(&mut conn).await.unwrap();
        assert_eq!(current.synchronous_commit, synchronous_commit);
        assert_eq!(current.plan_cache_mode, "force_generic_plan");
        assert_eq!(current.pinned, "off off off");
        assert_eq!(current.application_name, "gw-test");
    }
}

#[derive(diesel::QueryableByName)]
struct PreparedStatement {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    statement: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    parameters: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    custom_plans: i64,
}

#[derive(diesel::QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
    line: String,
}

/// The hot batched statements, run once on a batch-pool connection of a fresh database (the
/// case where Postgres' own choice is a scan of the whole table and a hash join, which it
/// would then keep in the cached plan while the table grows), are planned generically and find
/// their rows by index.
#[tokio::test(flavor = "multi_thread")]
async fn batched_statements_cache_index_lookup_plans_even_on_empty_tables() {
    use diesel_async::AsyncConnection;
    use persistence::{billing, jobs};

    let (url, shared) = persistence::testing::migrated_database(1).await.unwrap();
    let user = common::user_with_balance(&shared, "10").await;
    let settings = persistence::DatabaseSettings {
        url,
        pool_max_size: 1,
        pool_wait_timeout_ms: 5000,
        connect_timeout_ms: 5000,
    };
    let pool = persistence::build_batch_pool(&settings, 1).unwrap();
    let mut conn = pool.get().await.unwrap();
    let job = uuid::Uuid::new_v4();
    jobs::claim_many(&mut conn, &[job], 60).await.unwrap();
    let completion = jobs::Completion {
        job_id: job,
        attempts: 1,
        result: serde_json::json!({}),
        cost: common::money("1"),
        charge: serde_json::json!({}),
    };
    jobs::complete_many(&mut conn, &[completion]).await.unwrap();
    billing::outbox_delete_requests(&mut conn, &[job])
        .await
        .unwrap();
    let cost = common::money("1");
    let charge = billing::Charge {
        request_id: job,
        user_id: user,
        access_key_id: None,
        model_id: None,
        model_name: "m",
        usage: domain::Usage::default(),
        cost: &cost,
        lease_id: None,
    };
    conn.transaction::<_, StoreError, _>(async |conn| {
        billing::settle_many(conn, std::slice::from_ref(&charge)).await
    })
    .await
    .unwrap();

    let statements: Vec<PreparedStatement> = diesel::sql_query(
        "SELECT name, statement, cardinality(parameter_types) AS parameters, custom_plans
         FROM pg_prepared_statements
         WHERE statement ~ 'unnest' AND statement !~ 'pg_prepared_statements'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let mut checked = Vec::new();
    for statement in &statements {
        let text = statement
            .statement
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(statement.custom_plans, 0, "planned per execution: {text}");
        // A generic plan does not depend on the values: NULL for every parameter.
        let arguments = match statement.parameters {
            0 => String::new(),
            n => format!("({})", vec!["NULL"; n as usize].join(", ")),
        };
        let plan: Vec<PlanLine> =
            diesel::sql_query(format!("EXPLAIN EXECUTE {}{arguments}", statement.name))
                .load(&mut conn)
                .await
                .unwrap();
        let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
        let plan = plan.join("\n");
        for scan in ["Seq Scan", "Hash Join", "Merge Join"] {
            assert!(
                !plan.contains(scan),
                "{scan} in the plan of {text}:\n{plan}"
            );
        }
        checked.push((text, plan));
    }
    for fragment in [
        "UPDATE async_jobs j SET status = 'PROCESSING'",
        "UPDATE async_jobs j SET status = 'COMPLETED'",
        "DELETE FROM billing_outbox",
        "DELETE FROM balance_holds h",
    ] {
        let (text, plan) = checked
            .iter()
            .find(|(text, _)| text.contains(fragment))
            .unwrap_or_else(|| panic!("{fragment} was not checked; checked: {checked:#?}"));
        assert!(
            plan.contains("Index Scan"),
            "no index lookup: {text}:\n{plan}"
        );
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn migration_runs_started_together_take_turns_and_all_succeed() {
    let url = persistence::testing::create_database().await.unwrap();
    let settings = persistence::DatabaseSettings {
        url,
        pool_max_size: 1,
        pool_wait_timeout_ms: 30_000,
        connect_timeout_ms: 5000,
    };
    let runs = (0..4).map(|_| {
        let pool = persistence::build_pool(&settings).unwrap();
        tokio::spawn(async move { persistence::run_migrations(&pool).await.map(|()| pool) })
    });
    // The pools stay open, so a lock left on their connections would still show.
    let mut pools = Vec::new();
    for run in futures_util::future::join_all(runs).await {
        pools.push(run.unwrap().expect("every run succeeds"));
    }
    let mut conn = pools[0].get().await.unwrap();
    let held: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(held.count, 0, "the migration lock was released");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_whose_connections_stay_in_use_answers_busy_not_unavailable() {
    let (url, _pool) = persistence::testing::migrated_database(1).await.unwrap();
    let pool = persistence::build_pool(&persistence::DatabaseSettings {
        url,
        pool_max_size: 1,
        pool_wait_timeout_ms: 100,
        connect_timeout_ms: 5000,
    })
    .unwrap();
    let held = pool.get().await.unwrap();
    assert!(matches!(
        persistence::ping(&pool).await,
        Err(persistence::StoreError::Busy)
    ));
    drop(held);
    persistence::ping(&pool).await.unwrap();
    // A database that cannot be reached is an outage, not a busy pool.
    let down = persistence::build_pool(&persistence::DatabaseSettings {
        url: "postgres://postgres@127.0.0.1:1/none".to_owned(),
        pool_max_size: 1,
        pool_wait_timeout_ms: 100,
        connect_timeout_ms: 1000,
    })
    .unwrap();
    assert!(matches!(
        persistence::ping(&down).await,
        Err(persistence::StoreError::Pool(_))
    ));
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct UsageRefs {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    access_key_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    model_id: Option<i64>,
}

/// usage_logs has no foreign keys (they cost a lookup and a row lock per settled charge); the
/// triggers that replace them keep what the keys did: a user with usage rows cannot be deleted,
/// and deleting an access key or a model sets its usage rows' column to NULL.
#[tokio::test(flavor = "multi_thread")]
async fn usage_rows_keep_their_user_and_forget_a_deleted_key_or_model() {
    let pool = migrated_pool().await;
    let mut conn = pool.get().await.unwrap();
    for sql in [
        "INSERT INTO users (id, email, password_hash) VALUES (71, 'used@x.io', 'h'), (72, 'idle@x.io', 'h')",
        "INSERT INTO providers (id, name, kind, base_url) VALUES (71, 'p71', 'openai', 'http://127.0.0.1:1')",
        "INSERT INTO llm_models (id, name, provider_id, upstream_model, kind, pricing)
         VALUES (71, 'm71', 71, 'u', 'chat', '{}'), (72, 'm72', 71, 'u', 'chat', '{}')",
        "INSERT INTO access_keys (id, user_id, name, prefix, key_hash)
         VALUES (71, 71, 'k', 'sk', decode(repeat('ab', 32), 'hex')),
                (72, 71, 'k2', 'sk', decode(repeat('cd', 32), 'hex'))",
        "INSERT INTO usage_logs (request_id, user_id, access_key_id, model_id, model_name, cost)
         VALUES ('6f1c2a8e-0000-4000-8000-000000000071', 71, 71, 71, 'm71', 0),
                ('6f1c2a8e-0000-4000-8000-000000000072', 71, 72, 72, 'm72', 0)",
    ] {
        exec(&mut conn, sql).await.unwrap();
    }
    let refs = async |conn: &mut AsyncPgConnection| -> Vec<UsageRefs> {
        diesel::sql_query(
            "SELECT access_key_id, model_id FROM usage_logs WHERE user_id = 71 ORDER BY request_id",
        )
        .load(conn)
        .await
        .unwrap()
    };
    let usage = |access_key_id, model_id| UsageRefs {
        access_key_id,
        model_id,
    };

    exec(&mut conn, "DELETE FROM access_keys WHERE id = 71")
        .await
        .unwrap();
    assert_eq!(
        refs(&mut conn).await,
        [usage(None, Some(71)), usage(Some(72), Some(72))]
    );
    exec(&mut conn, "DELETE FROM llm_models WHERE id = 72")
        .await
        .unwrap();
    assert_eq!(
        refs(&mut conn).await,
        [usage(None, Some(71)), usage(Some(72), None)]
    );
    match exec(&mut conn, "DELETE FROM users WHERE id = 71").await {
        Err(StoreError::ForeignKey(name)) => assert_eq!(name, "usage_logs_user_id_fkey"),
        other => panic!("a user with usage rows was deleted: {other:?}"),
    }
    assert_eq!(refs(&mut conn).await.len(), 2, "nothing was deleted");
    // A user without usage rows can go.
    assert_eq!(
        exec(&mut conn, "DELETE FROM users WHERE id = 72")
            .await
            .unwrap(),
        1
    );
}

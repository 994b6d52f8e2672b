//! The admin overview's statistics: replicas' call counts add up in one row per minute, and
//! one replica at a time samples the queues (an advisory lock), pruning old statistics.

#![allow(clippy::unwrap_used)]

use chrono::{DurationRound, TimeDelta, TimeZone, Utc};
use diesel_async::RunQueryDsl;
use persistence::stats::{self, CallCounts};

mod common;

use common::migrated_pool;

#[tokio::test(flavor = "multi_thread")]
async fn replicas_counts_of_a_minute_add_up_and_keep_the_highest_latency() {
    let pool = migrated_pool().await;
    let minute = Utc.with_ymd_and_hms(2026, 12, 1, 10, 5, 0).unwrap();
    let counts = |ok, max| CallCounts {
        minute,
        ok,
        client_errors: 1,
        provider_errors: 2,
        refused: 3,
        latency_ms_sum: 100,
        latency_ms_max: max,
    };
    // Three replicas flush at once.
    let flushes = [counts(5, 40), counts(7, 90), counts(1, 10)].map(|c| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            stats::add_calls(&mut conn, &c).await.unwrap();
        })
    });
    for flush in flushes {
        flush.await.unwrap();
    }
    let mut conn = pool.get().await.unwrap();
    let hour = stats::calls_by_bucket(
        &mut conn,
        "hour",
        minute - TimeDelta::hours(1),
        minute + TimeDelta::hours(1),
    )
    .await
    .unwrap();
    assert_eq!(hour.len(), 1);
    let row = &hour[0];
    assert_eq!(
        row.bucket,
        Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap()
    );
    assert_eq!(
        (row.ok, row.client_errors, row.provider_errors, row.refused),
        (13, 3, 6, 9)
    );
    assert_eq!((row.latency_ms_sum, row.latency_ms_max), (300, 90));
    // A minute that is not a whole minute is refused by the table.
    let mut off = counts(1, 1);
    off.minute = minute + TimeDelta::seconds(1);
    assert!(stats::add_calls(&mut conn, &off).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_samples_the_queues_at_a_time_and_old_statistics_are_pruned() {
    let pool = migrated_pool().await;
    let old = Utc::now() - TimeDelta::days(40);
    let mut conn = pool.get().await.unwrap();
    stats::add_calls(
        &mut conn,
        &CallCounts {
            minute: old.duration_trunc(TimeDelta::minutes(1)).unwrap(),
            ok: 1,
            ..CallCounts::default()
        },
    )
    .await
    .unwrap();
    drop(conn);

    // Replica A samples; while it holds the lock (its broker answer pending), B does not.
    let (answer, answered) = tokio::sync::oneshot::channel::<()>();
    let a = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            stats::sample_queues(
                &mut conn,
                TimeDelta::seconds(60),
                Utc::now() - TimeDelta::days(30),
                async {
                    answered.await.unwrap();
                    (Some(4), None)
                },
            )
            .await
            .unwrap()
        })
    };
    let mut conn = pool.get().await.unwrap();
    let count = async |conn: &mut persistence::AsyncPgConnection, table: &str| -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let n: N = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result(conn)
            .await
            .unwrap();
        n.n
    };
    // Wait (up to 10 s) until A holds the lock (its transaction open, waiting on the broker).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        #[derive(diesel::QueryableByName)]
        struct Held {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        // pg_locks lists the whole cluster's locks: only this test database's count (tests
        // running beside this one take advisory locks of their own).
        let held: Held = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        if held.n > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never took the lock"
        );
        tokio::task::yield_now().await;
    }
    let b = stats::sample_queues(&mut conn, TimeDelta::seconds(60), Utc::now(), async {
        panic!("B must not ask the broker while A samples")
    })
    .await
    .unwrap();
    assert!(!b, "the lock is A's");
    answer.send(()).unwrap();
    assert!(a.await.unwrap(), "A stored its sample");
    // Right after A's sample, none is due.
    let again = stats::sample_queues(&mut conn, TimeDelta::seconds(60), Utc::now(), async {
        panic!("no sample is due")
    })
    .await
    .unwrap();
    assert!(!again);
    assert_eq!(count(&mut conn, "queue_samples").await, 1);
    // A's transaction pruned the 40-day-old call statistics.
    assert_eq!(count(&mut conn, "call_stats").await, 0);
    let now = Utc::now();
    let depths = stats::depths_by_bucket(
        &mut conn,
        "day",
        now - TimeDelta::days(1),
        now + TimeDelta::days(1),
    )
    .await
    .unwrap();
    assert_eq!(depths.len(), 1);
    assert_eq!(depths[0].invocation_queue, Some(4));
    assert_eq!(depths[0].billing_queue, None);
    assert_eq!((depths[0].outbox, depths[0].pending_jobs), (0, 0));
}

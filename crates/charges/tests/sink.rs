#![allow(clippy::unwrap_used)]
//! The charge sink against a real RabbitMQ (own queue prefix per test) and Postgres (own
//! database per test): a charge is durable when `make_durable` returns, in the queue or, with
//! the broker away, in the outbox; charges that wait together share one message.

use std::time::{Duration, Instant};

use amqprs::channel::{BasicGetArguments, Channel};
use charges::{ChargeSink, SinkSettings};
use domain::{BillingBatch, BillingMessage, Money, Usage};
use messaging::{Broker, BrokerSettings, delete_topology};
use persistence::Pool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

async fn broker() -> Broker {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let mut settings = BrokerSettings::new(url);
    settings.queue_prefix = format!("test_{}_", Uuid::new_v4().simple());
    settings.publish_confirm_timeout_ms = 2_000;
    Broker::connect(settings)
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (make test starts it)")
}

async fn database() -> Pool {
    persistence::testing::migrated_database(4)
        .await
        .expect("Postgres must run (make test starts it)")
        .1
}

fn charge() -> BillingMessage {
    BillingMessage {
        request_id: Uuid::new_v4(),
        user_id: 1,
        access_key_id: None,
        model_id: 1,
        model_name: "m".to_owned(),
        usage: Usage {
            prompt_tokens: 3,
            completion_tokens: 5,
            ..Usage::default()
        },
        cost: Money::parse("0.00000123").unwrap(),
        lease_id: None,
        occurred_at: chrono::Utc::now(),
    }
}

fn sink(broker: &Broker, pool: &Pool, linger: Duration) -> ChargeSink {
    sink_with(broker, pool, linger, 0)
}

fn sink_with(
    broker: &Broker,
    pool: &Pool,
    linger: Duration,
    outbox_first_below: u32,
) -> ChargeSink {
    ChargeSink::start(
        broker.clone(),
        pool.clone(),
        &SinkSettings {
            batch_max: 256,
            in_flight: 1,
            linger,
            outbox_first_below,
        },
    )
}

/// Every message in the billing queue now: (messages, request ids).
async fn drain(broker: &Broker) -> (usize, Vec<Uuid>) {
    let channel: Channel = broker.open_channel().await.unwrap();
    let queue = broker.queue_names().billing_log.work.clone();
    let (mut messages, mut ids) = (0, Vec::new());
    while let Some((_, _, body)) = channel
        .basic_get(BasicGetArguments {
            queue: queue.clone(),
            no_ack: true,
        })
        .await
        .unwrap()
    {
        messages += 1;
        let batch = BillingBatch::from_json_slice(&body).unwrap();
        ids.extend(batch.charges.iter().map(|c| c.request_id));
    }
    (messages, ids)
}

async fn outbox_ids(pool: &Pool) -> Vec<Uuid> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        request_id: Uuid,
    }
    let mut conn = pool.get().await.unwrap();
    let rows: Vec<Row> = diesel::sql_query("SELECT request_id FROM billing_outbox")
        .load(&mut conn)
        .await
        .unwrap();
    rows.into_iter().map(|r| r.request_id).collect()
}

async fn cleanup(broker: &Broker) {
    let channel = broker.open_channel().await.unwrap();
    delete_topology(&channel, broker.queue_names())
        .await
        .unwrap();
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn charges_are_in_the_queue_when_made_durable_and_waiting_ones_share_a_message() {
    let (broker, pool) = (broker().await, database().await);
    let sink = sink(&broker, &pool, Duration::ZERO);
    let charges: Vec<BillingMessage> = (0..40).map(|_| charge()).collect();
    // All forty wait at once: the first publish carries what queued up (no linger needed).
    let results =
        futures_util::future::join_all(charges.iter().map(|c| sink.make_durable(c.clone()))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Durable means in the queue the moment make_durable returned: no polling needed.
    let (messages, mut ids) = drain(&broker).await;
    let mut expected: Vec<Uuid> = charges.iter().map(|c| c.request_id).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "each charge published exactly once");
    assert!(
        messages <= 2,
        "{messages} messages for 40 charges waiting together"
    );
    assert!(outbox_ids(&pool).await.is_empty(), "nothing parked");
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_broker_away_a_charge_is_in_the_outbox_when_made_durable() {
    let (broker, pool) = (broker().await, database().await);
    let names = broker.queue_names().clone();
    let sink = sink(&broker, &pool, Duration::ZERO);
    broker.close().await; // publishes now fail fast
    let charges: Vec<BillingMessage> = (0..5).map(|_| charge()).collect();
    for result in
        futures_util::future::join_all(charges.iter().map(|c| sink.make_durable(c.clone()))).await
    {
        result.expect("durable through the outbox");
    }
    let mut parked = outbox_ids(&pool).await;
    let mut expected: Vec<Uuid> = charges.iter().map(|c| c.request_id).collect();
    parked.sort();
    expected.sort();
    assert_eq!(parked, expected);
    // The queues of this test, declared by connect, are removed by a broker of the same prefix.
    let mut settings = broker.settings().clone();
    settings.queue_prefix = names.prefix.clone();
    let other = Broker::connect(settings).await.unwrap();
    cleanup(&other).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_neither_broker_nor_postgres_a_charge_is_not_durable() {
    let broker = broker().await;
    let names = broker.queue_names().clone();
    // A pool whose database does not exist: every connection attempt fails.
    let missing = persistence::build_pool(&persistence::DatabaseSettings {
        url: format!(
            "{}/gwtest_missing_{}",
            persistence::testing::postgres_base_url(),
            Uuid::new_v4().simple()
        ),
        pool_max_size: 1,
        pool_wait_timeout_ms: 1000,
        connect_timeout_ms: 1000,
    })
    .unwrap();
    let sink = sink(&broker, &missing, Duration::ZERO);
    broker.close().await;
    assert!(sink.make_durable(charge()).await.is_err());
    let mut settings = broker.settings().clone();
    settings.queue_prefix = names.prefix.clone();
    cleanup(&Broker::connect(settings).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_charge_from_the_outbox_is_published_then_forgotten_there() {
    let (broker, pool) = (broker().await, database().await);
    let sink = sink(&broker, &pool, Duration::from_millis(20));
    let kept: Vec<BillingMessage> = (0..3).map(|_| charge()).collect();
    {
        let mut conn = pool.get().await.unwrap();
        let rows: Vec<(Uuid, String)> = kept
            .iter()
            .map(|c| (c.request_id, serde_json::to_string(c).unwrap()))
            .collect();
        persistence::billing::outbox_insert_many(&mut conn, &rows)
            .await
            .unwrap();
    }
    for charge in &kept {
        assert!(sink.forward_from_outbox(charge.clone()));
    }
    let deadline = Instant::now() + WAIT;
    while !outbox_ids(&pool).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "published charges stay in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (messages, mut ids) = drain(&broker).await;
    let mut expected: Vec<Uuid> = kept.iter().map(|c| c.request_id).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(messages, 1, "the linger let the three share one message");
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn at_a_low_rate_a_charge_is_in_the_outbox_when_made_durable_then_published_and_forgotten() {
    let (broker, pool) = (broker().await, database().await);
    // The forwarding lingers long enough that the outbox row is certainly still there when
    // make_durable returns (a lone charge waits the whole linger for company).
    let sink = sink_with(&broker, &pool, Duration::from_secs(2), 1_000_000);
    let charge = charge();
    sink.make_durable(charge.clone()).await.expect("durable");
    assert_eq!(
        outbox_ids(&pool).await,
        vec![charge.request_id],
        "kept in the outbox first"
    );
    // Then forwarded to the broker, and forgotten in the outbox once confirmed.
    let deadline = Instant::now() + WAIT;
    while !outbox_ids(&pool).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the kept charge was never forwarded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (messages, ids) = drain(&broker).await;
    assert_eq!(
        (messages, ids),
        (1, vec![charge.request_id]),
        "published exactly once"
    );
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn above_the_rate_charges_go_by_broker_group_commit_and_postgres_is_not_written() {
    let (broker, pool) = (broker().await, database().await);
    // 40 charges at once are far above 4 per second: after the first one (the rate before it
    // is zero), every charge goes to the broker, in the queue when make_durable returns.
    let sink = sink_with(&broker, &pool, Duration::from_secs(30), 4);
    let first = charge();
    sink.make_durable(first.clone()).await.expect("durable");
    let charges: Vec<BillingMessage> = (0..40).map(|_| charge()).collect();
    let results =
        futures_util::future::join_all(charges.iter().map(|c| sink.make_durable(c.clone()))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The first one is in the outbox (its forward lingers 30 s); the burst is not.
    assert_eq!(outbox_ids(&pool).await, vec![first.request_id]);
    let (messages, mut ids) = drain(&broker).await;
    let mut expected: Vec<Uuid> = charges.iter().map(|c| c.request_id).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "the burst is in the queue, each charge once");
    assert!(
        messages <= 2,
        "{messages} messages for 40 charges waiting together"
    );
    cleanup(&broker).await;
}

/// A worker thread's sink (`ChargeSink::local`) keeps its charges in the outbox through its own
/// pool, and counts the rate with the process's sink: the parent's outbox here is a database
/// that does not exist, so a charge found in the real outbox went through the local lane.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_sink_keeps_charges_through_its_own_pool_and_shares_the_rate() {
    let (broker, pool) = (broker().await, database().await);
    let nowhere = persistence::build_pool(&persistence::DatabaseSettings {
        url: "postgres://postgres@127.0.0.1:5432/no_such_database_for_this_test".to_owned(),
        pool_max_size: 1,
        pool_wait_timeout_ms: 2_000,
        connect_timeout_ms: 2_000,
    })
    .unwrap();
    let parent = sink_with(&broker, &nowhere, Duration::from_secs(30), 4);
    let local = parent.local(pool.clone());
    let kept = charge();
    local.make_durable(kept.clone()).await.expect("durable");
    assert_eq!(
        outbox_ids(&pool).await,
        vec![kept.request_id],
        "kept in the outbox by the local lane"
    );
    // A burst through the parent (its outbox lane fails, so the broker takes them) raises the
    // shared rate: the local sink's next charge goes to the broker, not to the outbox.
    let burst: Vec<BillingMessage> = (0..20).map(|_| charge()).collect();
    let results =
        futures_util::future::join_all(burst.iter().map(|c| parent.make_durable(c.clone()))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let after = charge();
    local.make_durable(after.clone()).await.expect("durable");
    assert_eq!(outbox_ids(&pool).await, vec![kept.request_id]);
    let (_, ids) = drain(&broker).await;
    assert!(ids.contains(&after.request_id), "in the queue when durable");
    assert!(!ids.contains(&kept.request_id), "its forward still lingers");
    cleanup(&broker).await;
}

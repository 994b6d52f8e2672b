//! Group commit: requests that arrive while earlier ones are being written run together as
//! one set-based statement (one round trip, one commit), with no added delay at low load.
//!
//! A [`Batcher`] runs at most `in_flight` statements at once. The first request after a free
//! slot starts a statement at once, together with whatever queued up while every slot was busy
//! (up to `batch_max`); so a lone request costs what it did before, and under load the number
//! of statements per second stays bounded while each carries more requests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::StoreError;

type Reply<Resp> = oneshot::Sender<Result<Resp, StoreError>>;

/// How long a batch waits for more requests once its first one is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    /// At most this long after the first request.
    pub max: Duration,
    /// And no longer than this after the latest one (zero: only `max` counts). A batch stops
    /// waiting once its input went quiet, rather than lingering on for requests that cannot
    /// come: when the producer's own window is full (a broker consumer with all its prefetch
    /// delivered and waiting for this batch's acks), lingering would only add its whole
    /// `max` to every batch.
    pub idle: Duration,
}

impl Linger {
    /// No waiting: a batch is what queued up while every slot was busy.
    pub const NONE: Linger = Linger {
        max: Duration::ZERO,
        idle: Duration::ZERO,
    };
}

/// Runs requests of type `Req` in batches; each caller gets its own answer.
pub struct Batcher<Req, Resp> {
    sender: mpsc::UnboundedSender<(Req, Option<Reply<Resp>>)>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher {
            sender: self.sender.clone(),
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Pool("the batching task stopped".to_owned())
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
{
    /// Starts the batching task on the current tokio runtime. `run` executes one batch and
    /// answers one `Resp` per request, in order, all or nothing (one statement): when a batch
    /// of several fails, each request is run again alone, so one bad request fails only itself.
    /// The task ends when every handle is dropped, after running what was queued.
    pub fn start<F, Fut>(batch_max: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Resp>, StoreError>> + Send + 'static,
    {
        Self::start_lingering(batch_max, in_flight, Linger::NONE, run)
    }

    /// [`Batcher::start`], but once a slot is free and the first request is in, the batch
    /// waits for more as `linger` says (fewer, larger statements, for a little latency).
    pub fn start_lingering<F, Fut>(
        batch_max: usize,
        in_flight: usize,
        linger: Linger,
        run: F,
    ) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Resp>, StoreError>> + Send + 'static,
    {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(drive(
            receiver,
            batch_max.max(1),
            Arc::new(Semaphore::new(in_flight.max(1))),
            linger,
            Arc::new(run),
        ));
        Batcher { sender }
    }

    /// Runs `request` (in a batch with whatever else is waiting) and answers its result.
    pub async fn call(&self, request: Req) -> Result<Resp, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((request, Some(reply)))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Queues `request` without waiting for it; `false` if the batching task has stopped.
    pub fn send(&self, request: Req) -> bool {
        self.sender.send((request, None)).is_ok()
    }
}

async fn drive<Req, Resp, F, Fut>(
    mut receiver: mpsc::UnboundedReceiver<(Req, Option<Reply<Resp>>)>,
    batch_max: usize,
    slots: Arc<Semaphore>,
    linger: Linger,
    run: Arc<F>,
) where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Resp>, StoreError>> + Send + 'static,
{
    loop {
        // While every slot is busy, requests wait in the channel and form the next batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger.max;
        while batch.len() < batch_max {
            let next = if linger.max.is_zero() {
                receiver.try_recv().ok()
            } else {
                let until = if linger.idle.is_zero() {
                    deadline
                } else {
                    deadline.min(tokio::time::Instant::now() + linger.idle)
                };
                tokio::time::timeout_at(until, receiver.recv())
                    .await
                    .ok()
                    .flatten()
            };
            match next {
                Some(next) => batch.push(next),
                None => break,
            }
        }
        let run = Arc::clone(&run);
        tokio::spawn(async move {
            execute(&*run, batch).await;
            drop(slot);
        });
    }
}

async fn execute<Req, Resp, F, Fut>(run: &F, batch: Vec<(Req, Option<Reply<Resp>>)>)
where
    Req: Clone,
    F: Fn(Vec<Req>) -> Fut,
    Fut: Future<Output = Result<Vec<Resp>, StoreError>>,
{
    let size = batch.len();
    let (requests, replies): (Vec<Req>, Vec<Option<Reply<Resp>>>) = batch.into_iter().unzip();
    if size > 1 {
        match run(requests.clone()).await {
            Ok(answers) => {
                debug_assert_eq!(answers.len(), size, "one answer per request");
                // A missing answer drops its reply, which the caller sees as an error.
                for (reply, answer) in replies.into_iter().zip(answers) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(answer));
                    }
                }
                return;
            }
            // No connection: alone, each would wait for one again.
            Err(StoreError::Pool(cause)) => {
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(StoreError::Pool(cause.clone())));
                }
                return;
            }
            Err(StoreError::Busy) => {
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(StoreError::Busy));
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, size, "batched statement failed; running its requests one by one");
            }
        }
    }
    // The statement was rolled back as a whole, so running each request again is safe.
    for (request, reply) in requests.into_iter().zip(replies) {
        let answer = run(vec![request])
            .await
            .and_then(|answers| answers.into_iter().next().ok_or_else(stopped));
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Doubles each number after a pause; refuses a whole batch holding a negative one.
    fn doubler(sizes: Arc<Mutex<Vec<usize>>>) -> Batcher<i64, i64> {
        Batcher::start(64, 1, move |batch: Vec<i64>| {
            let sizes = Arc::clone(&sizes);
            async move {
                sizes.lock().map_err(|_| stopped())?.push(batch.len());
                tokio::time::sleep(Duration::from_millis(20)).await;
                if batch.iter().any(|n| *n < 0) {
                    return Err(StoreError::StateConflict("negative".to_owned()));
                }
                Ok(batch.into_iter().map(|n| n * 2).collect())
            }
        })
    }

    #[tokio::test]
    async fn requests_arriving_while_a_statement_runs_go_together_and_get_their_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = doubler(Arc::clone(&sizes));
        let calls = (1..=20).map(|n| {
            let batcher = batcher.clone();
            tokio::spawn(async move { (n, batcher.call(n).await) })
        });
        for call in futures_util::future::join_all(calls).await {
            let (n, answer) = call.expect("task");
            assert_eq!(answer.expect("answered"), n * 2);
        }
        let sizes = sizes.lock().expect("sizes").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.len() < 20, "no batching happened: {sizes:?}");
        // A lone request later runs at once, by itself.
        assert_eq!(batcher.call(21).await.expect("answered"), 42);
    }

    /// A lingering batcher answering each number itself, recording its batches' sizes.
    fn recording(linger: Linger) -> (Batcher<i64, i64>, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&sizes);
        let batcher = Batcher::start_lingering(64, 1, linger, move |batch: Vec<i64>| {
            let sizes = Arc::clone(&recorded);
            async move {
                sizes.lock().map_err(|_| stopped())?.push(batch.len());
                Ok(batch)
            }
        });
        (batcher, sizes)
    }

    #[tokio::test]
    async fn a_lingering_batch_waits_for_requests_that_arrive_soon_after_the_first() {
        let (batcher, sizes) = recording(Linger {
            max: Duration::from_millis(300),
            idle: Duration::ZERO,
        });
        let mut calls = Vec::new();
        for n in 0..3 {
            let batcher = batcher.clone();
            calls.push(tokio::spawn(async move { batcher.call(n).await }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (n, call) in (0..3).zip(calls) {
            assert_eq!(call.await.expect("task").expect("answered"), n);
        }
        assert_eq!(
            *sizes.lock().expect("sizes"),
            vec![3],
            "one batch of all three"
        );
    }

    /// A batch whose input went quiet runs after `idle`, not after `max`: with a `max` of an
    /// hour, the test would not end if it waited for it.
    #[tokio::test]
    async fn a_lingering_batch_stops_waiting_once_its_input_is_quiet() {
        let (batcher, sizes) = recording(Linger {
            max: Duration::from_secs(3600),
            idle: Duration::from_secs(1),
        });
        // Three requests close together (well within `idle`, a second, of each other) share a batch.
        let calls: Vec<_> = (0..3)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.call(n).await })
            })
            .collect();
        let answered = tokio::time::timeout(Duration::from_secs(30), async {
            let mut answers = Vec::new();
            for call in calls {
                answers.push(call.await.expect("task").expect("answered"));
            }
            answers
        })
        .await
        .expect("the batch ran once its input was quiet, long before its max");
        assert_eq!(answered, vec![0, 1, 2]);
        assert_eq!(*sizes.lock().expect("sizes"), vec![3], "one batch of three");
    }

    #[tokio::test]
    async fn a_failed_batch_is_run_again_one_by_one_so_only_the_bad_request_fails() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = doubler(Arc::clone(&sizes));
        // The first call holds the only slot while the next three queue up together.
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.call(1).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let rest = [2, -3, 4].map(|n| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call(n).await })
        });
        assert_eq!(first.await.expect("task").expect("answered"), 2);
        let [two, bad, four] = rest;
        assert_eq!(two.await.expect("task").expect("answered"), 4);
        assert!(matches!(
            bad.await.expect("task"),
            Err(StoreError::StateConflict(_))
        ));
        assert_eq!(four.await.expect("task").expect("answered"), 8);
        let sizes = sizes.lock().expect("sizes").clone();
        assert_eq!(
            sizes,
            vec![1, 3, 1, 1, 1],
            "one batch of three, then each alone"
        );
    }
}

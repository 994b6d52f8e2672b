//! Asynchronous jobs as the API sees them: submission (validate, hold, insert, publish) and
//! polling.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use domain::{InvocationMessage, JobView, ModelKind, Usage};
use messaging::{Broker, MODEL_INVOCATION_QUEUE};
use persistence::batch::Batcher;
use persistence::jobs::{self, Submission};
use persistence::{Page, Paged, StoreError};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::KeyHolder;
use crate::core::admission::spend_refusal;
use crate::core::limits::Ask;
use crate::error::{ApiError, Limited};
use crate::state::{AppState, Background};
use persistence::limits::{Capped, Reserve};

const SIZES: &[&str] = &["256x256", "512x512", "1024x1024", "1024x1792", "1792x1024"];
const MAX_PROMPT_CHARS: usize = 4000;
/// Submissions per statement, and shards of users (each runs one statement at a time on a
/// pooled connection of its own).
const SUBMIT_BATCH_MAX: usize = 128;
const SUBMIT_SHARDS: usize = 2;

/// `POST /v1/jobs/image-generation`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageJobRequest {
    /// An image model's public name.
    pub model: String,
    /// 1 to 4000 characters.
    pub prompt: String,
    /// 1 to 10 images, default 1.
    pub n: Option<u32>,
    /// One of 256x256, 512x512, 1024x1024 (default), 1024x1792, 1792x1024.
    pub size: Option<String>,
    /// OpenAI's optional image parameters, passed through.
    pub quality: Option<String>,
    pub style: Option<String>,
    pub response_format: Option<String>,
    pub user: Option<String>,
    /// Receives the Job, signed, when it ends (COMPLETED or FAILED).
    pub callback_url: Option<String>,
}

/// Validates, holds `n × per_image` (+ per_request), inserts the job PENDING and publishes
/// `{job_id}` in the background. A failed publish leaves the job PENDING for the sweeper.
pub async fn submit(
    state: Arc<AppState>,
    holder: KeyHolder,
    request: ImageJobRequest,
) -> Result<Uuid, ApiError> {
    let route = state
        .routing
        .route(&request.model)
        .filter(|r| r.kind == ModelKind::Image)
        .ok_or_else(|| {
            ApiError::ModelNotFound(format!(
                "model {:?} does not exist or is not an image model",
                request.model
            ))
        })?;
    let n = request.n.unwrap_or(1);
    if !(1..=10).contains(&n) {
        return Err(ApiError::invalid("n must be between 1 and 10"));
    }
    let prompt = request.prompt.trim();
    if prompt.is_empty() || prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid("prompt must be 1 to 4000 characters"));
    }
    let size = request.size.as_deref().unwrap_or("1024x1024");
    if !SIZES.contains(&size) {
        return Err(ApiError::invalid(format!(
            "size must be one of {}",
            SIZES.join(", ")
        )));
    }
    if let Some(url) = &request.callback_url {
        if url.len() > 2048 {
            return Err(ApiError::invalid("callback_url is too long"));
        }
        upstream::egress::check_target(
            url,
            state.allow_private_callbacks,
            &state.callback_resolver,
        )
        .await
        .map_err(ApiError::InvalidRequest)?;
        crate::core::webhook_secrets::require(&state, holder.user_id).await?;
    }
    let hold = route
        .pricing
        .cost(&Usage {
            images: n,
            ..Usage::default()
        })
        .map_err(|_| ApiError::invalid("the request cannot be priced"))?;
    let mut payload = json!({"model": route.name, "prompt": prompt, "n": n, "size": size});
    for (field, value) in [
        ("quality", &request.quality),
        ("style", &request.style),
        ("response_format", &request.response_format),
        ("user", &request.user),
    ] {
        if let Some(value) = value {
            payload[field] = json!(value);
        }
    }

    // Time-ordered (v7), like a call's request id: appended to the end of the indexes.
    let job_id = Uuid::now_v7();
    let submission = Submission {
        job_id,
        job_type: domain::jobs::IMAGE_GENERATION.to_owned(),
        user_id: holder.user_id,
        access_key_id: Some(holder.key_id),
        model_id: route.model_id,
        request_payload: payload,
        callback_url: request.callback_url,
        amount: hold.clone(),
    };
    // The same limits as calls (a submission is a request; it counts no tokens), and a cap on
    // the user's unfinished jobs.
    let ask = Ask {
        user_id: holder.user_id,
        key_id: holder.key_id,
        model_id: route.model_id,
        tokens: 0,
        deadline: chrono::Utc::now() + chrono::Duration::seconds(state.hold_ttl_seconds),
    };
    let mut permit = state.limits.admit(&ask, &holder.limits).await?;
    let admitted = admit_job(&state, &holder, &ask, &submission).await;
    if !matches!(admitted, Ok(())) {
        permit.give_back();
    }
    admitted?;
    // The job is committed: the 202 need not wait for the broker. A publish that fails (or a
    // gateway that dies first) leaves the job unclaimed, and the sweeper re-publishes it.
    let background = state.background.clone();
    background.spawn(async move { publish(&state, job_id).await });
    metrics::counter!("jobs_submitted_total").increment(1);
    Ok(job_id)
}

/// Reserves and inserts a job: under a spend limit one exact capped statement, else batched
/// with concurrent submissions into one durable statement (the 202 promises the job, so its
/// commit waits for the WAL flush).
async fn admit_job(
    state: &AppState,
    holder: &KeyHolder,
    ask: &Ask,
    submission: &Submission,
) -> Result<(), ApiError> {
    let short = || {
        ApiError::InsufficientBalance(format!(
            "this job may cost up to {}; top up first",
            submission.amount
        ))
    };
    let mut conn = state.conn().await?;
    if let Some(cap) = state.limits.max_pending_jobs(&holder.limits) {
        let pending = persistence::limits::pending_jobs(&mut conn, holder.user_id, cap).await?;
        if pending >= i64::from(cap) {
            return Err(ApiError::Limited(Box::new(Limited::rate(
                format!("at most {cap} jobs may be pending at once; retry when one ends"),
                1,
                Vec::new(),
            ))));
        }
    }
    let caps = state.limits.spend_caps(ask, &holder.limits);
    if caps.is_empty() {
        drop(conn);
        return match state.job_submissions.call(submission.clone()).await? {
            true => Ok(()),
            false => Err(short()),
        };
    }
    let capped = persistence::limits::reserve_capped(
        &mut conn,
        holder.user_id,
        Some(holder.key_id),
        submission.job_id,
        &submission.amount,
        &caps,
        Reserve::Job {
            submission,
            ttl_seconds: state.hold_ttl_seconds,
        },
    )
    .await?;
    match capped {
        Capped::Reserved => Ok(()),
        Capped::Balance => Err(short()),
        Capped::Spend(cap) => Err(spend_refusal(&cap, &submission.amount)),
    }
}

/// Job submissions, batched (see `persistence::jobs::submit_many`). A user's submissions
/// always go to the same shard, and a shard runs one statement at a time, so two batches in
/// flight never hold the same user's row: a submission waits for the batch before it in its
/// shard, not for another shard's commit.
#[derive(Clone)]
pub struct Submissions {
    shards: Vec<Batcher<Submission, bool>>,
}

impl Submissions {
    /// Starts the shards on their own durable connections, with pinned, cached plans (see
    /// `persistence::build_batch_pool`); on the shared pool if those cannot be set up (they
    /// come from the same settings, so that is unlikely).
    pub fn start(
        database: &persistence::DatabaseSettings,
        shared: persistence::Pool,
        hold_ttl_seconds: i64,
    ) -> Submissions {
        let pool = persistence::build_batch_pool(database, SUBMIT_SHARDS)
            .inspect_err(
                |error| tracing::error!(%error, "job submission pool; using the shared one"),
            )
            .unwrap_or(shared);
        let shards = (0..SUBMIT_SHARDS)
            .map(|_| {
                let pool = pool.clone();
                Batcher::start(SUBMIT_BATCH_MAX, 1, move |batch: Vec<Submission>| {
                    let pool = pool.clone();
                    async move {
                        let mut conn = pool.get().await?;
                        jobs::submit_many(&mut conn, &batch, hold_ttl_seconds).await
                    }
                })
            })
            .collect();
        Submissions { shards }
    }

    /// Holds and inserts `submission`'s job; `false` when the balance does not cover it.
    pub async fn call(&self, submission: Submission) -> Result<bool, StoreError> {
        self.shards[shard_of(submission.user_id, self.shards.len())]
            .call(submission)
            .await
    }
}

/// The shard of `user_id` among `shards` (at least one).
fn shard_of(user_id: i64, shards: usize) -> usize {
    (user_id.unsigned_abs() % shards.max(1) as u64) as usize
}

async fn publish(state: &AppState, job_id: Uuid) {
    let message = InvocationMessage { job_id }.to_json_bytes();
    // No write after the confirm: the claim records that the message arrived, and the sweeper
    // re-publishes a job left unclaimed (a second message changes nothing).
    if let Err(error) = state
        .broker
        .publish_json(MODEL_INVOCATION_QUEUE, &message, &job_id.to_string())
        .await
    {
        tracing::warn!(%error, %job_id, "job publish failed; publishing it again once the broker takes it");
        state.job_republisher.add(job_id);
    }
}

/// Job messages waiting to be published again here: the most a gateway keeps (beyond that,
/// and for a gateway that stops first, the invocation worker's sweeper re-publishes jobs still
/// unclaimed after `jobs.stranded_after_seconds`).
const REPUBLISH_MAX: usize = 100_000;
const REPUBLISH_BACKOFF_START: Duration = Duration::from_millis(100);
const REPUBLISH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Publishes again, in order, the job messages whose publish failed (broker down or slow to
/// confirm), as soon as the broker takes them: after a broker outage the jobs submitted during
/// it start within moments of its end rather than at the sweeper's next look. A message that
/// was in fact queued the first time is then a duplicate, which changes nothing.
#[derive(Clone)]
pub struct Republisher {
    sender: mpsc::UnboundedSender<Uuid>,
}

impl Republisher {
    pub fn start(broker: Broker, background: &Background) -> Republisher {
        let (sender, receiver) = mpsc::unbounded_channel();
        background.spawn(republish(broker, receiver, background.closing()));
        Republisher { sender }
    }

    pub fn add(&self, job_id: Uuid) {
        if self.sender.send(job_id).is_err() {
            tracing::warn!(%job_id, "the re-publisher stopped; the sweeper will re-publish it");
        }
    }
}

async fn republish(
    broker: Broker,
    mut receiver: mpsc::UnboundedReceiver<Uuid>,
    closing: CancellationToken,
) {
    let mut waiting = VecDeque::new();
    let mut backoff = REPUBLISH_BACKOFF_START;
    loop {
        if waiting.is_empty() {
            tokio::select! {
                biased;
                () = closing.cancelled() => return,
                next = receiver.recv() => match next {
                    Some(job_id) => waiting.push_back(job_id),
                    None => return,
                },
            }
        }
        while let Ok(job_id) = receiver.try_recv() {
            if waiting.len() < REPUBLISH_MAX {
                waiting.push_back(job_id);
            } else {
                metrics::counter!("jobs_republish_dropped_total").increment(1);
            }
        }
        metrics::gauge!("jobs_republish_waiting").set(waiting.len() as f64);
        let Some(&job_id) = waiting.front() else {
            continue;
        };
        let message = InvocationMessage { job_id }.to_json_bytes();
        match broker
            .publish_json(MODEL_INVOCATION_QUEUE, &message, &job_id.to_string())
            .await
        {
            Ok(()) => {
                waiting.pop_front();
                backoff = REPUBLISH_BACKOFF_START;
                metrics::counter!("jobs_republished_total").increment(1);
            }
            Err(_) => {
                // Shutdown leaves the rest to the sweeper.
                tokio::select! {
                    biased;
                    () = closing.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(REPUBLISH_BACKOFF_MAX);
            }
        }
    }
}

fn not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound("job not found".to_owned()),
        other => other.into(),
    }
}

/// The caller's job; a malformed id, an unknown id and another user's job all answer 404.
pub async fn get(state: &AppState, user_id: i64, job_id: &str) -> Result<JobView, ApiError> {
    let job_id =
        Uuid::parse_str(job_id).map_err(|_| ApiError::NotFound("job not found".to_owned()))?;
    let mut conn = state.conn().await?;
    let (job, model) = jobs::find_for_user(&mut conn, job_id, user_id)
        .await
        .map_err(not_found)?;
    Ok(jobs::view(&job, &model))
}

pub async fn list(
    state: &AppState,
    user_id: Option<i64>,
    page: Page,
) -> Result<Paged<jobs::JobWithModel>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(jobs::list(&mut conn, user_id, page).await?)
}

#[cfg(test)]
mod tests {
    use super::shard_of;

    #[test]
    fn a_user_always_lands_on_the_same_shard_and_users_spread_over_all() {
        for shards in 1..=4 {
            let mut seen = vec![0; shards];
            for user_id in -8..64 {
                let shard = shard_of(user_id, shards);
                assert!(shard < shards);
                assert_eq!(shard, shard_of(user_id, shards), "stable");
                seen[shard] += 1;
            }
            assert!(seen.iter().all(|&n| n > 0), "every shard used: {seen:?}");
        }
        assert_eq!(shard_of(i64::MIN, 2), 0);
        assert_eq!(shard_of(7, 0), 0, "no shards counts as one");
    }
}

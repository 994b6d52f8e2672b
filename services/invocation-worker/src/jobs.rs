//! Running asynchronous jobs: the `model_invocation_queue` handler (claim, call the provider,
//! finish with the money effect in the same transaction, or retry later), and the sweeper that
//! re-publishes stranded jobs and delivers webhooks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use catalog::{Route, Routing, SecretBox, with_provider_failover};
use chrono::Utc;
use domain::{BillingMessage, InvocationMessage, JobStatus, JobView, Usage};
use messaging::{Broker, Delivery, Handler, MODEL_INVOCATION_QUEUE, Outcome};
use persistence::batch::Batcher;
use persistence::jobs::{self, Claim, Completion, Job};
use persistence::{Pool, StoreError};
use serde::Deserialize;
use upstream::{UpstreamClient, UpstreamError};
use uuid::Uuid;

/// How jobs run, retry and report.
#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    /// A claimed job belongs to its worker this long; after it, another worker may take it over
    /// (the first one died). Must exceed the provider call's total timeout.
    pub lease_seconds: i64,
    /// Attempts before a job that keeps failing transiently ends FAILED.
    pub max_attempts: i32,
    /// Transient failures retry after base × 2^(attempt-1), capped at max.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// A PENDING job with no message for this long is re-published by the sweeper.
    pub stranded_after_seconds: i64,
    pub sweep_interval_ms: u64,
    pub catalog_refresh_ms: u64,
    /// Once a completed job's charge waits to be published, how long more charges may join
    /// its message to `billing_log_queue` (billing lag only: the job already says COMPLETED and
    /// its charge is safe in the outbox). Each message costs the broker a replicated write and
    /// billing-worker a transaction, so fewer, fuller messages cost less.
    pub billing_linger_ms: u64,
}

/// Signed webhooks of terminal jobs; each is signed with its job owner's own secret
/// (`POST /v1/me/webhook-secret`, sealed under the master key).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    pub max_attempts: i32,
    pub retry_base_ms: u64,
    pub timeout_ms: u64,
    /// Loopback and private-network targets are refused unless this is set (SSRF).
    pub allow_private_targets: bool,
    /// A hosts file whose entries win over DNS for webhook hosts (read at every lookup); unset
    /// in production. Tests rebind names with it.
    #[serde(default)]
    pub hosts_file: Option<std::path::PathBuf>,
}

pub struct Runner {
    pub pool: Pool,
    /// Claims of the deliveries in flight, batched into one statement (see `start_claims`).
    pub claims: Batcher<Uuid, Claim>,
    /// Completions, batched into one statement (see `start_completions`).
    pub completions: Batcher<Completion, bool>,
    /// Charges of completed jobs on their way to billing-worker; already in the outbox, so
    /// published with a linger (see `charges::ChargeSink`).
    pub charges: charges::ChargeSink,
    pub broker: Broker,
    pub routing: Arc<Routing>,
    pub secrets: SecretBox,
    pub upstream: UpstreamClient,
    pub jobs: JobSettings,
    pub webhooks: WebhookSettings,
    pub max_failover_attempts: u32,
    pub http: reqwest::Client,
    /// Resolves webhook hosts, for the check before each delivery (`http` has its own copy).
    pub resolver: upstream::egress::Resolver,
    /// Woken when a job with a `callback_url` ends, so its webhook goes out at once rather
    /// than at the next sweep (see `deliver_webhooks_forever`).
    pub webhooks_due: tokio::sync::Notify,
}

fn backoff(base_ms: u64, max_ms: u64, attempt: i32) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    Duration::from_millis(base_ms.saturating_mul(1u64 << exponent).min(max_ms))
}

/// Errors worth another attempt later; anything else fails the job now.
fn is_transient(error: &UpstreamError) -> bool {
    error.is_key_failure() || matches!(error, UpstreamError::NoKeyAvailable)
}

fn readable(error: &UpstreamError) -> String {
    match error {
        UpstreamError::BadRequest { body, .. } => serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .map_or_else(
                || "the provider refused the request".to_owned(),
                |m| format!("the provider refused the request: {m}"),
            ),
        UpstreamError::NoKeyAvailable => "no provider key is available for this model".to_owned(),
        other => format!("the provider failed: {other}"),
    }
}

impl Runner {
    async fn conn(&self) -> Result<persistence::PooledConnection, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// The job's model; an unknown id triggers one reload first (the model may be newer than
    /// this worker's last reload).
    async fn route(&self, model_id: i64) -> Option<Arc<Route>> {
        if let Some(route) = self.routing.route_by_id(model_id) {
            return Some(route);
        }
        if let Err(error) = self.routing.reload(&self.pool, &self.secrets).await {
            tracing::warn!(%error, "reloading routes failed");
        }
        self.routing.route_by_id(model_id)
    }

    /// One delivery of `{job_id}`.
    async fn run(&self, delivery: Delivery) -> Outcome {
        let message = match InvocationMessage::from_json_slice(&delivery.body) {
            Ok(message) => message,
            Err(error) => {
                return Outcome::DeadLetter(format!("undecodable invocation message: {error}"));
            }
        };
        match self.claims.call(message.job_id).await {
            Ok(Claim::Claimed(job)) => {
                if job.attempts == 1 {
                    // Submit → first pickup: how long jobs wait for a worker.
                    let waited = (Utc::now() - job.created_at).to_std().unwrap_or_default();
                    metrics::histogram!("job_pickup_seconds").record(waited.as_secs_f64());
                }
                self.process(*job).await
            }
            // Done already (a duplicate message): no second provider call, no second charge.
            Ok(Claim::Finished) => Outcome::Ack,
            Ok(Claim::Missing) => {
                tracing::warn!(job_id = %message.job_id, "message for an unknown job; dropped");
                Outcome::Ack
            }
            // Another worker holds it; look again once its lease has run out.
            Ok(Claim::Busy { lease_expires_at }) => {
                let wait = (lease_expires_at - Utc::now()).to_std().unwrap_or_default();
                Outcome::Retry(wait + Duration::from_millis(100))
            }
            Err(error) => {
                tracing::warn!(%error, job_id = %message.job_id, "claiming failed; retrying");
                Outcome::Retry(Duration::from_secs(1))
            }
        }
    }

    async fn process(&self, job: Job) -> Outcome {
        let started = std::time::Instant::now();
        let Some(route) = self.route(job.model_id).await else {
            return self
                .finish_failed(&job, "the model is no longer available")
                .await;
        };
        let result = with_provider_failover(
            &self.routing.keys,
            &route.providers(),
            &route.name,
            self.max_failover_attempts,
            |target| {
                let client = self.upstream.clone();
                let body = job.request_payload.clone();
                async move { client.images(&target, body).await }
            },
        )
        .await;
        metrics::histogram!("job_duration_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(answer) => {
                self.finish_completed(&job, &route, answer.body, answer.images)
                    .await
            }
            Err(error) if is_transient(&error) && job.attempts < self.jobs.max_attempts => {
                let delay = backoff(
                    self.jobs.retry_base_ms,
                    self.jobs.retry_max_ms,
                    job.attempts,
                );
                tracing::info!(job_id = %job.job_id, attempt = job.attempts, %error, ?delay, "transient failure; retrying");
                metrics::counter!("jobs_retried_total").increment(1);
                match self.conn().await {
                    Ok(mut conn) => {
                        match jobs::requeue(&mut conn, job.job_id, job.attempts).await {
                            Ok(()) => Outcome::Retry(delay),
                            Err(StoreError::StateConflict(_)) => Outcome::Ack,
                            Err(_) => Outcome::Retry(delay),
                        }
                    }
                    Err(_) => Outcome::Retry(delay),
                }
            }
            Err(error) => {
                let reason = if is_transient(&error) {
                    format!(
                        "{} (gave up after {} attempts)",
                        readable(&error),
                        job.attempts
                    )
                } else {
                    readable(&error)
                };
                self.finish_failed(&job, &reason).await
            }
        }
    }

    async fn finish_completed(
        &self,
        job: &Job,
        route: &Route,
        body: serde_json::Value,
        images: u32,
    ) -> Outcome {
        let usage = Usage {
            images,
            ..Usage::default()
        };
        let cost = match route.pricing.cost(&usage) {
            Ok(cost) => cost,
            Err(error) => {
                return self
                    .finish_failed(job, &format!("the result could not be priced: {error}"))
                    .await;
            }
        };
        let charge = BillingMessage {
            request_id: job.job_id,
            user_id: job.user_id,
            access_key_id: job.access_key_id,
            model_id: route.model_id,
            model_name: route.name.clone(),
            usage,
            cost: cost.clone(),
            lease_id: None,
            occurred_at: Utc::now(),
        };
        let Ok(charge_json) = serde_json::from_slice::<serde_json::Value>(&charge.to_json_bytes())
        else {
            return Outcome::Retry(Duration::from_secs(1));
        };
        let completed = self
            .completions
            .call(Completion {
                job_id: job.job_id,
                attempts: job.attempts,
                result: body,
                cost,
                charge: charge_json,
            })
            .await;
        match completed {
            Ok(true) => {
                metrics::counter!("jobs_total", "status" => JobStatus::Completed.as_str())
                    .increment(1);
                self.webhook_due(job);
                // The charge is safe in the outbox; publishing only makes billing faster, so
                // the delivery is acked without waiting for it.
                if !self.charges.forward_from_outbox(charge) {
                    tracing::warn!(job_id = %job.job_id, "charge publisher stopped; the outbox sweeper settles it");
                }
                Outcome::Ack
            }
            // Our lease was taken over: the other attempt owns the outcome.
            Ok(false) => Outcome::Ack,
            Err(error) => {
                tracing::warn!(%error, job_id = %job.job_id, "recording the result failed; retrying");
                Outcome::Retry(Duration::from_secs(1))
            }
        }
    }

    async fn finish_failed(&self, job: &Job, reason: &str) -> Outcome {
        let failed = match self.conn().await {
            Ok(mut conn) => jobs::fail(&mut conn, job.job_id, job.attempts, reason).await,
            Err(error) => Err(error),
        };
        match failed {
            Ok(_) => {
                metrics::counter!("jobs_total", "status" => JobStatus::Failed.as_str())
                    .increment(1);
                self.webhook_due(job);
                tracing::info!(job_id = %job.job_id, reason, "job failed");
                Outcome::Ack
            }
            Err(StoreError::StateConflict(_)) => Outcome::Ack,
            Err(error) => {
                tracing::warn!(%error, job_id = %job.job_id, "recording the failure failed; retrying");
                Outcome::Retry(Duration::from_secs(1))
            }
        }
    }

    /// A terminal job's webhook is queued (in the same transaction as its state): send it now.
    fn webhook_due(&self, job: &Job) {
        if job.callback_url.is_some() {
            self.webhooks_due.notify_one();
        }
    }

    /// Re-publishes jobs that have no message in flight (their publish failed, or their lease
    /// ran out with no redelivery coming); a duplicate message is harmless (see `claim`).
    pub async fn republish_stranded(&self) -> Result<usize, StoreError> {
        let stranded = {
            let mut conn = self.conn().await?;
            jobs::stranded(&mut conn, self.jobs.stranded_after_seconds, 500).await?
        };
        let mut published = 0;
        for job_id in stranded {
            let body = InvocationMessage { job_id }.to_json_bytes();
            if self
                .broker
                .publish_json(MODEL_INVOCATION_QUEUE, &body, &job_id.to_string())
                .await
                .is_ok()
            {
                let mut conn = self.conn().await?;
                jobs::mark_published(&mut conn, job_id).await?;
                published += 1;
            }
        }
        if published > 0 {
            tracing::info!(published, "re-published stranded jobs");
        }
        Ok(published)
    }

    /// Sends up to [`WEBHOOK_BATCH`] due webhooks: the Job object, signed `X-Signature:
    /// t=<unix>,v1=<hex HMAC-SHA256 of "t.body">` with the secret its job's owner has when it
    /// is sent (a rotation applies to webhooks already queued); a failure is retried with
    /// backoff up to `max_attempts`. Answers how many were attempted.
    pub async fn deliver_webhooks(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        // Claimed for twice the delivery timeout: a parallel sweeper skips them meanwhile.
        let claim_seconds = i64::try_from(self.webhooks.timeout_ms / 500)
            .unwrap_or(60)
            .max(1);
        let due = jobs::claim_due_webhooks(
            &mut conn,
            self.webhooks.max_attempts,
            WEBHOOK_BATCH,
            claim_seconds,
        )
        .await?;
        let attempted = due.len();
        for webhook in due {
            let (job, model) = jobs::find(&mut conn, webhook.job_id).await?;
            let view = jobs::view(&job, &model);
            let outcome = match self.signing_secret(&mut conn, job.user_id).await? {
                Ok(secret) => self.post_webhook(&webhook.url, &secret, &view).await,
                Err(refused) => Err(refused),
            };
            let retry_in = backoff(self.webhooks.retry_base_ms, 3_600_000, webhook.attempts + 1);
            let retry_in =
                chrono::Duration::from_std(retry_in).unwrap_or_else(|_| chrono::Duration::hours(1));
            jobs::record_webhook_attempt(
                &mut conn,
                webhook.id,
                outcome.as_ref().map(|_| ()).map_err(String::as_str),
                retry_in,
            )
            .await?;
            metrics::counter!("webhooks_total", "outcome" => if outcome.is_ok() { "delivered" } else { "failed" }).increment(1);
        }
        Ok(attempted)
    }

    /// The user's webhook signing secret, opened; `Ok(Err(why))` when it cannot sign (the user
    /// has none: only jobs queued before per-user secrets existed), recorded as the attempt's
    /// error.
    async fn signing_secret(
        &self,
        conn: &mut persistence::AsyncPgConnection,
        user_id: i64,
    ) -> Result<Result<String, String>, StoreError> {
        let Some(sealed) = persistence::webhook_secrets::sealed(conn, user_id).await? else {
            return Ok(Err(
                "the job's owner has no webhook signing secret (POST /v1/me/webhook-secret)"
                    .to_owned(),
            ));
        };
        Ok(self.secrets.open(&sealed).map_err(|error| {
            tracing::error!(%error, user_id, "a webhook signing secret cannot be opened");
            "the webhook signing secret cannot be opened".to_owned()
        }))
    }

    async fn post_webhook(&self, url: &str, secret: &str, view: &JobView) -> Result<(), String> {
        upstream::egress::check_target(url, self.webhooks.allow_private_targets, &self.resolver)
            .await?;
        let body = serde_json::to_vec(view).map_err(|e| e.to_string())?;
        let signature = domain::signature::header(secret.as_bytes(), Utc::now().timestamp(), &body);
        let response = self
            .http
            .post(url)
            .timeout(Duration::from_millis(self.webhooks.timeout_ms))
            .header("content-type", "application/json")
            .header("x-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("webhook request failed: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("webhook receiver answered {}", response.status()))
        }
    }
}

/// Webhooks claimed and sent per pass.
pub const WEBHOOK_BATCH: i64 = 50;

/// Statements at once per batcher (each holds a pooled connection), and requests per statement.
pub const IN_FLIGHT: usize = 2;
pub const BATCH_MAX: usize = 256;

/// Claims the deliveries in flight together (see `persistence::jobs::claim_many`), on a pool
/// whose commits do not wait for the WAL flush: a claim lost to a Postgres crash leaves the
/// job PENDING (or its old lease) for the sweeper to re-publish, and the completion, fenced on
/// the claim's attempt, then changes nothing and is not charged.
pub fn start_claims(pool: Pool, lease_seconds: i64) -> Batcher<Uuid, Claim> {
    Batcher::start(BATCH_MAX, IN_FLIGHT, move |job_ids: Vec<Uuid>| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await?;
            jobs::claim_many(&mut conn, &job_ids, lease_seconds).await
        }
    })
}

/// Records completions together (see `persistence::jobs::complete_many`).
pub fn start_completions(pool: Pool) -> Batcher<Completion, bool> {
    Batcher::start(BATCH_MAX, IN_FLIGHT, move |completions: Vec<Completion>| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await?;
            jobs::complete_many(&mut conn, &completions).await
        }
    })
}

/// The `model_invocation_queue` handler.
pub struct InvocationHandler(pub Arc<Runner>);

impl Handler for InvocationHandler {
    fn handle(&self, delivery: Delivery) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        Box::pin(self.0.run(delivery))
    }
}

/// Delivers webhooks, forever: as soon as a job with a `callback_url` ends, and at every sweep
/// interval (retries of failed deliveries come due in between). A full pass is followed by
/// another at once.
pub async fn deliver_webhooks_forever(runner: Arc<Runner>) {
    let every = Duration::from_millis(runner.jobs.sweep_interval_ms);
    loop {
        // A wake-up that came while a pass ran is kept (a permit), so none is lost.
        let _ = tokio::time::timeout(every, runner.webhooks_due.notified()).await;
        loop {
            match runner.deliver_webhooks().await {
                Ok(attempted) if attempted as i64 >= WEBHOOK_BATCH => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "delivering webhooks failed");
                    break;
                }
            }
        }
    }
}

/// Reloads routes and re-publishes stranded jobs, forever.
pub async fn sweep_forever(runner: Arc<Runner>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(runner.jobs.sweep_interval_ms));
    let mut last_reload = std::time::Instant::now();
    loop {
        ticks.tick().await;
        if last_reload.elapsed() >= Duration::from_millis(runner.jobs.catalog_refresh_ms) {
            if let Err(error) = runner.routing.reload(&runner.pool, &runner.secrets).await {
                tracing::warn!(%error, "reloading routes failed");
            }
            last_reload = std::time::Instant::now();
        }
        if let Err(error) = runner.republish_stranded().await {
            tracing::warn!(%error, "re-publishing stranded jobs failed");
        }
    }
}

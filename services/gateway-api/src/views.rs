//! The API objects of API.md, built from persistence rows; what clients see and nothing more.

use chrono::{DateTime, Utc};
use domain::{Money, Pricing};
use persistence::Paged;
use persistence::access_keys::AccessKey;
use persistence::catalog::{Model, ModelRoute, Provider, ProviderKey};
use persistence::ledger::LedgerEntry;
use persistence::limits::{LimitValues, Period, Scope};
use persistence::orders::Order;
use persistence::usage::UsageLog;
use persistence::users::User;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub email: String,
    pub role: domain::Role,
    pub status: domain::UserStatus,
    #[schema(value_type = String, example = "10.5")]
    pub balance: Money,
    pub created_at: DateTime<Utc>,
}

/// A job-webhook signing secret, just created or rotated: the only time it is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecretView {
    /// `whsec_...`: the HMAC-SHA256 key of the user's webhooks' `X-Signature`.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// Whether the user has a webhook signing secret; never the secret itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecretStatusView {
    pub exists: bool,
    pub created_at: Option<DateTime<Utc>>,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        UserView {
            id: user.id,
            email: user.email,
            role: user.role,
            status: user.status,
            balance: Money::from_db(user.balance),
            created_at: user.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessKeyView {
    pub id: i64,
    pub name: String,
    #[schema(example = "sk-AbCdEfGh")]
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    /// The key's own limits (null: the platform default applies, see `GET /v1/admin/limits`).
    #[serde(flatten)]
    pub limits: LimitsView,
}

impl AccessKeyView {
    pub fn new(key: AccessKey, limits: &LimitValues) -> Self {
        AccessKeyView {
            id: key.id,
            name: key.name,
            prefix: key.prefix,
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
            revoked: key.revoked_at.is_some(),
            limits: LimitsView::from(limits),
        }
    }
}

/// Limits of a key, a user, a model or the platform; null = no limit of this subject's own.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsView {
    /// Requests per calendar minute (UTC).
    pub rpm_limit: Option<i32>,
    /// Tokens (prompt and completion) per calendar minute, estimated at admission and
    /// corrected by the real usage.
    pub tpm_limit: Option<i64>,
    /// Calls and streams in flight at once.
    pub max_concurrency: Option<i32>,
    #[schema(value_type = Option<String>, example = "25.00")]
    pub spend_limit: Option<Money>,
    #[schema(example = "total")]
    pub spend_limit_period: &'static str,
    /// Jobs PENDING or PROCESSING per user (users and the platform only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_jobs: Option<i32>,
}

impl From<&LimitValues> for LimitsView {
    fn from(values: &LimitValues) -> Self {
        LimitsView {
            rpm_limit: values.rpm_limit,
            tpm_limit: values.tpm_limit,
            max_concurrency: values.max_concurrency,
            spend_limit: values.spend_limit.clone(),
            spend_limit_period: values.spend_limit_period.as_str(),
            max_pending_jobs: values.max_pending_jobs,
        }
    }
}

/// A limit field of a change: absent = unchanged, null = removed.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A change of limits: a field left out stays as it is, `null` removes the limit.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub rpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub tpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub max_concurrency: Option<Option<i64>>,
    /// A non-negative decimal string.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "25.00")]
    pub spend_limit: Option<Option<String>>,
    /// `total` (default), `day` or `month` (UTC).
    #[schema(value_type = Option<String>, example = "month")]
    pub spend_limit_period: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub max_pending_jobs: Option<Option<i64>>,
}

fn bounded<T: TryFrom<i64>>(
    field: &str,
    value: Option<i64>,
    max: i64,
) -> Result<Option<T>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if (1..=max).contains(&v) => T::try_from(v)
            .map(Some)
            .map_err(|_| ApiError::InvalidRequest(format!("{field} is out of range"))),
        Some(_) => Err(ApiError::InvalidRequest(format!(
            "{field} must be an integer from 1 to {max}, or null for no limit"
        ))),
    }
}

impl LimitsInput {
    /// `current` with this change applied, checked for a subject of `scope`.
    pub fn apply(&self, current: &LimitValues, scope: Scope) -> Result<LimitValues, ApiError> {
        let invalid = |message: &str| ApiError::InvalidRequest(message.to_owned());
        let mut next = current.clone();
        if let Some(v) = self.rpm_limit {
            next.rpm_limit = bounded("rpm_limit", v, 1_000_000_000)?;
        }
        if let Some(v) = self.tpm_limit {
            next.tpm_limit = bounded("tpm_limit", v, 1_000_000_000_000)?;
        }
        if let Some(v) = self.max_concurrency {
            next.max_concurrency = bounded("max_concurrency", v, 1_000_000)?;
        }
        if let Some(v) = &self.spend_limit {
            next.spend_limit = match v {
                None => None,
                Some(text) => {
                    let limit = Money::parse(text).map_err(|_| {
                        invalid("spend_limit must be a decimal string such as \"25.00\"")
                    })?;
                    if limit.is_negative() {
                        return Err(invalid("spend_limit must not be negative"));
                    }
                    Some(limit)
                }
            };
        }
        if let Some(period) = &self.spend_limit_period {
            next.spend_limit_period = Period::parse(period)
                .ok_or_else(|| invalid("spend_limit_period must be total, day or month"))?;
        }
        if let Some(v) = self.max_pending_jobs {
            next.max_pending_jobs = bounded("max_pending_jobs", v, 1_000_000)?;
        }
        if matches!(scope, Scope::Key | Scope::Model) && next.max_pending_jobs.is_some() {
            return Err(invalid(
                "max_pending_jobs is set per user or for the platform, not here",
            ));
        }
        if scope == Scope::Model && next.spend_limit.is_some() {
            return Err(invalid(
                "a model has no spend limit; set it on keys or users",
            ));
        }
        Ok(next)
    }
}

/// Only the creation response carries the secret, once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAccessKeyView {
    #[serde(flatten)]
    pub access_key: AccessKeyView,
    /// The full secret; it cannot be shown again.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub id: i64,
    pub name: String,
    #[schema(example = "openai")]
    pub kind: String,
    pub base_url: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

impl From<Provider> for ProviderView {
    fn from(p: Provider) -> Self {
        ProviderView {
            id: p.id,
            name: p.name,
            kind: p.kind,
            base_url: p.base_url,
            enabled: p.enabled,
            created_at: p.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderKeyView {
    pub id: i64,
    pub provider_id: i64,
    pub name: String,
    /// The last four characters of the secret; the secret itself is write-only.
    pub key_hint: String,
    pub weight: i32,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

impl From<ProviderKey> for ProviderKeyView {
    fn from(k: ProviderKey) -> Self {
        ProviderKeyView {
            id: k.id,
            provider_id: k.provider_id,
            name: k.name,
            key_hint: k.key_hint,
            weight: k.weight,
            enabled: k.enabled,
            created_at: k.created_at,
        }
    }
}

/// Another provider serving a model: `{"id", "model_id", "provider_id", "upstream_model",
/// "priority", "weight", "enabled", "created_at"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelRouteView {
    pub id: i64,
    pub model_id: i64,
    pub provider_id: i64,
    pub upstream_model: String,
    /// Routes are tried by descending priority; the model's own provider has 0.
    pub priority: i32,
    /// Routes of one priority are tried in an order drawn by weight; the model's own has 1.
    pub weight: i32,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

impl From<ModelRoute> for ModelRouteView {
    fn from(r: ModelRoute) -> Self {
        ModelRouteView {
            id: r.id,
            model_id: r.model_id,
            provider_id: r.provider_id,
            upstream_model: r.upstream_model,
            priority: r.priority,
            weight: r.weight,
            enabled: r.enabled,
            created_at: r.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    pub id: i64,
    pub name: String,
    pub provider_id: i64,
    pub upstream_model: String,
    #[schema(example = "chat")]
    pub kind: String,
    #[schema(value_type = PricingSchema)]
    pub pricing: Pricing,
    pub max_output_tokens: i32,
    /// Prompt tokens one image part of a chat prompt may cost; sizes the hold.
    #[schema(example = 1600)]
    pub image_input_tokens: i32,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

/// Pricing as documented: each price an optional non-negative decimal string.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PricingSchema {
    #[schema(example = "0.15")]
    pub input_per_million: Option<String>,
    #[schema(example = "0.60")]
    pub output_per_million: Option<String>,
    /// Prompt tokens read from the provider's cache; else the input price.
    pub cached_input_per_million: Option<String>,
    /// Prompt tokens written to the provider's cache; else the input price.
    pub cache_write_per_million: Option<String>,
    pub per_image: Option<String>,
    /// A fixed fee on every call.
    pub per_request: Option<String>,
    /// Long-context tiers by ascending threshold (at most 8): a call whose prompt passes
    /// `above_prompt_tokens` has all its tokens priced at the tier's prices; no tier lowers a
    /// price.
    pub long_context: Option<Vec<PriceTierSchema>>,
}

/// One long-context tier: the token prices of prompts longer than `above_prompt_tokens`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PriceTierSchema {
    #[schema(example = 200000)]
    pub above_prompt_tokens: u64,
    pub input_per_million: Option<String>,
    pub output_per_million: Option<String>,
    pub cached_input_per_million: Option<String>,
    pub cache_write_per_million: Option<String>,
}

impl TryFrom<Model> for ModelView {
    type Error = ApiError;

    fn try_from(m: Model) -> Result<Self, ApiError> {
        let pricing = serde_json::from_value(m.pricing)
            .map_err(|e| ApiError::Internal(format!("stored pricing of model {}: {e}", m.id)))?;
        Ok(ModelView {
            id: m.id,
            name: m.name,
            provider_id: m.provider_id,
            upstream_model: m.upstream_model,
            kind: m.kind,
            pricing,
            max_output_tokens: m.max_output_tokens,
            image_input_tokens: m.image_input_tokens,
            enabled: m.enabled,
            created_at: m.created_at,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    pub order_no: String,
    pub user_id: i64,
    #[schema(value_type = String, example = "100")]
    pub amount: Money,
    pub status: domain::OrderStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        OrderView {
            order_no: o.order_no,
            user_id: o.user_id,
            amount: Money::from_db(o.amount),
            status: o.status,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntryView {
    pub id: i64,
    pub user_id: i64,
    #[schema(value_type = String, example = "-0.0005253")]
    pub delta: Money,
    #[schema(value_type = String)]
    pub balance_after: Money,
    #[schema(example = "topup")]
    pub kind: String,
    pub reference: String,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<LedgerEntry> for LedgerEntryView {
    fn from(e: LedgerEntry) -> Self {
        LedgerEntryView {
            id: e.id,
            user_id: e.user_id,
            delta: Money::from_db(e.delta),
            balance_after: Money::from_db(e.balance_after),
            kind: e.kind,
            reference: e.reference,
            note: e.note,
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLogView {
    pub id: i64,
    pub request_id: uuid::Uuid,
    pub user_id: i64,
    /// The access key the call was made with (null for rows of a key since deleted).
    pub access_key_id: Option<i64>,
    /// `overrun` when the call priced above what its reservation covered (it is then in
    /// `GET /v1/admin/overruns`), else `charged`.
    pub status: domain::UsageStatus,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub images: i32,
    #[schema(value_type = String)]
    pub cost: Money,
    /// The ledger entry (`GET /v1/me/ledger`) that took this call's cost together with the
    /// user's other calls settled in the same batch; null when nothing was charged, and for
    /// calls settled before entries were shared (their entry's reference is the request id).
    pub ledger_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

impl From<UsageLog> for UsageLogView {
    fn from(u: UsageLog) -> Self {
        UsageLogView {
            status: u.status(),
            id: u.id,
            request_id: u.request_id,
            user_id: u.user_id,
            access_key_id: u.access_key_id,
            model: u.model_name,
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            images: u.images,
            cost: Money::from_db(u.cost),
            ledger_id: u.ledger_id,
            created_at: u.created_at,
        }
    }
}

/// A billed call that priced above what its reservation covered: it took its reservation and
/// at most what was free of the balance beside it, never money other calls held.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverrunView {
    pub request_id: uuid::Uuid,
    pub user_id: i64,
    pub model_name: String,
    /// What the call's usage priced at.
    #[schema(value_type = String, example = "0.9")]
    pub priced_cost: Money,
    /// What its reservation covered (its hold, or the part of its credit lease it took; "0"
    /// when the hold had been released before the charge arrived).
    #[schema(value_type = String, example = "0.3")]
    pub held_amount: Money,
    /// What was charged (the usage log's `cost`).
    #[schema(value_type = String, example = "0.6")]
    pub charged: Money,
    /// `priced_cost - charged`: what the balance could not cover.
    #[schema(value_type = String, example = "0.3")]
    pub uncollected: Money,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<UsageLog> for OverrunView {
    type Error = ApiError;

    fn try_from(u: UsageLog) -> Result<Self, ApiError> {
        let (Some(priced_cost), Some(held_amount)) = (u.priced_cost, u.held_amount) else {
            return Err(ApiError::Internal(format!(
                "usage log {} listed as an overrun without its priced and held amounts",
                u.id
            )));
        };
        let (priced_cost, charged) = (Money::from_db(priced_cost), Money::from_db(u.cost));
        let uncollected = priced_cost
            .checked_sub(&charged)
            .map_err(|e| ApiError::Internal(format!("usage log {}: {e}", u.id)))?;
        Ok(OverrunView {
            request_id: u.request_id,
            user_id: u.user_id,
            model_name: u.model_name,
            priced_cost,
            held_amount: Money::from_db(held_amount),
            charged,
            uncollected,
            created_at: u.created_at,
        })
    }
}

/// `{"data": [...], "total", "limit", "offset"}`, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse<T: ToSchema> {
    pub data: Vec<T>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

impl<T: ToSchema> ListResponse<T> {
    pub fn from_page<R>(
        paged: Paged<R>,
        page: persistence::Page,
        view: impl FnMut(R) -> Result<T, ApiError>,
    ) -> Result<Self, ApiError> {
        Ok(ListResponse {
            data: paged.rows.into_iter().map(view).collect::<Result<_, _>>()?,
            total: paged.total,
            limit: page.limit,
            offset: page.offset,
        })
    }
}

/// `?limit=` (1..=200, default 50) and `?offset=` (>= 0).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    #[param(minimum = 0, maximum = 10000000)]
    pub offset: Option<i64>,
}

impl ListQuery {
    pub fn page(&self) -> Result<persistence::Page, ApiError> {
        page(self.limit, self.offset)
    }
}

/// The admin lists' query: the page and an optional `?user_id=` filter.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AdminListQuery {
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    #[param(minimum = 0, maximum = 10000000)]
    pub offset: Option<i64>,
    pub user_id: Option<i64>,
}

impl AdminListQuery {
    pub fn page(&self) -> Result<persistence::Page, ApiError> {
        page(self.limit, self.offset)
    }
}

/// The page of a list from `?limit=` and `?offset=`.
pub fn page(limit: Option<i64>, offset: Option<i64>) -> Result<persistence::Page, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "limit must be between 1 and 200".to_owned(),
        ));
    }
    let offset = offset.unwrap_or(0);
    if !(0..=10_000_000).contains(&offset) {
        return Err(ApiError::InvalidRequest(
            "offset must be between 0 and 10000000".to_owned(),
        ));
    }
    Ok(persistence::Page { limit, offset })
}

/// `GET /v1/me/spend`: UTC days, both included (default: the last 30 days, ending today).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SpendQuery {
    /// The first day (YYYY-MM-DD).
    #[param(value_type = Option<String>, example = "2026-11-02")]
    pub from: Option<chrono::NaiveDate>,
    /// The last day (YYYY-MM-DD); at most 366 days after `from`.
    #[param(value_type = Option<String>, example = "2026-12-01")]
    pub to: Option<chrono::NaiveDate>,
}

/// `GET /v1/admin/overview`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    /// The start (RFC 3339; rounded down to its bucket). Default: the 24 hours or 30 days up
    /// to `to`, the bucket of `to` last.
    pub from: Option<DateTime<Utc>>,
    /// The end (RFC 3339, excluded; default now).
    pub to: Option<DateTime<Utc>>,
    /// `hour` (default; at most 744) or `day` (at most 366).
    #[param(value_type = Option<String>)]
    pub bucket: Option<crate::core::statistics::Bucket>,
}

//! The Job object of the API (and of job webhooks), one shape for every service.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{JobStatus, Money};

/// The only job type so far.
pub const IMAGE_GENERATION: &str = "image-generation";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub job_id: Uuid,
    #[serde(rename = "type")]
    #[schema(example = "image-generation")]
    pub job_type: String,
    /// The public model name.
    pub model: String,
    pub status: JobStatus,
    /// The provider's answer, when COMPLETED.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed, when FAILED.
    pub error: Option<String>,
    /// What it cost, once billed.
    pub cost: Option<Money>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

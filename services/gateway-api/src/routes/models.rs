//! `/v1/models`: the OpenAI-style list of models an access key can call.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::KeyHolder;
use crate::core::catalog;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/models", web::get().to(list));
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<ModelEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    pub id: String,
    #[schema(example = "model")]
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    pub owned_by: String,
}

/// Enabled models, in OpenAI's list format.
#[utoipa::path(get, path = "/v1/models", tag = "models", security(("access_key" = [])),
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)))]
pub async fn list(
    state: web::Data<AppState>,
    _caller: KeyHolder,
) -> Result<HttpResponse, ApiError> {
    let models = catalog::list_enabled_models(&state).await?;
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list",
        data: models
            .into_iter()
            .map(|m| ModelEntry {
                id: m.name,
                object: "model",
                created: m.created_at.timestamp(),
                owned_by: "ai-gateway".to_owned(),
            })
            .collect(),
    }))
}

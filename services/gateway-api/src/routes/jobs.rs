//! `/v1/jobs`: asynchronous image generation, submitted with an access key and polled.

use actix_web::{HttpResponse, web};
use domain::JobView;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{AdminUser, KeyHolder};
use crate::core::jobs::{self, ImageJobRequest};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::views::{AdminListQuery, ListQuery, ListResponse};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/jobs/image-generation", web::post().to(submit_image))
        .route("/v1/jobs/{job_id}", web::get().to(get))
        .route("/v1/jobs", web::get().to(list))
        .service(
            web::resource("/v1/admin/jobs")
                .wrap(actix_web::middleware::from_fn(
                    crate::middleware::require_admin,
                ))
                .route(web::get().to(admin_list)),
        );
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub job_id: uuid::Uuid,
    pub status: domain::JobStatus,
    /// Where to poll: `/v1/jobs/{job_id}`.
    pub status_url: String,
}

/// Submit an image generation; 202 at once with the job id (also in `Location`).
#[utoipa::path(post, path = "/v1/jobs/image-generation", tag = "jobs", security(("access_key" = [])),
    request_body = ImageJobRequest,
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn submit_image(
    state: web::Data<AppState>,
    holder: KeyHolder,
    body: web::Json<ImageJobRequest>,
) -> Result<HttpResponse, ApiError> {
    let job_id = jobs::submit(state.into_inner(), holder, body.into_inner()).await?;
    let status_url = format!("/v1/jobs/{job_id}");
    Ok(HttpResponse::Accepted()
        .insert_header(("location", status_url.clone()))
        .json(Accepted {
            job_id,
            status: domain::JobStatus::Pending,
            status_url,
        }))
}

/// A job of the caller (another user's or an unknown id: 404).
#[utoipa::path(get, path = "/v1/jobs/{job_id}", tag = "jobs", security(("access_key" = [])),
    params(("job_id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    holder: KeyHolder,
    job_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(jobs::get(&state, holder.user_id, &job_id).await?))
}

/// The caller's jobs, newest first; `result` is always null here (GET /v1/jobs/{job_id} has it).
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("access_key" = [])),
    params(ListQuery), responses((status = 200, body = ListResponse<JobView>)))]
pub async fn list(
    state: web::Data<AppState>,
    holder: KeyHolder,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let list = jobs::list(&state, Some(holder.user_id), page).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |(job, model)| {
            Ok(persistence::jobs::summary(&job, &model))
        })?),
    )
}

/// Every job, optionally of one user; `result` is always null here.
#[utoipa::path(get, path = "/v1/admin/jobs", tag = "admin", security(("token" = [])),
    params(AdminListQuery), responses((status = 200, body = ListResponse<JobView>)))]
pub async fn admin_list(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<AdminListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let list = jobs::list(&state, query.user_id, page).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |(job, model)| {
            Ok(persistence::jobs::summary(&job, &model))
        })?),
    )
}

//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    admin, auth, chat, console, health, jobs, limits, me, messages, models, orders,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "AI PaaS gateway", description = "Register LLM providers and models, top up a balance, and call any model with an OpenAI client; every call billed exactly once."),
    paths(
        health::healthz, health::readyz, health::metrics, console::page, console::asset,
        auth::register, auth::login, auth::logout, auth::change_password,
        me::me, me::create_access_key, me::list_access_keys, me::revoke_access_key,
        me::rotate_webhook_secret, me::webhook_secret,
        me::create_order, me::list_orders, me::ledger, me::usage, me::spend,
        orders::complete, orders::fail, orders::payment_callback,
        admin::list_users, admin::create_user, admin::get_user, admin::update_user,
        admin::disable_user, admin::adjust_balance,
        admin::list_providers, admin::create_provider, admin::get_provider,
        admin::update_provider, admin::delete_provider,
        admin::list_provider_keys, admin::create_provider_key, admin::update_provider_key,
        admin::delete_provider_key, admin::test_provider_key,
        admin::list_models, admin::create_model, admin::get_model, admin::update_model,
        admin::delete_model,
        admin::list_model_routes, admin::create_model_route, admin::update_model_route,
        admin::delete_model_route,
        admin::list_orders, admin::list_usage_logs, admin::list_overruns, admin::overview,
        models::list, chat::completions, chat::respond, chat::embed, messages::create,
        jobs::submit_image, jobs::get, jobs::list, jobs::admin_list,
        limits::update_own_access_key, limits::list_user_access_keys,
        limits::create_user_access_key, limits::update_access_key, limits::get_user_limits,
        limits::set_user_limits, limits::get_model_limits, limits::set_model_limits,
        limits::get_platform_limits, limits::set_platform_limits,
    ),
    modifiers(&SecuritySchemes, &ErrorResponses),
)]
pub struct ApiDoc;

/// Every documented path as its segments (`{...}` matches any one segment), with its methods.
static ROUTES: std::sync::LazyLock<Vec<(Vec<String>, Vec<&'static str>)>> =
    std::sync::LazyLock::new(|| {
        ApiDoc::openapi()
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let methods = [
                    ("GET", item.get.is_some()),
                    ("HEAD", item.get.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("PATCH", item.patch.is_some()),
                    ("DELETE", item.delete.is_some()),
                ];
                let segments = path.split('/').map(str::to_owned).collect();
                let methods = methods.iter().filter(|m| m.1).map(|m| m.0).collect();
                (segments, methods)
            })
            .collect()
    });

/// The methods the API takes on `path` (empty when it is none of the API's paths). A literal
/// path wins over a template it also fits (`/v1/jobs/image-generation` is not a job id).
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    let fits = |pattern: &[String], templates: bool| {
        pattern.len() == segments.len()
            && pattern.iter().zip(&segments).all(|(p, s)| {
                p == s || (templates && p.starts_with('{') && p.ends_with('}') && !s.is_empty())
            })
    };
    let matching = |templates: bool| -> Vec<&'static str> {
        ROUTES
            .iter()
            .filter(|(pattern, _)| fits(pattern, templates))
            .flat_map(|(_, methods)| methods.iter().copied())
            .collect()
    };
    let mut allowed = matching(false);
    if allowed.is_empty() {
        allowed = matching(true);
    }
    allowed.sort_unstable();
    allowed.dedup();
    allowed
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The access_token from POST /v1/auth/login"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "access_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access key sk-... (or the ACCESS-KEY or x-api-key header)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The errors of API.md's conventions that an operation can answer whatever its own annotation
/// lists, added to each operation that does not describe that status itself (found missing by
/// schemathesis, docs/SECURITY.md): 400 for a malformed query, path or body (or a body that is
/// not JSON), 401 and 403 with a credential, 404 with a path parameter, 413 with a body, and 503
/// (the database unavailable or every connection busy) wherever a credential or a body is read.
struct ErrorResponses;

impl ErrorResponses {
    fn add(operation: &mut Operation, status: &str, description: &str) {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build(),
                )
            });
    }
}

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_parameter = path.contains('{');
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let has_query = operation.parameters.iter().flatten().any(
                    |p| matches!(p, RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Query)),
                );
                let has_body = operation.request_body.is_some();
                let has_credential = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                if has_body || has_query || has_path_parameter {
                    Self::add(operation, "400", "A malformed path, query or body");
                }
                if has_credential {
                    Self::add(operation, "401", "A missing, invalid or expired credential");
                    Self::add(operation, "403", "A credential not allowed here");
                }
                if has_path_parameter {
                    Self::add(operation, "404", "No such object (or another user's)");
                }
                if has_body {
                    Self::add(operation, "413", "The body is over the size limit");
                }
                if has_credential || has_body {
                    Self::add(
                        operation,
                        "503",
                        "The database is unavailable or busy; retry",
                    );
                }
            }
        }
    }
}

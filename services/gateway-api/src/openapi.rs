//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
        me::create_order, me::list_orders, me::ledger, me::usage,
        orders::complete, orders::payment_callback,
        admin::list_users, admin::create_user, admin::get_user, admin::update_user,
        admin::disable_user, admin::adjust_balance,
        admin::list_providers, admin::create_provider, admin::get_provider,
        admin::update_provider, admin::delete_provider,
        admin::list_provider_keys, admin::create_provider_key, admin::update_provider_key,
        admin::delete_provider_key,
        admin::list_models, admin::create_model, admin::get_model, admin::update_model,
        admin::delete_model,
        admin::list_model_routes, admin::create_model_route, admin::update_model_route,
        admin::delete_model_route,
        admin::list_orders, admin::list_usage_logs, admin::list_overruns,
        models::list, chat::completions, chat::respond, chat::embed, messages::create,
        jobs::submit_image, jobs::get, jobs::list, jobs::admin_list,
        limits::update_own_access_key, limits::list_user_access_keys,
        limits::create_user_access_key, limits::update_access_key, limits::get_user_limits,
        limits::set_user_limits, limits::get_model_limits, limits::set_model_limits,
        limits::get_platform_limits, limits::set_platform_limits,
    ),
    modifiers(&SecuritySchemes),
)]
pub struct ApiDoc;

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

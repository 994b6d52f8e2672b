//! HTTP handlers: each extracts input, calls a `core` function, and shapes the response.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod console;
pub mod health;
pub mod jobs;
pub mod limits;
pub mod me;
pub mod messages;
pub mod models;
pub mod orders;

use actix_web::web;

/// The model calls, mounted at the root ahead of every other route: actix-web tries routes in
/// the order they are registered, and the many admin routes with path parameters are matched
/// by regular expressions, which every call would otherwise try (3.6% of gateway-api's CPU
/// under load in a profile) before reaching its own. Their answers are not compressed (see
/// `startup`).
pub fn configure_model_calls(cfg: &mut web::ServiceConfig) {
    chat::configure(cfg);
    messages::configure(cfg);
}

/// Every other API route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
    auth::configure(cfg);
    me::configure(cfg);
    limits::configure(cfg);
    orders::configure(cfg);
    admin::configure(cfg);
    models::configure(cfg);
    jobs::configure(cfg);
    console::configure(cfg);
}

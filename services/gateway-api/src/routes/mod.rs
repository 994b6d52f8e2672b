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

/// Every API route, mounted at the root.
pub fn configure(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
    auth::configure(cfg);
    me::configure(cfg);
    limits::configure(cfg);
    orders::configure(cfg);
    admin::configure(cfg);
    models::configure(cfg);
    chat::configure(cfg);
    messages::configure(cfg);
    jobs::configure(cfg);
    console::configure(cfg);
}

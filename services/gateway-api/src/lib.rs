//! gateway-api: the REST API (identity, admin catalog, orders, model calls and jobs).

pub mod auth;
pub mod core;
pub mod error;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod secrets;
pub mod settings;
pub mod startup;
pub mod state;
pub mod views;

pub use settings::Settings;
pub use startup::Application;

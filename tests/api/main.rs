//! End-to-end HTTP tests of gateway-api: the real app on port 0, a fresh Postgres database each.

#![allow(clippy::unwrap_used)]

mod abuse;
mod anthropic;
mod attacks;
mod bad_input;
mod catalog;
mod chat;
mod console;
mod console_data;
mod embeddings;
mod health;
mod hostile_text;
mod identity;
mod jobs;
mod leases;
mod lifecycle;
mod limits;
mod messages;
mod observability;
mod orders;
mod overruns;
mod pricing;
mod responses;
mod routes;
mod schemathesis;
mod sdk;
mod webhooks;

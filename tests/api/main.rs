//! End-to-end HTTP tests of gateway-api: the real app on port 0, a fresh Postgres database each.

#![allow(clippy::unwrap_used)]

mod abuse;
mod anthropic;
mod attacks;
mod bad_input;
mod catalog;
mod chat;
mod health;
mod hostile_text;
mod identity;
mod jobs;
mod leases;
mod lifecycle;
mod observability;
mod orders;
mod overruns;
mod sdk;

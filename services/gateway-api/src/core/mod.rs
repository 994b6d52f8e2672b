//! The gateway's use cases; route handlers only extract input and call these.

pub mod access_keys;
pub mod admission;
pub mod billing;
pub mod call;
pub mod catalog;
pub mod chat;
pub mod embeddings;
pub mod identity;
pub mod jobs;
pub mod limits;
pub mod messages;
pub mod orders;
pub mod responses;
pub mod statistics;
pub mod throttle;
pub mod tokens;
pub mod users;
pub mod webhook_secrets;

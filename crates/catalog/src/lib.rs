//! The call path's view of the admin catalog, shared by gateway-api and invocation-worker:
//! models with their pricing and provider, the providers' key pools, and the encryption of
//! provider keys at rest.

mod routing;
mod secret_box;

pub use routing::{ProviderRoute, Route, Routing, with_provider_failover};
pub use secret_box::{SecretBox, SecretError, key_hint};

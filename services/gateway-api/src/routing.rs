//! The call path's view of the catalog: public model name → model, pricing and provider, plus
//! the providers' key pools, held in memory and reloaded from Postgres.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use domain::{ModelKind, Pricing};
use persistence::Pool;
use upstream::{KeyPool, ProviderKey};

use crate::error::ApiError;
use crate::secrets::SecretBox;

/// A model a call can be routed to.
#[derive(Debug, Clone)]
pub struct Route {
    pub model_id: i64,
    pub name: String,
    pub upstream_model: String,
    pub kind: ModelKind,
    pub pricing: Pricing,
    pub max_output_tokens: u32,
    pub provider_id: i64,
    pub base_url: String,
}

pub struct Routing {
    routes: RwLock<Arc<HashMap<String, Arc<Route>>>>,
    pub keys: KeyPool,
}

impl Routing {
    pub fn new(keys: KeyPool) -> Routing {
        Routing {
            routes: RwLock::new(Arc::new(HashMap::new())),
            keys,
        }
    }

    /// The enabled model of an enabled provider with this public name.
    pub fn route(&self, model: &str) -> Option<Arc<Route>> {
        let routes = match self.routes.read() {
            Ok(routes) => Arc::clone(&routes),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        routes.get(model).cloned()
    }

    /// Reloads models and keys; a model whose stored pricing does not parse is skipped (logged).
    pub async fn reload(&self, pool: &Pool, secrets: &SecretBox) -> Result<(), ApiError> {
        let mut conn = pool.get().await.map_err(persistence::StoreError::from)?;
        let rows = persistence::catalog::load_routes(&mut conn).await?;
        let keys = persistence::catalog::load_enabled_keys(&mut conn).await?;
        drop(conn);

        let mut routes = HashMap::with_capacity(rows.len());
        for (model, provider) in rows {
            if !model.enabled || !provider.enabled {
                continue;
            }
            let (Ok(kind), Ok(pricing)) = (
                model.kind.parse::<ModelKind>(),
                serde_json::from_value::<Pricing>(model.pricing.clone()),
            ) else {
                tracing::error!(model = %model.name, "unreadable kind or pricing; model skipped");
                continue;
            };
            routes.insert(
                model.name.clone(),
                Arc::new(Route {
                    model_id: model.id,
                    name: model.name,
                    upstream_model: model.upstream_model,
                    kind,
                    pricing,
                    max_output_tokens: u32::try_from(model.max_output_tokens).unwrap_or(1),
                    provider_id: provider.id,
                    base_url: provider.base_url,
                }),
            );
        }

        let mut by_provider: HashMap<i64, Vec<ProviderKey>> = HashMap::new();
        for key in keys {
            match secrets.open(&key.secret_ciphertext) {
                Ok(secret) => by_provider
                    .entry(key.provider_id)
                    .or_default()
                    .push(ProviderKey {
                        id: key.id,
                        secret,
                        weight: u32::try_from(key.weight).unwrap_or(0),
                    }),
                Err(error) => tracing::error!(key_id = key.id, %error, "provider key skipped"),
            }
        }
        let provider_ids: Vec<i64> = routes.values().map(|r| r.provider_id).collect();
        for provider_id in provider_ids {
            by_provider.entry(provider_id).or_default();
        }
        for (provider_id, keys) in by_provider {
            self.keys.replace_keys(provider_id, keys);
        }
        match self.routes.write() {
            Ok(mut current) => *current = Arc::new(routes),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(routes),
        }
        Ok(())
    }
}

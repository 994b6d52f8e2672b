//! Public model name (and model id) → model, pricing and provider, plus the providers' key
//! pools, held in memory and reloaded from Postgres.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use domain::{ModelKind, Pricing, ProviderKind};
use persistence::Pool;
use upstream::{KeyPool, ProviderKey, Target};

use persistence::StoreError;

use crate::SecretBox;

/// A model a call can be routed to.
#[derive(Debug, Clone)]
pub struct Route {
    pub model_id: i64,
    pub name: String,
    pub upstream_model: String,
    pub kind: ModelKind,
    pub pricing: Pricing,
    pub max_output_tokens: u32,
    /// Prompt tokens one image part may cost (sizes the hold).
    pub image_input_tokens: u32,
    pub provider_id: i64,
    pub provider_kind: ProviderKind,
    pub base_url: String,
}

impl Route {
    /// Where a call of this model goes with the provider key `secret`.
    pub fn target(&self, secret: &str) -> Target {
        Target {
            kind: self.provider_kind,
            base_url: self.base_url.clone(),
            api_key: secret.to_owned(),
            upstream_model: self.upstream_model.clone(),
            public_model: self.name.clone(),
        }
    }
}

/// Routes by public name and by model id, swapped whole on each reload.
#[derive(Default)]
struct Routes {
    by_name: HashMap<String, Arc<Route>>,
    by_id: HashMap<i64, Arc<Route>>,
}

pub struct Routing {
    routes: RwLock<Arc<Routes>>,
    pub keys: KeyPool,
}

impl Routing {
    pub fn new(keys: KeyPool) -> Routing {
        Routing {
            routes: RwLock::new(Arc::new(Routes::default())),
            keys,
        }
    }

    fn current(&self) -> Arc<Routes> {
        match self.routes.read() {
            Ok(routes) => Arc::clone(&routes),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The enabled model of an enabled provider with this public name.
    pub fn route(&self, model: &str) -> Option<Arc<Route>> {
        self.current().by_name.get(model).cloned()
    }

    /// The same, by model id (jobs remember the id).
    pub fn route_by_id(&self, model_id: i64) -> Option<Arc<Route>> {
        self.current().by_id.get(&model_id).cloned()
    }

    /// Reloads models and keys; a model whose stored pricing does not parse is skipped (logged).
    pub async fn reload(&self, pool: &Pool, secrets: &SecretBox) -> Result<(), StoreError> {
        let mut conn = pool.get().await?;
        let rows = persistence::catalog::load_routes(&mut conn).await?;
        let keys = persistence::catalog::load_enabled_keys(&mut conn).await?;
        drop(conn);

        let mut routes = Routes::default();
        for (model, provider) in rows {
            if !model.enabled || !provider.enabled {
                continue;
            }
            let (Ok(kind), Ok(pricing), Ok(provider_kind)) = (
                model.kind.parse::<ModelKind>(),
                serde_json::from_value::<Pricing>(model.pricing.clone()),
                provider.kind.parse::<ProviderKind>(),
            ) else {
                tracing::error!(model = %model.name, "unreadable kind or pricing; model skipped");
                continue;
            };
            if !provider_kind.serves(kind) {
                tracing::error!(model = %model.name, %provider_kind, %kind, "provider cannot serve the model; model skipped");
                continue;
            }
            let route = Arc::new(Route {
                model_id: model.id,
                name: model.name,
                upstream_model: model.upstream_model,
                kind,
                pricing,
                max_output_tokens: u32::try_from(model.max_output_tokens).unwrap_or(1),
                image_input_tokens: u32::try_from(model.image_input_tokens).unwrap_or(1),
                provider_id: provider.id,
                provider_kind,
                base_url: provider.base_url,
            });
            routes.by_id.insert(route.model_id, Arc::clone(&route));
            routes.by_name.insert(route.name.clone(), route);
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
        let provider_ids: Vec<i64> = routes.by_id.values().map(|r| r.provider_id).collect();
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

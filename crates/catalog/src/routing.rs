//! Public model name (and model id) → model, pricing and the providers that serve it, plus the
//! providers' key pools, held in memory and reloaded from Postgres; and the failover of a call
//! across those providers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use std::future::Future;

use domain::{ModelKind, Pricing, ProviderKind};
use persistence::Pool;
use upstream::{KeyPool, ProviderKey, Target, UpstreamError, with_failover};

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
    /// The model's own provider (its first route).
    pub provider_id: i64,
    pub provider_kind: ProviderKind,
    pub base_url: String,
    /// The other providers serving the model (enabled routes of enabled providers that can
    /// serve its kind).
    pub alternatives: Vec<ProviderRoute>,
}

/// One provider serving a model, under its upstream name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRoute {
    pub provider_id: i64,
    pub provider_kind: ProviderKind,
    pub base_url: String,
    pub upstream_model: String,
    /// Routes are tried by descending priority.
    pub priority: i32,
    /// Routes of one priority are tried in an order drawn by weight (0: last).
    pub weight: u32,
}

impl ProviderRoute {
    /// Where a call of `public_model` goes through this provider with the key `secret`.
    pub fn target(&self, public_model: &str, secret: &str) -> Target {
        Target {
            kind: self.provider_kind,
            base_url: self.base_url.clone(),
            api_key: secret.to_owned(),
            upstream_model: self.upstream_model.clone(),
            public_model: public_model.to_owned(),
        }
    }
}

impl Route {
    /// Where a call of this model goes through its own provider with the key `secret`.
    pub fn target(&self, secret: &str) -> Target {
        self.primary().target(&self.name, secret)
    }

    /// The model's own provider, as a route of priority 0 and weight 1.
    pub fn primary(&self) -> ProviderRoute {
        ProviderRoute {
            provider_id: self.provider_id,
            provider_kind: self.provider_kind,
            base_url: self.base_url.clone(),
            upstream_model: self.upstream_model.clone(),
            priority: 0,
            weight: 1,
        }
    }

    /// Every provider route in the order one call tries them: by descending priority, and
    /// routes of equal priority in an order drawn by weight.
    pub fn providers(&self) -> Vec<ProviderRoute> {
        let mut left: Vec<ProviderRoute> = std::iter::once(self.primary())
            .chain(self.alternatives.iter().cloned())
            .collect();
        // Stable: equal priorities keep their order for the draws below.
        left.sort_by_key(|route| std::cmp::Reverse(route.priority));
        let mut ordered = Vec::with_capacity(left.len());
        while let Some(priority) = left.first().map(|route| route.priority) {
            let group = left.iter().take_while(|r| r.priority == priority).count();
            let total: u64 = left[..group].iter().map(|r| u64::from(r.weight)).sum();
            let pick = if total == 0 {
                0 // only weight-0 routes are left: in their order
            } else {
                let mut point = fastrand::u64(0..total);
                left[..group]
                    .iter()
                    .position(|route| {
                        let weight = u64::from(route.weight);
                        let hit = point < weight;
                        point = point.saturating_sub(weight);
                        hit
                    })
                    .unwrap_or(0)
            };
            ordered.push(left.remove(pick));
        }
        ordered
    }
}

/// Runs `call` through the providers of `routes` in order, each with key failover (up to
/// `max_attempts` keys), and goes on to the next provider when one fails as a provider (its
/// keys refused, rate-limited, failed or timed out, none was available, or it answered
/// nonsense); a refusal of the request itself is answered at once. For a streaming call,
/// `call` resolves once the provider answered its headers, so no byte reached the client yet.
pub async fn with_provider_failover<T, F, Fut>(
    keys: &KeyPool,
    routes: &[ProviderRoute],
    public_model: &str,
    max_attempts: u32,
    mut call: F,
) -> Result<T, UpstreamError>
where
    F: FnMut(Target) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let mut last_error = UpstreamError::NoKeyAvailable;
    for (i, route) in routes.iter().enumerate() {
        if i > 0 {
            metrics::counter!("upstream_provider_failovers_total", "provider" => route.provider_id.to_string())
                .increment(1);
        }
        let result = with_failover(keys, route.provider_id, max_attempts, |key| {
            call(route.target(public_model, key.secret()))
        })
        .await;
        match result {
            Ok(value) => return Ok(value),
            Err(error) if error.is_provider_failure() => {
                tracing::warn!(provider_id = route.provider_id, %error, "provider failed; trying the model's next provider");
                last_error = error;
            }
            Err(error) => return Err(error),
        }
    }
    Err(last_error)
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
        let extra = persistence::catalog::load_enabled_model_routes(&mut conn).await?;
        let keys = persistence::catalog::load_enabled_keys(&mut conn).await?;
        drop(conn);
        let mut alternatives: HashMap<i64, Vec<(ProviderRoute, String)>> = HashMap::new();
        for (route, provider) in extra {
            let Ok(provider_kind) = provider.kind.parse::<ProviderKind>() else {
                tracing::error!(route = route.id, "unreadable provider kind; route skipped");
                continue;
            };
            alternatives.entry(route.model_id).or_default().push((
                ProviderRoute {
                    provider_id: provider.id,
                    provider_kind,
                    base_url: provider.base_url,
                    upstream_model: route.upstream_model,
                    priority: route.priority,
                    weight: u32::try_from(route.weight).unwrap_or(0),
                },
                provider.name,
            ));
        }

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
            let alternatives = alternatives
                .remove(&model.id)
                .into_iter()
                .flatten()
                .filter(|(route, provider)| {
                    let serves = route.provider_kind.serves(kind);
                    if !serves {
                        tracing::error!(model = %model.name, %provider, "provider cannot serve the model; route skipped");
                    }
                    serves
                })
                .map(|(route, _)| route)
                .collect();
            let route = Arc::new(Route {
                alternatives,
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
        let provider_ids: Vec<i64> = routes
            .by_id
            .values()
            .flat_map(|r| {
                std::iter::once(r.provider_id).chain(r.alternatives.iter().map(|a| a.provider_id))
            })
            .collect();
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn provider(provider_id: i64, priority: i32, weight: u32) -> ProviderRoute {
        ProviderRoute {
            provider_id,
            provider_kind: ProviderKind::OpenAi,
            base_url: format!("http://p{provider_id}/v1"),
            upstream_model: format!("up-{provider_id}"),
            priority,
            weight,
        }
    }

    fn route(alternatives: Vec<ProviderRoute>) -> Route {
        Route {
            model_id: 1,
            name: "public".to_owned(),
            upstream_model: "up-1".to_owned(),
            kind: ModelKind::Chat,
            pricing: Pricing::default(),
            max_output_tokens: 16,
            image_input_tokens: 1,
            provider_id: 1,
            provider_kind: ProviderKind::OpenAi,
            base_url: "http://p1/v1".to_owned(),
            alternatives,
        }
    }

    fn order(route: &Route) -> Vec<i64> {
        route.providers().iter().map(|p| p.provider_id).collect()
    }

    #[test]
    fn higher_priorities_are_tried_first_and_weight_zero_last() {
        let route = route(vec![
            provider(2, -1, 5),
            provider(3, 7, 1),
            provider(4, 0, 0),
        ]);
        for _ in 0..50 {
            assert_eq!(order(&route), vec![3, 1, 4, 2]);
        }
        let target = route.providers()[0].target("public", "sk");
        assert_eq!(target.upstream_model, "up-3");
        assert_eq!(target.public_model, "public");
    }

    #[test]
    fn equal_priorities_are_drawn_by_weight() {
        // The model's own provider has weight 1; provider 2 has 3: first about 3 times in 4.
        let route = route(vec![provider(2, 0, 3)]);
        let draws = 4_000;
        let first = (0..draws).filter(|_| order(&route)[0] == 2).count();
        assert!((2_700..=3_300).contains(&first), "{first} of {draws}");
        assert!((0..100).all(|_| order(&route).len() == 2));
    }

    #[tokio::test]
    async fn a_failed_provider_passes_the_call_to_the_next_but_a_refused_request_does_not() {
        let keys = KeyPool::new(&upstream::UpstreamSettings::default());
        for provider_id in 1..=3 {
            keys.replace_keys(
                provider_id,
                vec![ProviderKey {
                    id: provider_id,
                    secret: format!("sk-{provider_id}"),
                    weight: 1,
                }],
            );
        }
        let routes = vec![provider(1, 0, 1), provider(2, 0, 1), provider(3, 0, 1)];
        let tried = std::sync::Mutex::new(Vec::new());
        let answer = with_provider_failover(&keys, &routes, "public", 1, |target| {
            tried.lock().unwrap().push(target.upstream_model.clone());
            async move {
                match target.upstream_model.as_str() {
                    "up-1" => Err(UpstreamError::Server { status: 503 }),
                    _ => Ok(target.api_key),
                }
            }
        })
        .await;
        assert_eq!(answer.unwrap(), "sk-2");
        assert_eq!(*tried.lock().unwrap(), ["up-1", "up-2"]);

        let refused = with_provider_failover(&keys, &routes[1..], "public", 1, |_| async {
            Err::<(), _>(UpstreamError::BadRequest {
                status: 400,
                body: String::new(),
            })
        })
        .await;
        assert!(matches!(refused, Err(UpstreamError::BadRequest { .. })));
    }
}

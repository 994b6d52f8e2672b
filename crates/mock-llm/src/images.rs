//! `POST /v1/images/generations`: n placeholder image URLs.

use std::borrow::Cow;

use actix_web::HttpResponse;
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use crate::chat::unix_now;
use crate::config::MockConfig;
use crate::error::MockError;
use crate::faults::{self, Directives};

const MAX_IMAGES: u32 = 10;

/// `model` and `size` are accepted and ignored.
#[derive(Deserialize)]
struct ImageRequest<'a> {
    #[serde(borrow)]
    prompt: Cow<'a, str>,
    #[serde(default)]
    n: Option<u32>,
}

pub(crate) async fn generate(
    config: &MockConfig,
    key: &str,
    body: &[u8],
) -> Result<HttpResponse, MockError> {
    faults::before_answer(config, key).await?;
    let request: ImageRequest = serde_json::from_slice(body)
        .map_err(|error| MockError::InvalidRequest(format!("invalid request body: {error}")))?;
    let n = request.n.unwrap_or(1);
    if !(1..=MAX_IMAGES).contains(&n) {
        return Err(MockError::InvalidRequest(format!(
            "{n} is not a valid 'n': it must be between 1 and {MAX_IMAGES}"
        )));
    }
    let mut directives = Directives::default();
    directives.scan(&request.prompt);
    directives.apply().await?;

    Ok(HttpResponse::Ok().json(Images {
        created: unix_now(),
        data: (0..n)
            .map(|_| Image {
                url: ImageUrl(Uuid::new_v4()),
            })
            .collect(),
    }))
}

#[derive(Serialize)]
struct Images {
    created: u64,
    data: Vec<Image>,
}

#[derive(Serialize)]
struct Image {
    url: ImageUrl,
}

struct ImageUrl(Uuid);

impl Serialize for ImageUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("https://mock.invalid/img/{}.png", self.0))
    }
}

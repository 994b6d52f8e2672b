//! The web console: a small single-page app (plain HTML, CSS and ES modules, no build step)
//! embedded in the binary and served from the same origin as the API it calls.
//!
//! `GET /` answers the page (never cached, so a new binary's console is seen at once); its
//! assets live under `/console/<digest>/`, where the digest is of every asset's bytes, so they
//! are cached for good and a changed console gets new URLs. Anything else under `/console/`
//! is the API's JSON 404.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use crate::error::ApiError;

/// Every asset of the console: (file name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/api.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/ui.js"),
    ),
    (
        "user.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/user.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/admin.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../console/favicon.svg"),
    ),
];

const INDEX: &str = include_str!("../../console/index.html");

/// Scripts and styles come from this origin only; no inline script, no framing. Images may also
/// come from https (a job's results are at its provider's URLs).
const CSP: &str = "default-src 'self'; img-src 'self' data: https:; object-src 'none'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// FNV-1a over every asset, in hex: the assets' URL prefix.
static DIGEST: LazyLock<String> = LazyLock::new(|| {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, _, bytes) in ASSETS {
        for byte in name.as_bytes().iter().chain(bytes.iter()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
});

/// The page, with its asset URLs pointing at this build's digest.
static PAGE: LazyLock<String> = LazyLock::new(|| INDEX.replace("{{ASSETS}}", &asset_base()));

fn asset_base() -> String {
    format!("/console/{}", *DIGEST)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page))
        .route("/console/{digest}/{file}", web::get().to(asset));
}

/// The web console's page (HTML; its scripts call this API with a login token).
#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "The console's HTML page", content_type = "text/html")))]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(PAGE.as_str())
}

/// One asset of the console (script, style, icon) of this build, cached for good; another
/// build's digest or an unknown file is a 404.
#[utoipa::path(get, path = "/console/{digest}/{file}", tag = "console",
    params(("digest" = String, Path, description = "this build's asset digest, as the page names it"),
        ("file" = String, Path, description = "the asset's file name")),
    responses((status = 200, description = "The asset"),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn asset(path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (digest, file) = path.into_inner();
    let found = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .filter(|_| digest == *DIGEST);
    let Some((_, content_type, bytes)) = found else {
        return Err(ApiError::NotFound("no such console file".to_owned()));
    };
    Ok(HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(*bytes))
}

#[cfg(test)]
mod tests {
    use super::{ASSETS, PAGE, asset_base};

    #[test]
    fn the_page_points_at_every_script_it_loads_under_this_builds_digest() {
        assert!(PAGE.contains(&format!("{}/app.js", asset_base())));
        assert!(!PAGE.contains("{{ASSETS}}"));
        assert!(ASSETS.iter().all(|(_, _, bytes)| !bytes.is_empty()));
    }

    /// The budget is ~200 KB of compressed script for the first page; the whole
    /// console's script, uncompressed, is kept well under it.
    #[test]
    fn the_whole_console_script_stays_small() {
        let script: usize = ASSETS
            .iter()
            .filter(|(_, content_type, _)| content_type.starts_with("text/javascript"))
            .map(|(_, _, bytes)| bytes.len())
            .sum();
        assert!(script < 100_000, "{script} bytes of script");
    }
}

//! gateway-api binary: `gateway-api` serves until SIGINT/SIGTERM; `gateway-api migrate` applies
//! the schema migrations and exits.

use gateway_api::{Application, Settings};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Loaded first: it says which runtime to build (multi-thread even with one worker: the
    // migrations block in place).
    let settings = Settings::load()?;
    runtime::threads::multi_thread(settings.runtime_threads)?.block_on(run(settings))
}

async fn run(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    runtime::telemetry::init("gateway-api", settings.log_format);
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let pool = persistence::build_pool(&settings.database)?;
        persistence::run_migrations(&pool).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let app = Application::build(settings).await?;
    tracing::info!(port = app.port(), "gateway-api listening");
    app.run_until_stopped().await?;
    Ok(())
}

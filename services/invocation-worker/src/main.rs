//! Entry point: settings, telemetry, metrics, build, run until SIGINT/SIGTERM.

use invocation_worker::{Application, Settings};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Loaded first: it says which runtime to build.
    let settings = Settings::load()?;
    settings.runtime()?.block_on(run(settings))
}

async fn run(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    runtime::telemetry::init("invocation-worker", settings.worker.log_format);
    runtime::metrics::install()?;
    let grace = settings.worker.shutdown_grace();
    let app = Application::build(settings).await?;
    runtime::shutdown::with_grace(grace, runtime::shutdown::signal(), |stop| {
        app.run_until(stop)
    })
    .await??;
    Ok(())
}

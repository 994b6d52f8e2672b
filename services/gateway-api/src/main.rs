//! gateway-api binary: settings, tracing, build, serve until SIGINT/SIGTERM.

use gateway_api::{Application, Settings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::load()?;
    runtime::telemetry::init("gateway-api", settings.log_format);
    let app = Application::build(settings).await?;
    tracing::info!(port = app.port(), "gateway-api listening");
    app.run_until_stopped().await?;
    Ok(())
}

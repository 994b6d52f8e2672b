//! `mock-llm`: serves the mock OpenAI API (and Anthropic's Messages API) until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use mock_llm::{CliArgs, CliError};
use runtime::telemetry::LogFormat;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match CliArgs::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(CliError::Help) => {
            println!("{}", CliError::Help);
            return ExitCode::SUCCESS;
        }
        Err(invalid) => {
            eprintln!("{invalid}");
            return ExitCode::from(2);
        }
    };
    runtime::telemetry::init("mock-llm", LogFormat::Pretty);
    let server = match mock_llm::start_with_workers(
        args.config,
        &args.host,
        args.port,
        args.workers,
    )
    .await
    {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, host = %args.host, port = args.port, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(base_url = %server.base_url(), workers = args.workers, config = ?args.config, "mock-llm listening");
    runtime::shutdown::signal().await;
    server.stop().await;
    tracing::info!("mock-llm stopped");
    ExitCode::SUCCESS
}

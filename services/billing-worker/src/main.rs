//! Entry point: settings, telemetry, metrics, build, run until SIGINT/SIGTERM.
//! `billing-worker reconcile` checks every balance and charged usage against the ledger and
//! exits non-zero on a mismatch.

use billing_worker::{Application, Settings};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::load()?;
    runtime::telemetry::init("billing-worker", settings.worker.log_format);
    if std::env::args().nth(1).as_deref() == Some("reconcile") {
        let mismatches = billing_worker::reconcile(&settings).await?;
        for m in &mismatches {
            eprintln!(
                "user {}: balance {} vs ledger {}; held {} vs open holds {}; usage charged {} vs ledger charges {}; {} charge rows unlike their usage rows",
                m.user_id,
                m.balance,
                m.ledger_sum,
                m.held,
                m.open_holds,
                m.usage_cost,
                m.ledger_charges,
                m.unmatched_charge_rows
            );
        }
        if !mismatches.is_empty() {
            std::process::exit(1);
        }
        println!(
            "reconcile: every balance equals its ledger, every hold total its open holds and leases, every user's charged usage its ledger charges, and every charge row the usage rows naming it"
        );
        return Ok(());
    }
    runtime::metrics::install()?;
    let grace = settings.worker.shutdown_grace();
    let app = Application::build(settings).await?;
    runtime::shutdown::with_grace(grace, runtime::shutdown::signal(), |stop| {
        app.run_until(stop)
    })
    .await??;
    Ok(())
}

//! Process-wide tracing subscriber: human-readable or JSON lines, filtered by `RUST_LOG`.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// How log lines are written: `pretty` for a terminal, `json` for production log shipping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// Installs the global subscriber; later calls (many apps built in one test process) are no-ops.
pub fn init(service_name: &str, format: LogFormat) {
    // amqprs logs every channel open and close at info: too chatty for operators.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,amqprs=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match format {
        LogFormat::Pretty => builder.try_init().is_ok(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
            .is_ok(),
    };
    if installed {
        tracing::info!(service = service_name, ?format, "telemetry initialised");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        format: LogFormat,
    }

    #[test]
    fn log_format_deserializes_from_lowercase_names() {
        let json: Holder = serde_json::from_str(r#"{"format":"json"}"#).expect("json");
        assert_eq!(json.format, LogFormat::Json);
        let pretty: Holder = serde_json::from_str(r#"{"format":"pretty"}"#).expect("pretty");
        assert_eq!(pretty.format, LogFormat::Pretty);
        assert!(serde_json::from_str::<Holder>(r#"{"format":"xml"}"#).is_err());
    }

    #[test]
    fn init_twice_is_harmless() {
        init("test", LogFormat::Pretty);
        init("test", LogFormat::Json);
    }
}

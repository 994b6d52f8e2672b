//! What the mock does by default (latency, chunk pacing, answer length) and the binary's flags.

/// Behaviour shared by every request; per-request faults come from the key or the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockConfig {
    /// Added before answering any model call.
    pub latency_ms: u64,
    /// Pause between two SSE events of a streamed answer.
    pub stream_chunk_delay_ms: u64,
    /// Words in an answer unless `[[tokens:N]]` or `max_tokens` says otherwise.
    pub completion_tokens: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            stream_chunk_delay_ms: 0,
            completion_tokens: 16,
        }
    }
}

/// The `mock-llm` binary's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliArgs {
    pub host: String,
    pub port: u16,
    /// Actix worker threads; defaults to the number of CPUs.
    pub workers: usize,
    pub config: MockConfig,
}

/// Why the command line gave no [`CliArgs`]; `Display` prints what to tell the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("{USAGE}")]
    Help,
    #[error("{0}\n{USAGE}")]
    Invalid(String),
}

const USAGE: &str = "\
usage: mock-llm [--host 127.0.0.1] [--port 9200] [--workers N] [--latency-ms 0]
                [--stream-chunk-delay-ms 0] [--completion-tokens 16]";

impl CliArgs {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, CliError> {
        let mut parsed = Self {
            host: "127.0.0.1".to_owned(),
            port: 9200,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            config: MockConfig::default(),
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                return Err(CliError::Help);
            }
            let value = args
                .next()
                .ok_or_else(|| CliError::Invalid(format!("{flag} needs a value")))?;
            let invalid = |_| CliError::Invalid(format!("invalid value {value:?} for {flag}"));
            match flag.as_str() {
                "--host" => parsed.host.clone_from(&value),
                "--port" => parsed.port = value.parse().map_err(invalid)?,
                "--workers" => parsed.workers = value.parse().map_err(invalid)?,
                "--latency-ms" => parsed.config.latency_ms = value.parse().map_err(invalid)?,
                "--stream-chunk-delay-ms" => {
                    parsed.config.stream_chunk_delay_ms = value.parse().map_err(invalid)?;
                }
                "--completion-tokens" => {
                    parsed.config.completion_tokens = value.parse().map_err(invalid)?;
                }
                _ => return Err(CliError::Invalid(format!("unknown flag {flag}"))),
            }
        }
        if parsed.workers == 0 {
            return Err(CliError::Invalid("--workers must be at least 1".to_owned()));
        }
        Ok(parsed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<CliArgs, CliError> {
        CliArgs::parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn flags_override_the_defaults() {
        let args = parse(
            "--host 0.0.0.0 --port 0 --workers 3 --latency-ms 7 \
             --stream-chunk-delay-ms 5 --completion-tokens 4",
        )
        .unwrap();
        assert_eq!(args.host, "0.0.0.0");
        assert_eq!(args.port, 0);
        assert_eq!(args.workers, 3);
        assert_eq!(
            args.config,
            MockConfig {
                latency_ms: 7,
                stream_chunk_delay_ms: 5,
                completion_tokens: 4
            }
        );
    }

    #[test]
    fn no_flags_give_the_defaults() {
        let args = parse("").unwrap();
        assert_eq!((args.host.as_str(), args.port), ("127.0.0.1", 9200));
        assert_eq!(args.config, MockConfig::default());
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(parse("--port").is_err());
        assert!(parse("--port abc").is_err());
        assert!(parse("--workers 0").is_err());
        assert!(parse("--colour red").is_err());
        assert_eq!(parse("-h --port 1").unwrap_err(), CliError::Help);
    }
}

//! Layered settings: built-in defaults, then an optional file, then `APP__*` environment variables.

use config::{Config, Environment, File, FileFormat};
use serde::de::DeserializeOwned;

/// Names the optional settings file layered over the built-in defaults.
pub const CONFIG_FILE_ENV: &str = "APP_CONFIG_FILE";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
}

/// Loads `T` from `defaults_toml`, then the file named by `APP_CONFIG_FILE` (if set), then
/// environment variables such as `APP__DATABASE__URL` (for `database.url`).
pub fn load<T: DeserializeOwned>(defaults_toml: &str) -> Result<T, ConfigError> {
    let file = std::env::var(CONFIG_FILE_ENV).ok();
    load_from(defaults_toml, file.as_deref(), Environment::default())
}

pub(crate) fn load_from<T: DeserializeOwned>(
    defaults_toml: &str,
    file: Option<&str>,
    environment: Environment,
) -> Result<T, ConfigError> {
    let mut builder = Config::builder().add_source(File::from_str(defaults_toml, FileFormat::Toml));
    if let Some(path) = file {
        // Named explicitly, so a missing file is an error rather than silently ignored.
        builder = builder.add_source(File::with_name(path).required(true));
    }
    let environment = environment
        .prefix("APP")
        .prefix_separator("__")
        .separator("__")
        // "9101" must become a number for `u16` fields; lists stay off (no list_separator)
        // so a value containing a comma is never split.
        .try_parsing(true);
    Ok(builder.add_source(environment).build()?.try_deserialize()?)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Settings {
        name: String,
        database: Database,
        ops: Ops,
    }

    #[derive(Debug, Deserialize)]
    struct Database {
        url: String,
        pool_max_size: usize,
    }

    #[derive(Debug, Deserialize)]
    struct Ops {
        port: u16,
    }

    const DEFAULTS: &str = r#"
        name = "worker"
        [database]
        url = "postgres://localhost/default"
        pool_max_size = 4
        [ops]
        port = 9101
    "#;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let map: config::Map<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Environment::default().source(Some(map))
    }

    #[test]
    fn defaults_alone_deserialize() {
        let settings: Settings = load_from(DEFAULTS, None, env(&[])).expect("defaults load");
        assert_eq!(settings.name, "worker");
        assert_eq!(settings.database.pool_max_size, 4);
        assert_eq!(settings.ops.port, 9101);
    }

    #[test]
    fn environment_overrides_nested_and_numeric_values() {
        let settings: Settings = load_from(
            DEFAULTS,
            None,
            env(&[
                ("APP__DATABASE__URL", "postgres://db/a,b"),
                ("APP__DATABASE__POOL_MAX_SIZE", "16"),
                ("APP__OPS__PORT", "0"),
                ("APP__NAME", "1234"),
            ]),
        )
        .expect("env overrides load");
        // The comma survives: list parsing is off.
        assert_eq!(settings.database.url, "postgres://db/a,b");
        assert_eq!(settings.database.pool_max_size, 16);
        assert_eq!(settings.ops.port, 0);
        // A numeric-looking value still deserializes into a String field.
        assert_eq!(settings.name, "1234");
    }

    #[test]
    fn file_layer_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("runtime-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("override.toml");
        std::fs::write(&path, "name = \"from-file\"\n[ops]\nport = 7000\n").expect("write file");
        let path = path.to_str().expect("utf-8 path");

        let settings: Settings =
            load_from(DEFAULTS, Some(path), env(&[("APP__OPS__PORT", "7001")])).expect("load");
        assert_eq!(settings.name, "from-file");
        assert_eq!(settings.ops.port, 7001);
        assert_eq!(settings.database.pool_max_size, 4);
    }

    #[test]
    fn a_named_but_missing_file_is_an_error() {
        let result: Result<Settings, _> =
            load_from(DEFAULTS, Some("/nonexistent/app-config.toml"), env(&[]));
        assert!(result.is_err());
    }

    #[test]
    fn a_bad_value_is_an_error() {
        let result: Result<Settings, _> =
            load_from(DEFAULTS, None, env(&[("APP__OPS__PORT", "not-a-port")]));
        assert!(result.is_err());
    }
}

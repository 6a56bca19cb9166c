//! Logging: `tracing` with a human format by default or one JSON object per line
//! (`--log-format json`); the level comes from `-l/--loglevel` (Celery's names) and can be
//! refined with `RUST_LOG`.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Celery's log level names → a tracing filter directive.
pub fn level_directive(level: &str) -> Result<&'static str, String> {
    Ok(match level.to_ascii_uppercase().as_str() {
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" | "FATAL" => "error",
        "TRACE" => "trace",
        other => {
            return Err(format!(
                "unknown log level {other:?} (DEBUG, INFO, WARNING, ERROR, CRITICAL)"
            ));
        }
    })
}

/// Installs the global subscriber. Logs go to stderr, like Celery's.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let directive = level_directive(level)?;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{directive},astroworker={directive}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celery_level_names() {
        assert_eq!(level_directive("warning").unwrap(), "warn");
        assert_eq!(level_directive("CRITICAL").unwrap(), "error");
        assert!(level_directive("loud").is_err());
    }
}

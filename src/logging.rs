//! Log set-up shared by both binaries: human-readable by default, JSON lines for log shippers.
//!
//! Owns the subscriber only. What is logged, and with which fields (`havip`, `master`, `epoch`,
//! `failover_id`), is decided where the events happen. Logs go to stderr; stdout is for command output.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: use \"human\" or \"json\""
            )),
        }
    }
}

/// The filter used when `HAVIP_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,havip_agent=info";

/// Installs the global subscriber. `HAVIP_LOG` (an `EnvFilter` directive such as `debug` or
/// `havip_agent=trace`) overrides the default level. Calling it twice is harmless.
pub fn init(format: LogFormat) {
    init_with_default(format, DEFAULT_FILTER)
}

/// [`init`] with another default filter (the demo prints its own timeline and keeps logs to warnings).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env("HAVIP_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

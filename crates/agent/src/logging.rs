//! Log set-up shared by both binaries: human-readable by default, JSON lines for log shippers.
//!
//! Owns the subscriber and how its lines fit where stderr goes ([`Sink`]): colour only on a terminal and
//! never with `NO_COLOR`; under systemd (stderr is the journal stream `JOURNAL_STREAM` names) each line
//! starts with its syslog priority (`<3>` error .. `<7>` debug, sd-daemon(3)) and carries no timestamp,
//! because the journal keeps its own. What is logged, and with which fields (`havip`, `master`, `epoch`,
//! `failover_id`), is decided where the events happen. Logs go to stderr; stdout is for command output.

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::str::FromStr;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The names `FromStr` accepts, for the binaries' `--log-format`.
    pub const NAMES: [&str; 2] = ["human", "json"];
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

/// An error and its causes on one line, `outer: cause: cause`, skipping a cause whose text the line already
/// carries (many errors here print their source inline, so a plain chain would say it twice).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The filter used when `HAVIP_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,havip_agent=info";

/// Where stderr goes, as far as the log lines care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// A terminal, and `NO_COLOR` is unset or empty: coloured lines.
    Terminal,
    /// A file, a pipe (Sentinel capturing `migrate-havip`), a terminal with `NO_COLOR`: plain lines.
    Plain,
    /// The systemd journal's stream: plain lines with a `<N>` priority prefix and no timestamp.
    Journal,
}

impl Sink {
    /// Reads the process's environment and its stderr.
    pub fn detect() -> Sink {
        let stderr = std::io::stderr();
        let id = stderr
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        Sink::decide(
            std::env::var("JOURNAL_STREAM").ok().as_deref(),
            std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            stderr.is_terminal(),
            id,
        )
    }

    /// The rule, without the process: `journal_stream` is `$JOURNAL_STREAM` (`<device>:<inode>`, decimal,
    /// systemd.exec(5)), `stderr_id` stderr's device and inode. The journal is recognised only when the
    /// two match, so a child that inherited the variable but writes elsewhere (a pipe, a file) is not.
    pub fn decide(
        journal_stream: Option<&str>,
        no_color: bool,
        stderr_is_terminal: bool,
        stderr_id: Option<(u64, u64)>,
    ) -> Sink {
        let journal = journal_stream
            .and_then(|v| v.split_once(':'))
            .and_then(|(d, i)| Some((d.trim().parse().ok()?, i.trim().parse().ok()?)));
        if journal.is_some() && journal == stderr_id {
            Sink::Journal
        } else if stderr_is_terminal && !no_color {
            Sink::Terminal
        } else {
            Sink::Plain
        }
    }
}

/// The syslog priority for a tracing level (sd-daemon(3)'s `<N>` prefix).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The human format for the journal: `<N>` then the usual line without time and level colour.
struct JournalFormat(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber. `HAVIP_LOG` (an `EnvFilter` directive such as `debug` or
/// `havip_agent=trace`) overrides the default level. Calling it twice is harmless.
pub fn init(format: LogFormat) {
    init_with_default(format, DEFAULT_FILTER)
}

/// [`init`] with another default filter (the demo prints its own timeline and keeps logs to warnings).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env("HAVIP_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let sink = Sink::detect();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(sink == Sink::Terminal)
        .with_target(false);
    let _ = match (format, sink) {
        (LogFormat::Json, _) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        (LogFormat::Human, Sink::Journal) => builder
            .event_format(JournalFormat(
                Format::<Full, SystemTime>::default()
                    .without_time()
                    .with_target(false)
                    .with_ansi(false),
            ))
            .fmt_fields(DefaultFields::new())
            .try_init(),
        (LogFormat::Human, _) => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_recognised_only_when_stderr_is_its_stream() {
        let id = Some((64769, 1234));
        assert_eq!(
            Sink::decide(Some("64769:1234"), false, false, id),
            Sink::Journal
        );
        // A child that inherited JOURNAL_STREAM but writes to a pipe or a terminal.
        assert_eq!(
            Sink::decide(Some("64769:999"), false, false, id),
            Sink::Plain
        );
        assert_eq!(
            Sink::decide(Some("64769:999"), false, true, id),
            Sink::Terminal
        );
        for bad in ["", "64769", "x:1234", "64769:", ":"] {
            assert_eq!(
                Sink::decide(Some(bad), false, false, id),
                Sink::Plain,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert_eq!(Sink::decide(None, false, true, None), Sink::Terminal);
        assert_eq!(Sink::decide(None, true, true, None), Sink::Plain);
        assert_eq!(Sink::decide(None, false, false, None), Sink::Plain);
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}

//! `havip-agent`: the daemon (`run`) and its operator commands (`check`, `status`). Owns the command line
//! and the exit codes; the work is the library's. The demo is `havip-demo`, in the test kit
//! (crates/testkit), so the shipped binary carries no fake cloud.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Parser, Subcommand};
use havip_agent::config::{CONFIG_ENV, resolve_path};
use havip_agent::daemon::StartError;
use havip_agent::footprint;
use havip_agent::logging::{self, LogFormat};
use havip_agent::status_cmd::StatusOptions;

/// Exit code: a transient start-up failure (systemd restarts the unit).
const EXIT_TRANSIENT: u8 = 1;
/// Exit code: a permanent failure, a bad command line, or `check` finding a problem.
const EXIT_PERMANENT: u8 = 2;

/// Keeps a Tencent Cloud HAVIP on the current Redis Sentinel master.
#[derive(Debug, Parser)]
#[command(name = "havip-agent", version, about, long_about = None)]
struct Cli {
    /// Config file. Default: $HAVIP_AGENT_CONFIG, else /etc/havip-agent/config.toml.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format on stderr: human-readable, or one JSON object per line for log shippers.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "human",
          value_parser = PossibleValuesParser::new(LogFormat::NAMES).try_map(|s| s.parse::<LogFormat>()))]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (under systemd: Type=notify with a watchdog).
    Run,
    /// Check the config, credentials, identity, every HAVIP and every Sentinel; exit 0 only if all is healthy.
    Check,
    /// Show, per HAVIP, the majority master, the local binding, the cloud holder and the last switch.
    Status(StatusArgs),
}

/// Arguments of `havip-agent status`.
#[derive(Debug, Clone, clap::Args)]
struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Do not ask the running agent; compute the status from Sentinel, the interface and the API.
    #[arg(long)]
    direct: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_PERMANENT } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    logging::init(cli.log_format);
    // One thread: the agent waits on sockets and timers and computes almost nothing, so a second worker
    // (and its allocator arena) costs pages and wake-ups and buys nothing (BENCHMARKS.md, idle footprint).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(EXIT_PERMANENT);
        }
    };
    let path = resolve_path(
        cli.config.as_deref(),
        std::env::var(CONFIG_ENV).ok().as_deref(),
    );
    let code = rt.block_on(async move {
        match cli.command {
            Command::Run => {
                // Start-up's pages are not the idle loop's: give them back once it is over (footprint.rs).
                tokio::spawn(async {
                    tokio::time::sleep(footprint::TRIM_AFTER).await;
                    match footprint::trim() {
                        Ok(n) => tracing::debug!(mappings = n, "trimmed start-up memory"),
                        Err(e) => tracing::debug!(error = %e, "cannot trim start-up memory"),
                    }
                });
                run_daemon(&path).await
            }
            Command::Check => {
                let env = |k: &str| std::env::var(k).ok();
                let report = havip_agent::check::check(&path, &env).await;
                let _ = report.write_to(&mut std::io::stdout());
                if report.is_healthy() {
                    0
                } else {
                    EXIT_PERMANENT
                }
            }
            Command::Status(a) => {
                let opts = StatusOptions {
                    json: a.json,
                    direct: a.direct,
                };
                match havip_agent::status_cmd::run(&path, opts).await {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!("status: {}", logging::error_chain(&e));
                        EXIT_PERMANENT
                    }
                }
            }
        }
    });
    ExitCode::from(code)
}

/// `havip-agent run`: the daemon until a signal stops it; the exit code.
async fn run_daemon(path: &std::path::Path) -> u8 {
    match havip_agent::daemon::run(path).await {
        Ok(()) => 0,
        Err(e) => {
            // The one report of the failure, in the log format (journal priority 3 under systemd).
            tracing::error!("{}", logging::error_chain(&e));
            match e {
                StartError::Permanent(_) => EXIT_PERMANENT,
                StartError::Transient(_) => EXIT_TRANSIENT,
            }
        }
    }
}

//! `havip-agent`: the daemon (`run`) and its operator commands (`check`, `status`). The demo is
//! `havip-demo`, in the test kit (crates/testkit), so the shipped binary carries no fake cloud.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use havip_agent::config::{CONFIG_ENV, resolve_path};
use havip_agent::logging::LogFormat;

/// Keeps a Tencent Cloud HAVIP on the current Redis Sentinel master.
#[derive(Debug, Parser)]
#[command(name = "havip-agent", version, about, long_about = None)]
struct Cli {
    /// Config file. Default: $HAVIP_AGENT_CONFIG, else /etc/havip-agent/config.toml.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format on stderr: human-readable, or one JSON object per line for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
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
    Status(havip_agent::status_cmd::StatusArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    havip_agent::logging::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("havip-agent: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let path = resolve_path(
        cli.config.as_deref(),
        std::env::var(CONFIG_ENV).ok().as_deref(),
    );
    let code = rt.block_on(async move {
        match cli.command {
            Command::Run => match havip_agent::daemon::run(&path).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("havip-agent: {e}");
                    match e {
                        havip_agent::daemon::StartError::Permanent(_) => 2,
                        havip_agent::daemon::StartError::Transient(_) => 1,
                    }
                }
            },
            Command::Check => {
                let env = |k: &str| std::env::var(k).ok();
                let report = havip_agent::check::check(&path, &env).await;
                let _ = report.write_to(&mut std::io::stdout());
                report.exit_code()
            }
            Command::Status(args) => havip_agent::status_cmd::run(&path, args).await,
        }
    });
    ExitCode::from(code)
}

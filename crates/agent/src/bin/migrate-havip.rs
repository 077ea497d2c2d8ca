//! `migrate-havip`: move a HAVIP to this host or away from it, once. Owns the command line and the exit
//! codes Sentinel depends on; the step itself is `havip_agent::migrate`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use havip_agent::logging::{self, LogFormat};
use havip_agent::migrate::{self, Failure, FailureKind, Options};

/// Exit code: a transient failure; Sentinel calls the script again after 30 s.
const EXIT_TRANSIENT: u8 = 1;
/// Exit code: a permanent failure (also bad arguments); Sentinel does not call again.
const EXIT_PERMANENT: u8 = 2;

/// Move a HAVIP to this host or away from it.
///
/// As Sentinel's client-reconfig-script it is called with seven arguments:
/// <master-name> <role> <state> <from-ip> <from-port> <to-ip> <to-port>.
/// It asks the Sentinels who is master now: it claims the VIP if they name this node, releases it if they
/// name another, and says so when the arguments are stale. Operators use `--master NAME --to IP`.
/// Exit 0: done or nothing needed; 1: not settled yet (Sentinel retries); 2: permanent error.
#[derive(Debug, Parser)]
#[command(name = "migrate-havip", version, long_about = None)]
struct Args {
    /// Config file. Default: $HAVIP_AGENT_CONFIG, else /etc/havip-agent/config.toml.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The Sentinel master name (operator form).
    #[arg(
        long,
        value_name = "NAME",
        requires = "to",
        conflicts_with = "sentinel_args"
    )]
    master: Option<String>,
    /// The new master's address (operator form). This node's address claims; any other releases.
    #[arg(long, value_name = "IP", requires = "master")]
    to: Option<IpAddr>,
    /// Print what the Sentinels say and the plan, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Operator form: act on --to even when the Sentinels name another master (or cannot be reached).
    #[arg(long, requires = "master")]
    force: bool,
    /// Log format on stderr: human-readable, or one JSON object per line.
    #[arg(long, value_name = "FORMAT", default_value = "human",
          value_parser = PossibleValuesParser::new(LogFormat::NAMES).try_map(|s| s.parse::<LogFormat>()))]
    log_format: LogFormat,
    /// What Sentinel passes: as client-reconfig-script <master-name> <role> <state> <from-ip> <from-port>
    /// <to-ip> <to-port>; as notification-script <event-type> <event-description>.
    #[arg(value_name = "SENTINEL_ARGS", num_args = 0.., allow_hyphen_values = true)]
    sentinel_args: Vec<String>,
}

impl From<Args> for Options {
    fn from(a: Args) -> Self {
        Options {
            config: a.config,
            master: a.master,
            to: a.to,
            dry_run: a.dry_run,
            force: a.force,
            sentinel_args: a.sentinel_args,
        }
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // clap prints usage errors; --help and --version are successes.
            let code = if e.use_stderr() { EXIT_PERMANENT } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    logging::init(args.log_format);
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
    match rt.block_on(migrate::run(args.into())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { kind, error }) => {
            // The one report of the failure, in the chosen log format (journal priority 3 under systemd).
            tracing::error!("{}", logging::error_chain(error.as_ref()));
            ExitCode::from(match kind {
                FailureKind::Transient => EXIT_TRANSIENT,
                FailureKind::Permanent => EXIT_PERMANENT,
            })
        }
    }
}

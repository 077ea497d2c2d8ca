//! `migrate-havip`: the claim or release step as a one-shot command.
//!
//! A drop-in Sentinel `client-reconfig-script` (`<master-name> <role> <state> <from-ip> <from-port> <to-ip>
//! <to-port>`) and an operator's tool (`--master NAME --to IP`). Owns argument validation, the exit-code
//! contract Sentinel depends on, the per-HAVIP lock and `--dry-run`. The claim itself is the shared code in
//! `claim`, the same the daemon runs.
//!
//! Exit codes (`reference/sentinel.md`: exit 1 is retried after 30 s, exit >= 2 is not):
//! - 0: done, or nothing was needed;
//! - 1: a transient cloud failure (the API, or the metadata service for role credentials, not answering)
//!   that persisted through this command's own retries (the VIP is bound and announced locally anyway), or
//!   the lock still held by another claim at the deadline;
//! - 2: a permanent error: bad arguments, bad config, an unknown master name, `AuthFailure`, no credentials,
//!   missing privileges, a missing interface, a lock directory that cannot be created or opened.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::claim::{ClaimError, ClaimOptions, Claimer, HavipLock};
use crate::cloud::VpcClient;
use crate::config::{Config, HavipConfig, resolve_path};
use crate::credentials::CredentialProvider;
use crate::logging::LogFormat;
use crate::metadata::MetadataClient;
use crate::net::{Change, KernelNet, LocalNet, NetError};
use crate::node::{Identity, resolve_identity};

/// Exit code: done, or nothing needed.
pub const EXIT_OK: u8 = 0;
/// Exit code: transient failure; Sentinel retries the script later.
pub const EXIT_TRANSIENT: u8 = 1;
/// Exit code: permanent failure; Sentinel does not retry.
pub const EXIT_PERMANENT: u8 = 2;

/// Move a HAVIP to this host or away from it.
///
/// As Sentinel's client-reconfig-script it is called with seven arguments:
/// <master-name> <role> <state> <from-ip> <from-port> <to-ip> <to-port>.
/// If <to-ip> is this node's address it claims the VIP, otherwise it releases it.
/// Operators use `--master NAME --to IP` instead.
#[derive(Debug, Parser)]
#[command(name = "migrate-havip", version, about, long_about = None)]
pub struct Args {
    /// Config file. Default: $HAVIP_AGENT_CONFIG, else /etc/havip-agent/config.toml.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The Sentinel master name (operator form).
    #[arg(
        long,
        value_name = "NAME",
        requires = "to",
        conflicts_with = "sentinel_args"
    )]
    pub master: Option<String>,
    /// The new master's address (operator form). This node's address claims; any other releases.
    #[arg(long, value_name = "IP", requires = "master")]
    pub to: Option<IpAddr>,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// What Sentinel passes: <master-name> <role> <state> <from-ip> <from-port> <to-ip> <to-port>.
    #[arg(value_name = "SENTINEL_ARGS", num_args = 0.., allow_hyphen_values = true)]
    pub sentinel_args: Vec<String>,
}

/// The validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The Sentinel master name.
    pub master: String,
    /// The new master's address.
    pub to_ip: IpAddr,
    /// The rest of Sentinel's arguments, for logs.
    pub sentinel: Option<SentinelCall>,
}

/// The fields of a Sentinel call besides the master name and the new address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelCall {
    /// `leader` or `observer`.
    pub role: String,
    /// Always `start` in current Sentinels.
    pub state: String,
    /// The old master.
    pub from: (IpAddr, u16),
    /// The new master's port.
    pub to_port: u16,
}

/// A rejected argument list. The message names the argument.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ArgError(pub String);

const FIELDS: [&str; 7] = [
    "master-name",
    "role",
    "state",
    "from-ip",
    "from-port",
    "to-ip",
    "to-port",
];

/// Checks the arguments: the operator form, or exactly Sentinel's seven fields with valid IPs and ports.
pub fn validate(args: &Args) -> Result<Request, ArgError> {
    if let (Some(master), Some(to)) = (&args.master, args.to) {
        check_master_name("--master", master)?;
        return Ok(Request {
            master: master.clone(),
            to_ip: to,
            sentinel: None,
        });
    }
    let a = &args.sentinel_args;
    if a.len() != 7 {
        return Err(ArgError(format!(
            "expected 7 arguments (<{}>) as Sentinel passes them, or --master NAME --to IP; got {}",
            FIELDS.join("> <"),
            a.len()
        )));
    }
    check_master_name("argument 1 (master-name)", &a[0])?;
    let role = a[1].as_str();
    if role != "leader" && role != "observer" {
        return Err(ArgError(format!(
            "argument 2 (role): {role:?} is not \"leader\" or \"observer\""
        )));
    }
    let state = a[2].as_str();
    if state.is_empty()
        || !state
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ArgError(format!(
            "argument 3 (state): {state:?} is not a word like \"start\""
        )));
    }
    let ip = |i: usize| -> Result<IpAddr, ArgError> {
        a[i].parse().map_err(|_| {
            ArgError(format!(
                "argument {} ({}): {:?} is not an IP address",
                i + 1,
                FIELDS[i],
                a[i]
            ))
        })
    };
    let port = |i: usize| -> Result<u16, ArgError> {
        a[i].parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            ArgError(format!(
                "argument {} ({}): {:?} is not a port from 1 to 65535",
                i + 1,
                FIELDS[i],
                a[i]
            ))
        })
    };
    let from = (ip(3)?, port(4)?);
    let to_ip = ip(5)?;
    let to_port = port(6)?;
    Ok(Request {
        master: a[0].clone(),
        to_ip,
        sentinel: Some(SentinelCall {
            role: role.to_owned(),
            state: state.to_owned(),
            from,
            to_port,
        }),
    })
}

fn check_master_name(what: &str, name: &str) -> Result<(), ArgError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ArgError(format!(
            "{what}: {name:?} is not a Sentinel master name"
        )));
    }
    Ok(())
}

/// What the command is going to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// `to-ip` is this node: claim.
    Claim,
    /// `to-ip` is another node: release.
    Release,
}

/// Picks claim or release.
pub fn plan_for(req: &Request, me: &Identity) -> Plan {
    if req.to_ip == me.address {
        Plan::Claim
    } else {
        Plan::Release
    }
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// 1 or 2.
    pub code: u8,
    /// The error with its causes.
    pub error: anyhow::Error,
}

fn permanent(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_PERMANENT,
        error: e.into(),
    }
}

fn transient(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_TRANSIENT,
        error: e.into(),
    }
}

/// Runs the command; returns the exit code. Errors are printed to stderr with their causes.
pub async fn run(args: Args) -> u8 {
    match run_inner(args).await {
        Ok(()) => EXIT_OK,
        Err(f) => {
            error!("{:#}", f.error);
            eprintln!("migrate-havip: {:#}", f.error);
            f.code
        }
    }
}

async fn run_inner(args: Args) -> Result<(), Failure> {
    // Arguments first: a bad call makes no API call and touches no interface.
    let req = validate(&args).map_err(permanent)?;
    let path = resolve_path(
        args.config.as_deref(),
        std::env::var(crate::config::CONFIG_ENV).ok().as_deref(),
    );
    let cfg = Config::load(&path).map_err(permanent)?;
    let havip = cfg.havip_for_master(&req.master).cloned().ok_or_else(|| {
        permanent(anyhow::anyhow!(
            "unknown master name {:?}: no [[havip]] in {} has master = {:?}",
            req.master,
            path.display(),
            req.master
        ))
    })?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metadata = MetadataClient::new(&cfg.cloud.metadata_endpoint, Duration::from_secs(2))
        .map_err(permanent)?;
    let me = resolve_identity(&cfg, &metadata).await.map_err(transient)?;
    let plan = plan_for(&req, &me);
    info!(
        master = %req.master,
        havip = %havip.havip_id,
        to = %req.to_ip,
        me = %me.address,
        role = req.sentinel.as_ref().map(|s| s.role.as_str()).unwrap_or("operator"),
        plan = ?plan,
        "migrate-havip"
    );

    if args.dry_run {
        print_plan(plan, &cfg, &havip, &me, &req);
        return Ok(());
    }

    crate::net::require_capabilities().map_err(permanent)?;
    let net: Arc<dyn LocalNet> = Arc::new(
        KernelNet::open(&cfg.node.interface)
            .await
            .map_err(net_failure)?,
    );
    let deadline = Instant::now() + cfg.claim.deadline.get();
    // An unusable lock directory is permanent (exit 2): retrying cannot fix it. A busy lock is not.
    let _lock = HavipLock::acquire(&cfg.claim.lock_dir, &havip.havip_id, deadline)
        .await
        .map_err(claim_failure)?;

    match plan {
        Plan::Release => {
            let claimer = Claimer::new(
                None,
                net,
                me.instance_id.clone(),
                cfg.node.instance_type,
                cfg.announce.clone(),
                cfg.cloud.timeout.get(),
            );
            let change = claimer.release(&havip).await.map_err(claim_failure)?;
            let what = if change == Change::Applied {
                "removed"
            } else {
                "was not bound: nothing to do"
            };
            info!(havip = %havip.havip_id, vip = %havip.vip, "released: {what}");
            println!(
                "{}: vip {} {what} on {}",
                havip.havip_id, havip.vip, cfg.node.interface
            );
            Ok(())
        }
        Plan::Claim => claim(&cfg, &havip, &me, &metadata, net, deadline).await,
    }
}

fn net_failure(e: NetError) -> Failure {
    if e.is_permanent() {
        permanent(e)
    } else {
        transient(e)
    }
}

fn claim_failure(e: ClaimError) -> Failure {
    match e {
        ClaimError::Net { source, .. } => net_failure(source),
        other if other.is_permanent() => permanent(other),
        other => transient(other),
    }
}

async fn claim(
    cfg: &Config,
    havip: &HavipConfig,
    me: &Identity,
    metadata: &MetadataClient,
    net: Arc<dyn LocalNet>,
    deadline: Instant,
) -> Result<(), Failure> {
    let clock = crate::clock::system();
    // Credentials that cannot be found are a configuration problem, but the local part must still happen.
    // A metadata service that does not answer (the CVM role lookup) is the exception: a retry may work.
    let (cloud, cred_error, cred_retryable) = match CredentialProvider::resolve(
        &|k: &str| std::env::var(k).ok(),
        &cfg.cloud,
        metadata,
        clock.clone(),
    )
    .await
    {
        Ok(creds) => match VpcClient::new(&cfg.cloud, creds, clock) {
            Ok(c) => (Some(c), None, false),
            Err(e) => (None, Some(anyhow::Error::from(e)), false),
        },
        Err(e) => {
            let retryable = e.is_retryable();
            (None, Some(anyhow::Error::from(e)), retryable)
        }
    };
    let claimer = Claimer::new(
        cloud,
        net,
        me.instance_id.clone(),
        cfg.node.instance_type,
        cfg.announce.clone(),
        cfg.cloud.timeout.get(),
    );
    let out = claimer
        .claim(
            havip,
            ClaimOptions {
                deadline,
                known_in_range: false,
                progress: None,
            },
        )
        .await
        .map_err(claim_failure)?;
    if let Some(e) = cred_error {
        warn!(havip = %havip.havip_id, "vip bound and announced locally, but no cloud credentials: the drift range and the move could not be confirmed");
        let e = e.context(format!(
            "{}: vip {} bound and announced locally, but the cloud could not be used",
            havip.havip_id, havip.vip
        ));
        return Err(if cred_retryable {
            transient(e)
        } else {
            permanent(e)
        });
    }
    if out.already_held {
        println!(
            "{}: vip {} already held by this node ({}): nothing to do",
            havip.havip_id, havip.vip, me.instance_id
        );
        return Ok(());
    }
    if out.confirmed {
        println!(
            "{}: vip {} claimed by {}{}; {} GARP frames; cloud confirms",
            havip.havip_id,
            havip.vip,
            me.instance_id,
            if out.associated {
                " (added to the drift range)"
            } else {
                ""
            },
            out.frames
        );
        return Ok(());
    }
    let msg = format!(
        "{}: vip {} bound and announced locally ({} GARP frames), but the drift range and the move could not be confirmed",
        havip.havip_id, havip.vip, out.frames
    );
    match out.cloud_error {
        Some(e) if e.is_auth() || !e.is_retryable() => {
            Err(permanent(anyhow::Error::from(e).context(msg)))
        }
        Some(e) => Err(transient(anyhow::Error::from(e).context(msg))),
        None => Err(transient(anyhow::anyhow!(
            "{msg}: DescribeHaVips did not name {} before the {} deadline",
            me.instance_id,
            cfg.claim.deadline
        ))),
    }
}

fn print_plan(plan: Plan, cfg: &Config, havip: &HavipConfig, me: &Identity, req: &Request) {
    println!("dry run: nothing will be changed");
    println!(
        "node: instance {} address {} interface {}",
        me.instance_id, me.address, cfg.node.interface
    );
    println!(
        "havip {} vip {} master {} scope {:?}: new master {}",
        havip.havip_id, havip.vip, havip.master, havip.scope, req.to_ip
    );
    match plan {
        Plan::Claim => {
            println!(
                "1. bind {} on {} (netlink; a no-op if already bound)",
                havip.vip, cfg.node.interface
            );
            println!(
                "2. DescribeHaVips {}; AssociateHaVipInstance {} only if it is not in the drift range",
                havip.havip_id, me.instance_id
            );
            println!(
                "3. gratuitous ARP for {}: {} rounds (request + reply) over {}",
                havip.vip.addr, cfg.announce.burst, cfg.announce.spread
            );
            println!(
                "4. confirm with DescribeHaVips that the holder is {}, re-announcing until {}",
                me.instance_id, cfg.claim.deadline
            );
            if havip.scope == crate::config::Scope::Exclusive {
                println!("5. remove every other instance from the drift range (scope exclusive)");
            }
        }
        Plan::Release => {
            println!(
                "1. remove {} from {} if it is bound (no API call)",
                havip.vip, cfg.node.interface
            );
        }
    }
}

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
    /// What Sentinel passes: as client-reconfig-script <master-name> <role> <state> <from-ip> <from-port>
    /// <to-ip> <to-port>; as notification-script <event-type> <event-description>.
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

/// A Sentinel notification (`sentinel notification-script <master> migrate-havip`): `<event-type>
/// <event-description>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The event, e.g. `+sdown`.
    pub event: String,
    /// The master the event belongs to (from the description).
    pub master: String,
}

/// The events that can change who may hold the VIP: this host losing or regaining sight of the other
/// Sentinels (and of the master). Others are acknowledged and ignored.
pub const FENCING_EVENTS: [&str; 4] = ["+sdown", "-sdown", "+odown", "-odown"];

/// Checks a notification's event type: `+` or `-` and a name (`+sdown`, `-odown`, `+switch-master`).
pub fn check_event(event: &str) -> Result<(), ArgError> {
    let valid = (event.starts_with('+') || event.starts_with('-'))
        && event.len() > 1
        && event[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(ArgError(format!(
            "argument 1 (event-type): {event:?} is not a Sentinel event like \"+sdown\""
        )))
    }
}

/// Parses Sentinel's two notification arguments. The description is `master <name> <ip> <port>` or
/// `<type> <name> <ip> <port> @ <master-name> <master-ip> <master-port>`.
pub fn parse_notification(args: &[String]) -> Result<Notification, ArgError> {
    let [event, description] = args else {
        return Err(ArgError(format!(
            "expected 2 arguments (<event-type> <event-description>) as Sentinel's notification-script; got {}",
            args.len()
        )));
    };
    check_event(event)?;
    let words: Vec<&str> = description.split_whitespace().collect();
    let master = match words.as_slice() {
        ["master", name, ..] => Some(*name),
        _ => words
            .iter()
            .position(|w| *w == "@")
            .and_then(|i| words.get(i + 1).copied()),
    };
    let master = master.ok_or_else(|| {
        ArgError(format!(
            "argument 2 (event-description): {description:?} names no master (expected \"master <name> ...\" or \"... @ <master> ...\")"
        ))
    })?;
    check_master_name("argument 2 (event-description)", master)?;
    Ok(Notification {
        event: event.clone(),
        master: master.to_owned(),
    })
}

/// How long a pause set from a notification lasts. Nothing renews it (the script only runs on events), so it
/// outlasts a failover; the first notification that shows the majority back lifts it at once (this node is
/// then either wanted again, or an old master that Sentinel converts to a replica, whose resync a pause
/// would hold up).
pub const NOTIFY_PAUSE: Duration = Duration::from_secs(30);

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
    if args.master.is_none() && args.sentinel_args.len() == 2 {
        // Sentinel sends every warning-level event; only reachability events are ours, and the others have
        // descriptions of their own shapes (`+switch-master <name> <ip> ...`, `+new-epoch <n>`).
        let event = &args.sentinel_args[0];
        check_event(event).map_err(permanent)?;
        if !FENCING_EVENTS.contains(&event.as_str()) {
            info!(event = %event, "notification: not a reachability event, nothing to do");
            return Ok(());
        }
        let n = parse_notification(&args.sentinel_args).map_err(permanent)?;
        return notified(&args, n).await;
    }
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

    let net = open_interface(&cfg).await?;
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

/// Notification-script mode: the fence `migrate-havip` alone can give. When this host's Sentinel reports an
/// instance down or back, ask every Sentinel: if the majority is out of sight, release the VIP and pause
/// writes on the local Redis (an isolated old master must not keep taking writes that Sentinel will
/// discard, nor answer ARP for the VIP when its link returns); if the majority is back and still names this
/// node, bind the VIP again and lift the pause. The decision is the daemon's (`reconcile::plan`).
async fn notified(args: &Args, n: Notification) -> Result<(), Failure> {
    use crate::reconcile::{Action, CloudHolder, Observation, plan};
    let path = resolve_path(
        args.config.as_deref(),
        std::env::var(crate::config::CONFIG_ENV).ok().as_deref(),
    );
    let cfg = Config::load(&path).map_err(permanent)?;
    let Some(havip) = cfg.havip_for_master(&n.master).cloned() else {
        info!(event = %n.event, master = %n.master, "notification for a master without a [[havip]]: nothing to do");
        return Ok(());
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metadata = MetadataClient::new(&cfg.cloud.metadata_endpoint, Duration::from_secs(2))
        .map_err(permanent)?;
    let me = resolve_identity(&cfg, &metadata).await.map_err(transient)?;

    // What every Sentinel says now. A Sentinel that answers (even without this master) is reachable.
    let answers = futures::future::join_all(
        cfg.sentinel
            .addresses
            .iter()
            .map(|a| crate::sentinel::conn::query(a, &cfg.sentinel, &havip.master)),
    )
    .await;
    let mut reachable = 0;
    let mut newest: Option<crate::reconcile::MasterConfig> = None;
    for a in &answers {
        match a {
            Ok(m) => {
                reachable += 1;
                let c = crate::reconcile::MasterConfig {
                    ip: m.ip,
                    port: m.port,
                    epoch: m.config_epoch,
                };
                newest = Some(c.newest(newest));
            }
            Err(e) if !e.is_link() => reachable += 1,
            Err(_) => {}
        }
    }
    let majority = reachable > cfg.sentinel.addresses.len() / 2;
    if args.dry_run {
        println!(
            "dry run: {} of {} sentinels reachable; newest config {:?}; nothing changed",
            reachable,
            cfg.sentinel.addresses.len(),
            newest
        );
        return Ok(());
    }
    let net = open_interface(&cfg).await?;
    let bound = net.is_bound(havip.vip).await.map_err(net_failure)?;
    let names_me = newest.is_some_and(|c| c.ip == me.address);
    let fence = cfg.redis.as_ref().filter(|r| r.pause_writes).map(|r| {
        let port = newest
            .filter(|c| c.ip == me.address)
            .map_or(6379, |c| c.port);
        let addr = r
            .address
            .clone()
            .unwrap_or_else(|| std::net::SocketAddr::new(me.address, port).to_string());
        crate::fence::RedisFence::new(
            crate::sentinel::conn::ConnectOptions::redis(r, &cfg.sentinel),
            addr,
            NOTIFY_PAUSE,
        )
    });
    let obs = Observation {
        majority,
        reported: newest,
        remembered: None,
        // The local Sentinel already waited down-after-milliseconds before this +sdown; a majority still out
        // of sight now is reason enough.
        cut_off_for: if majority {
            Duration::ZERO
        } else {
            Duration::MAX
        },
        fence_after: match cfg.sentinel.fence_after {
            crate::config::FenceAfter::Hold => None,
            _ => Some(Duration::ZERO),
        },
        bound,
        cloud: CloudHolder::Unknown,
        // Bound already counts as claimed: a notification re-binds, it does not re-claim.
        claimed_epoch: if bound { newest.map(|c| c.epoch) } else { None },
        claiming: false,
        // A pause of ours may be in place (set by an earlier notification): lift it when this node is wanted.
        paused: fence.is_some() && majority && names_me,
        redis_fence: fence.is_some(),
    };
    let decision = plan(me.address, &obs);
    info!(
        event = %n.event,
        master = %n.master,
        havip = %havip.havip_id,
        reachable,
        total = cfg.sentinel.addresses.len(),
        majority,
        bound,
        actions = ?decision.actions.to_vec(),
        "notification"
    );
    let deadline = Instant::now() + cfg.claim.deadline.get();
    let _lock = HavipLock::acquire(&cfg.claim.lock_dir, &havip.havip_id, deadline)
        .await
        .map_err(claim_failure)?;
    for action in decision.actions.iter() {
        match action {
            Action::Claim { .. } => {
                claim(&cfg, &havip, &me, &metadata, net.clone(), deadline).await?;
            }
            Action::Release { reason } => {
                let change = net.unbind(havip.vip).await.map_err(net_failure)?;
                warn!(havip = %havip.havip_id, reason = reason.as_str(), removed = change == Change::Applied, "released the vip: {} of {} sentinels reachable", reachable, cfg.sentinel.addresses.len());
                println!(
                    "{}: vip {} released ({}): {reachable} of {} sentinels reachable",
                    havip.havip_id,
                    havip.vip,
                    reason.as_str(),
                    cfg.sentinel.addresses.len()
                );
            }
            Action::PauseWrites => {
                if let Some(f) = &fence {
                    match f.pause_writes().await {
                        Ok(()) => println!(
                            "{}: writes paused on {} for {:?}",
                            havip.havip_id,
                            f.addr(),
                            NOTIFY_PAUSE
                        ),
                        Err(e) => {
                            warn!(havip = %havip.havip_id, error = %e, "could not pause writes")
                        }
                    }
                }
            }
            Action::Unpause => {
                if let Some(f) = &fence
                    && let Err(e) = f.unpause().await
                {
                    warn!(havip = %havip.havip_id, error = %e, "could not lift the write pause");
                }
            }
            Action::AbortClaim | Action::Reannounce => {}
        }
    }
    // Majority back and naming another node: this is an old master Sentinel is about to convert into a
    // replica; a pause left from the fence would only hold up its resync.
    if majority
        && !names_me
        && let Some(f) = &fence
        && let Err(e) = f.unpause().await
    {
        warn!(havip = %havip.havip_id, error = %e, "could not lift the write pause");
    }
    Ok(())
}

/// Checks the two capabilities, then opens `node.interface` (netlink + packet socket).
async fn open_interface(cfg: &Config) -> Result<Arc<dyn LocalNet>, Failure> {
    crate::net::require_capabilities().map_err(permanent)?;
    let net = KernelNet::open(&cfg.node.interface)
        .await
        .map_err(net_failure)?;
    Ok(Arc::new(net))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn notifications_name_their_master_from_either_description_form() {
        let n = parse_notification(&strs(&["+sdown", "master mymaster 198.18.0.11 6379"])).unwrap();
        assert_eq!(
            (n.event.as_str(), n.master.as_str()),
            ("+sdown", "mymaster")
        );
        let n = parse_notification(&strs(&[
            "-sdown",
            "sentinel 3f2a 198.18.0.12 26379 @ cache 198.18.0.11 6379",
        ]))
        .unwrap();
        assert_eq!((n.event.as_str(), n.master.as_str()), ("-sdown", "cache"));
    }

    #[test]
    fn bad_notifications_name_the_argument() {
        let cases: &[(&[&str], &str)] = &[
            (&["sdown", "master m 1.2.3.4 1"], "argument 1 (event-type)"),
            (&["+", "master m 1.2.3.4 1"], "argument 1 (event-type)"),
            (
                &["+sdown", "slave 1.2.3.4:1 1.2.3.4 1"],
                "argument 2 (event-description)",
            ),
            (&["+sdown", ""], "argument 2 (event-description)"),
            (
                &["+sdown", "slave x 1.2.3.4 1 @"],
                "argument 2 (event-description)",
            ),
        ];
        for (args, want) in cases {
            let e = parse_notification(&strs(args)).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn only_reachability_events_can_fence() {
        for e in ["+sdown", "-sdown", "+odown", "-odown"] {
            assert!(FENCING_EVENTS.contains(&e));
        }
        for e in [
            "+switch-master",
            "+tilt",
            "+promoted-slave",
            "+try-failover",
        ] {
            assert!(!FENCING_EVENTS.contains(&e));
        }
    }
}

//! `migrate-havip`: the claim or release step as a one-shot command.
//!
//! A drop-in Sentinel `client-reconfig-script` (`<master-name> <role> <state> <from-ip> <from-port> <to-ip>
//! <to-port>`), a `notification-script`, and an operator's tool (`--master NAME --to IP`). Owns argument
//! validation, the exit-code contract Sentinel depends on, and `--dry-run`/`--force`. Everything else is the
//! daemon's pipeline run for one step: `boot` to start, `sentinel::probe` to observe, a fresh
//! `reconcile::HavipMachine` to decide, `act::Executor` to act.
//!
//! Sentinel's two forms first try the running daemon: they send a wake-up naming the master over its
//! control socket ([`crate::control`]) and map its answer to the exit codes, so the command needs no
//! capability and no credential. Only when nothing listens there do they act on their own, as below (and
//! without `CAP_NET_ADMIN`/`CAP_NET_RAW` they exit 2 saying that the daemon is not running). The operator
//! form (`--master/--to`, `--force`) never uses the socket, which takes no orders; `--dry-run` changes
//! nothing in any form and reports whether the daemon answers.
//!
//! Arguments are wake-ups, never orders: Sentinel replays a script that failed with its original arguments
//! for hours. In Sentinel's form the command asks the Sentinels what is true now and acts on that: it claims
//! only if the majority names this host, releases only if it names another, and says the call was
//! superseded when its arguments disagree. Without a majority it changes nothing and exits 1.
//!
//! Outcomes, which the binary maps to exit codes (`reference/sentinel.md`: exit 1 is retried after 30 s,
//! exit >= 2 is not):
//! - `Ok` (exit 0): done, or nothing was needed;
//! - [`FailureKind::Transient`] (exit 1): a transient cloud failure (the API, or the metadata service for role credentials, not answering)
//!   that persisted through this command's own retries (the VIP is bound and announced locally anyway), or
//!   the lock still held by another claim at the deadline;
//! - [`FailureKind::Permanent`] (exit 2): a permanent error: bad arguments, bad config, an unknown master name, `AuthFailure`, no credentials,
//!   missing privileges, a missing interface, a lock directory that cannot be created or opened.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::act::{Executor, FenceSetup};
use crate::boot::{Boot, CloudProblem, boot_with};
use crate::claim::{ClaimError, ClaimOptions, Claimer};
use crate::config::{Config, HavipConfig, resolve_path};
use crate::net::{Change, KernelNet, LocalNet, NetError};
use crate::reconcile::{
    Action, CloudHolder, Decision, FORGET_AFTER, HavipMachine, Local, MasterConfig, Policy,
    ReleaseReason,
};
use crate::sentinel::conn::ConnectOptions;
use crate::sentinel::{MasterView, probe_until};

/// What the command was asked, as the binary parsed it from its command line (the CLI types and the exit
/// codes live in `src/bin/migrate-havip.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `--config`: the config file (default: `$HAVIP_AGENT_CONFIG`, else `/etc/havip-agent/config.toml`).
    pub config: Option<PathBuf>,
    /// `--master`: the Sentinel master name (operator form).
    pub master: Option<String>,
    /// `--to`: the new master's address (operator form). This node's address claims; any other releases.
    pub to: Option<IpAddr>,
    /// `--dry-run`: print what the Sentinels say and the plan, and change nothing.
    pub dry_run: bool,
    /// `--force` (operator form): act on `to` even when the Sentinels name another master.
    pub force: bool,
    /// What Sentinel passes: as client-reconfig-script `<master-name> <role> <state> <from-ip> <from-port>
    /// <to-ip> <to-port>`; as notification-script `<event-type> <event-description>`.
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
pub fn validate(args: &Options) -> Result<Request, ArgError> {
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

/// Whether Sentinel should call again: the binary maps these to exit 1 and 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Not settled yet (the API or the metadata service not answering through this command's retries, no
    /// majority, the lock still held): worth calling again later.
    Transient,
    /// Bad arguments or config, an unknown master, `AuthFailure`, no credentials or privileges: calling
    /// again changes nothing.
    Permanent,
}

/// A failed run: its kind and the error with its causes.
#[derive(Debug)]
pub struct Failure {
    /// Transient or permanent.
    pub kind: FailureKind,
    /// The error with its causes.
    pub error: anyhow::Error,
}

impl Failure {
    fn new(kind: FailureKind, e: impl Into<anyhow::Error>) -> Self {
        Self {
            kind,
            error: e.into(),
        }
    }
}

fn permanent(e: impl Into<anyhow::Error>) -> Failure {
    Failure::new(FailureKind::Permanent, e)
}

fn transient(e: impl Into<anyhow::Error>) -> Failure {
    Failure::new(FailureKind::Transient, e)
}

/// How long Sentinel's form waits for a majority of the Sentinels before giving up with exit 1.
const MAJORITY_WAIT: Duration = Duration::from_secs(2);
/// How often the Sentinels are asked again while waiting.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// The longest the notification-script waits for evidence inside one call (Sentinel kills it at 60 s).
const NOTIFY_MAX_WAIT: Duration = Duration::from_secs(50);

/// Runs the command: `Ok` when done or nothing was needed. Prints the command's own output (the plan, the
/// daemon's answer) on stdout and logs; the binary reports a failure.
pub async fn run(args: Options) -> Result<(), Failure> {
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
        let wake = crate::control::Request::Notify {
            master: n.master.clone(),
            event: n.event.clone(),
        };
        if let Some(done) = delegate(&args, wake, None).await? {
            return done;
        }
        return notified(&args, n).await;
    }
    let req = validate(&args).map_err(permanent)?;
    if let Some(call) = &req.sentinel {
        let wake = crate::control::Request::Reconfig(req.master.clone());
        if let Some(done) = delegate(&args, wake, Some((&req, call))).await? {
            return done;
        }
    }
    let one = OneShot::start(&args, &req.master).await?;
    let Some(one) = one else {
        return Err(permanent(anyhow::anyhow!(
            "unknown master name {:?}: no [[havip]] in the config has master = {:?}",
            req.master,
            req.master
        )));
    };
    let claim_wanted = req.to_ip == one.boot.identity.address;
    let view = one
        .observe_with_majority(MAJORITY_WAIT, |v| {
            // A majority that already confirms the call decides it: no need to wait for a Sentinel that
            // is out of sight (its timeout would delay the first GARP).
            v.majority
                && v.newest
                    .as_ref()
                    .is_some_and(|n| (n.ip == one.boot.identity.address) == claim_wanted)
        })
        .await;
    let named = view.newest.as_ref().map(|n| n.config());
    info!(
        master = %req.master,
        havip = %one.havip.havip_id,
        to = %req.to_ip,
        me = %one.boot.identity.address,
        role = req.sentinel.as_ref().map(|s| s.role.as_str()).unwrap_or("operator"),
        majority = view.majority,
        sentinels_name = ?named.map(|c| c.addr()),
        epoch = ?named.map(|c| c.epoch),
        "migrate-havip"
    );
    if args.dry_run {
        one.print_dry_run(&view, Some(&req));
        print_daemon(&one.boot.cfg).await;
        return Ok(());
    }
    if req.sentinel.is_none() {
        return operator(&args, &req, &one, &view, claim_wanted).await;
    }
    if !view.majority {
        return Err(transient(anyhow::anyhow!(
            "{}: only {} of {} sentinels reachable (and counted): not acting on a call the majority cannot confirm; nothing changed",
            one.havip.havip_id,
            view.members,
            view.total
        )));
    }
    let Some(named) = named else {
        return Err(transient(anyhow::anyhow!(
            "{}: the sentinels report no corroborated configuration for {:?}; nothing changed",
            one.havip.havip_id,
            req.master
        )));
    };
    if (named.ip == one.boot.identity.address) != claim_wanted {
        warn!(
            havip = %one.havip.havip_id,
            to = %req.to_ip,
            sentinels_name = %named.addr(),
            epoch = named.epoch,
            "superseded: the call names {} but the sentinels now name {} (epoch {}); acting on what they say now",
            req.to_ip,
            named.addr(),
            named.epoch
        );
        println!(
            "{}: call superseded: it names {}, the sentinels now name {} (epoch {})",
            one.havip.havip_id,
            req.to_ip,
            named.addr(),
            named.epoch
        );
    }
    let mut machine = one.machine(NOTIFY_PAUSE);
    let local = one.local(Some(named.port)).await?;
    machine.observe(&view, local, CloudHolder::Unknown, Instant::now());
    let decision = machine.plan(std::time::SystemTime::now());
    one.execute(&decision, Some(named.port)).await
}

/// Sentinel's forms hand the call to the daemon when it listens on its control socket
/// (`agent.control_socket`): the request is a wake-up naming the master only, the daemon re-samples its
/// Sentinels and acts through its own HAVIP task, and this process needs no capability and no credential.
///
/// Returns `Some(result)` when the daemon took the call (the result maps its answer to the exit codes),
/// `None` when this process must act on its own: a dry run (it changes nothing, so it never needs the
/// daemon), a master without a `[[havip]]` (handled as before), or nothing listening while this process
/// holds both capabilities. Nothing listening and no capabilities is exit 2, naming the missing capability
/// and saying that the daemon is not running.
async fn delegate(
    args: &Options,
    wake: crate::control::Request,
    call: Option<(&Request, &SentinelCall)>,
) -> Result<Option<Result<(), Failure>>, Failure> {
    use crate::control::AskError;
    if args.dry_run {
        return Ok(None);
    }
    let (_, cfg) = load_config(args)?;
    let master = match &wake {
        crate::control::Request::Reconfig(m) => m,
        crate::control::Request::Notify { master, .. } => master,
        crate::control::Request::Ping => return Ok(None),
    };
    if cfg.havip_for_master(master).is_none() {
        return Ok(None);
    }
    let socket = &cfg.control_socket();
    match crate::control::ask(socket, &wake, crate::control::client_timeout(&cfg)).await {
        Ok(answer) => Ok(Some(answered(&wake, call, answer))),
        // The daemon is there but did not answer: it keeps watching on its own; Sentinel retries this call.
        Err(e @ AskError::NoAnswer { .. }) => Ok(Some(Err(transient(e)))),
        Err(e @ AskError::NotListening { .. }) => {
            if let Err(missing) = crate::net::require_capabilities() {
                return Err(permanent(anyhow::anyhow!(
                    "{missing}; and the daemon is not running ({e}): start havip-agent, which acts for Sentinel's calls without any privilege of the caller, or give migrate-havip its file capabilities"
                )));
            }
            info!(socket = %socket.display(), error = %e, "the daemon is not listening: acting on its own");
            Ok(None)
        }
    }
}

/// Maps the daemon's answer to the exit codes. The reconfig form keeps its contract (done = 0, not
/// settled = 1, permanent = 2). The notification form only wakes the daemon, which then fences or re-binds
/// on its own: any answer from a running daemon is 0, except one that says the request was not taken.
fn answered(
    wake: &crate::control::Request,
    call: Option<(&Request, &SentinelCall)>,
    answer: crate::control::Answer,
) -> Result<(), Failure> {
    use crate::control::Outcome;
    let notify = matches!(wake, crate::control::Request::Notify { .. });
    let failed = match answer.outcome {
        Outcome::Held | Outcome::Elsewhere => None,
        Outcome::NoMajority | Outcome::Working | Outcome::UnknownMaster if notify => None,
        Outcome::NoMajority | Outcome::Working | Outcome::Busy => Some(FailureKind::Transient),
        Outcome::UnknownMaster | Outcome::BadRequest | Outcome::Pong => {
            Some(FailureKind::Permanent)
        }
    };
    info!(
        request = %wake.line(),
        call_to = ?call.map(|(r, _)| r.to_ip),
        role = call.map(|(_, c)| c.role.as_str()).unwrap_or("notification"),
        outcome = answer.outcome.word(),
        "the daemon answered: {}",
        answer.message
    );
    let Some(kind) = failed else {
        println!(
            "havip-agent: {} ({})",
            answer.message,
            answer.outcome.word()
        );
        return Ok(());
    };
    Err(Failure::new(
        kind,
        anyhow::anyhow!(
            "the daemon answered {}: {}",
            answer.outcome.word(),
            answer.message
        ),
    ))
}

/// Reads the config as every form does: `--config`, `$HAVIP_AGENT_CONFIG` or the default; with privileges
/// its caller lacks (`AT_SECURE`), only the root-owned default.
fn load_config(args: &Options) -> Result<(PathBuf, Config), Failure> {
    let path = resolve_path(
        args.config.as_deref(),
        std::env::var(crate::config::CONFIG_ENV).ok().as_deref(),
    );
    // With file capabilities (or setuid) the caller is weaker than this process: it must not choose
    // the config (and so the VIP, the interface and the lock directory).
    let path = crate::privs::trusted_config(
        &path,
        std::path::Path::new(crate::privs::TRUSTED_CONFIG_PATH),
        crate::privs::at_secure(),
    )
    .map_err(permanent)?;
    let cfg = Config::load(&path).map_err(permanent)?;
    Ok((path, cfg))
}

/// `--dry-run`'s line about the daemon: whether it answers on its control socket (a `ping`, which changes
/// nothing), i.e. whether Sentinel's calls would be handed to it.
async fn print_daemon(cfg: &Config) {
    let socket = &cfg.control_socket();
    let ping = crate::control::ask(
        socket,
        &crate::control::Request::Ping,
        Duration::from_secs(2),
    )
    .await;
    match ping {
        Ok(a) if a.outcome == crate::control::Outcome::Pong => println!(
            "daemon: answers on {}: Sentinel's calls are handed to it ({})",
            socket.display(),
            a.message
        ),
        Ok(a) => println!(
            "daemon: unexpected answer on {}: {}",
            socket.display(),
            a.line().trim_end()
        ),
        Err(e) => println!(
            "daemon: not reachable ({e}): Sentinel's calls act on their own and need the capabilities"
        ),
    }
}

/// The operator form: refuses (exit 2) when the Sentinels name another master, unless `--force`.
async fn operator(
    args: &Options,
    req: &Request,
    one: &OneShot,
    view: &MasterView,
    claim_wanted: bool,
) -> Result<(), Failure> {
    let named = view.newest.as_ref().map(|n| n.config());
    if !args.force {
        if !view.majority {
            return Err(transient(anyhow::anyhow!(
                "refusing: only {} of {} sentinels reachable, so nobody can confirm that {} is the master of {:?}; --force acts anyway",
                view.members,
                view.total,
                req.to_ip,
                req.master
            )));
        }
        match named {
            Some(c) if c.ip == req.to_ip => {}
            other => {
                return Err(permanent(anyhow::anyhow!(
                    "refusing: the sentinels name {} as the master of {:?}, not {}; --force acts anyway",
                    other.map_or_else(
                        || "no address".to_owned(),
                        |c| format!("{} (epoch {})", c.addr(), c.epoch)
                    ),
                    req.master,
                    req.to_ip
                )));
            }
        }
    } else if named.is_none_or(|c| c.ip != req.to_ip) {
        warn!(havip = %one.havip.havip_id, to = %req.to_ip, sentinels_name = ?named.map(|c| c.addr()), "--force: acting against what the sentinels say");
    }
    let action = if claim_wanted {
        Action::Claim {
            config: MasterConfig {
                ip: req.to_ip,
                port: named.map_or(6379, |c| c.port),
                epoch: named.map_or(0, |c| c.epoch),
            },
        }
    } else {
        Action::Release {
            reason: ReleaseReason::Demoted,
        }
    };
    one.act(action, named.map(|c| c.port)).await
}

/// Notification-script mode: the fence `migrate-havip` alone can give, on evidence. On a reachability event
/// it samples the Sentinels repeatedly: as soon as a majority answers, it acts on what they say (re-bind and
/// lift a pause if they name this node); if the majority stays out of sight for `fence_after` across the
/// samples, it releases the VIP and pauses writes, like the daemon (one machine, one rule).
async fn notified(args: &Options, n: Notification) -> Result<(), Failure> {
    let Some(one) = OneShot::start(args, &n.master).await? else {
        info!(event = %n.event, master = %n.master, "notification for a master without a [[havip]]: nothing to do");
        return Ok(());
    };
    let mut machine = one.machine(NOTIFY_PAUSE);
    let started = Instant::now();
    let mut samples = 0u32;
    loop {
        // A majority in sight decides at once; its absence only after every Sentinel had its chance.
        let view = one.observe(|v| v.majority).await;
        samples += 1;
        if args.dry_run {
            one.print_dry_run(&view, None);
            print_daemon(&one.boot.cfg).await;
            return Ok(());
        }
        let port = view
            .newest
            .as_ref()
            .map(|n| n.config())
            .or(machine.remembered())
            .filter(|c| c.ip == one.boot.identity.address)
            .map(|c| c.port);
        let local = one.local(port).await?;
        machine.observe(&view, local, CloudHolder::Unknown, Instant::now());
        let decision = machine.plan(std::time::SystemTime::now());
        let waited = started.elapsed();
        info!(
            event = %n.event,
            master = %n.master,
            havip = %one.havip.havip_id,
            members = view.members,
            total = view.total,
            majority = view.majority,
            bound = local.bound,
            samples,
            waited_ms = waited.as_millis() as u64,
            actions = ?decision.actions.to_vec(),
            "notification"
        );
        if view.majority || decision.fence {
            if decision.fence {
                println!(
                    "{}: fenced after {} samples over {:?}: {} of {} sentinels reachable",
                    one.havip.havip_id, samples, waited, view.members, view.total
                );
            }
            let mut decision = decision;
            if local.bound {
                // A notification re-binds a VIP a fence removed; a bound one is the reconfig script's and the
                // daemon's to claim. Re-claiming it here would keep announcing (and hold the lock) for a
                // whole claim deadline on a host Sentinel may be failing away from.
                decision
                    .actions
                    .retain(|a| !matches!(a, Action::Claim { .. }));
            }
            return one.execute(&decision, port).await;
        }
        let Some(due) = machine.fence_due_at() else {
            info!(havip = %one.havip.havip_id, "cut off from the sentinel majority, fence_after = hold: nothing to do");
            return Ok(());
        };
        if due.saturating_duration_since(started) > NOTIFY_MAX_WAIT {
            warn!(havip = %one.havip.havip_id, fence_after_s = machine.fence_after().map(|d| d.as_secs()), "cut off from the sentinel majority, but fence_after is longer than a notification may wait; the daemon fences, this call does not");
            return Ok(());
        }
        tokio::time::sleep_until(due.min(Instant::now() + SAMPLE_EVERY)).await;
    }
}

/// What one run needs: the boot, the HAVIP, and the executor (opened lazily: a dry run needs no
/// capability).
struct OneShot {
    boot: Boot,
    havip: HavipConfig,
    /// The interface, opened once: opening it drops the capabilities, so it cannot be opened again.
    net: tokio::sync::OnceCell<Arc<dyn LocalNet>>,
    /// [`MIGRATE_ENV_FILE`] beside the config.
    env_file: PathBuf,
}

/// `migrate-havip`'s own credentials file, in the config's directory: `KEY=VALUE` lines
/// (`TENCENTCLOUD_SECRET_ID`, `TENCENTCLOUD_SECRET_KEY`, optionally `TENCENTCLOUD_TOKEN`), read by the
/// command itself, so Sentinel's environment carries no key. Optional: without it the CAM role is used.
pub const MIGRATE_ENV_FILE: &str = "migrate.env";

/// The `TENCENTCLOUD_*` entries of an env file (`KEY=VALUE`, `#` comments, optional quotes). A missing
/// file is empty; an unreadable one is logged (its path, never its content) and empty.
fn read_env_file(path: &std::path::Path) -> std::collections::HashMap<String, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Default::default(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the credentials file; using the CAM role");
            return Default::default();
        }
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"').trim_matches('\'')))
        .filter(|(k, _)| k.starts_with("TENCENTCLOUD_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl OneShot {
    /// Boots (config, identity) and finds the `[[havip]]` of `master` (None if there is none).
    async fn start(args: &Options, master: &str) -> Result<Option<OneShot>, Failure> {
        let (path, cfg) = load_config(args)?;
        let env_file = path
            .parent()
            .unwrap_or(std::path::Path::new("/"))
            .join(MIGRATE_ENV_FILE);
        let Some(havip) = cfg.havip_for_master(master).cloned() else {
            return Ok(None);
        };
        for w in crate::check::exposure_warnings(&cfg) {
            warn!("{w}");
        }
        let boot = boot_with(Arc::new(cfg)).await.map_err(|e| {
            if e.is_transient() {
                transient(e)
            } else {
                permanent(e)
            }
        })?;
        Ok(Some(OneShot {
            boot,
            havip,
            net: tokio::sync::OnceCell::new(),
            env_file,
        }))
    }

    fn machine(&self, pause: Duration) -> HavipMachine {
        HavipMachine::new(Policy {
            me: self.boot.identity.address,
            master: self.havip.master.clone(),
            fence_after: self.boot.cfg.sentinel.fence_after,
            forget_after: FORGET_AFTER,
            redis_fence: self.fence(pause).is_some(),
            pause,
        })
    }

    fn fence(&self, pause: Duration) -> Option<FenceSetup> {
        FenceSetup::from_config(&self.boot.cfg, self.boot.identity.address, pause)
    }

    /// Asks every Sentinel once, returning early when `enough` says the answers so far decide.
    async fn observe(&self, enough: impl Fn(&MasterView) -> bool) -> MasterView {
        let cfg = &self.boot.cfg;
        let master = &self.havip.master;
        let asked = std::time::Instant::now();
        let snap = probe_until(
            &cfg.sentinel,
            std::slice::from_ref(master),
            &ConnectOptions::role_check(cfg),
            |s| enough(&s.view(master, std::time::Instant::now())),
        )
        .await;
        let mut view = snap.view(master, std::time::Instant::now());
        if !view.majority && view.cut_off_for.is_none() {
            // No majority answered from the moment the question was asked: that much is evidence.
            view.cut_off_for = Some(asked.elapsed());
        }
        view
    }

    /// Asks until a majority answers, at most for `wait` (see [`OneShot::observe`] for `enough`).
    async fn observe_with_majority(
        &self,
        wait: Duration,
        enough: impl Fn(&MasterView) -> bool,
    ) -> MasterView {
        let until = Instant::now() + wait;
        loop {
            let view = self.observe(&enough).await;
            if view.majority || Instant::now() + SAMPLE_EVERY > until {
                return view;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// The executor. Only a claim needs the cloud (`with_cloud`); a release or a pause must never wait for
    /// credentials (a CAM role lookup on a host that is cut off waits for the metadata timeout).
    async fn executor(
        &self,
        with_cloud: bool,
    ) -> Result<(Executor, Option<CloudProblem>), Failure> {
        let cfg = &self.boot.cfg;
        let net = self
            .net
            .get_or_try_init(|| open_interface(cfg))
            .await?
            .clone();
        let (client, problem) = if with_cloud {
            let file = read_env_file(&self.env_file);
            // Privileged (AT_SECURE): the caller's environment is the caller's, not the host's; only
            // the root-owned file (or the CAM role) names the credentials.
            let trust_env = !crate::privs::at_secure();
            let lookup = move |k: &str| {
                trust_env
                    .then(|| std::env::var(k).ok())
                    .flatten()
                    .or_else(|| file.get(k).cloned())
            };
            let cloud = self.boot.cloud(&lookup, None).await;
            (cloud.client, cloud.problem)
        } else {
            (None, None)
        };
        let claimer = Claimer::new(
            client,
            net,
            self.boot.identity.instance_id.clone(),
            cfg.node.instance_type,
            cfg.announce.clone(),
            cfg.cloud.timeout.get(),
        )
        .with_locks(&cfg.claim.lock_dir, crate::claim::LockPolicy::Required);
        Ok((Executor::new(claimer, self.fence(NOTIFY_PAUSE)), problem))
    }

    /// This node's side: the binding (needs the interface) and any write pause in force.
    async fn local(&self, port: Option<u16>) -> Result<Local, Failure> {
        let net = KernelNet::open(&self.boot.cfg.node.interface)
            .await
            .map_err(net_failure)?;
        let bound = net.is_bound(self.havip.vip).await.map_err(net_failure)?;
        let pause_left = self.fence(NOTIFY_PAUSE).and_then(|f| f.pause_left(port));
        Ok(Local { bound, pause_left })
    }

    /// Carries out a decision's actions in order.
    async fn execute(&self, d: &Decision, port: Option<u16>) -> Result<(), Failure> {
        if d.actions.is_empty() {
            println!(
                "{}: nothing to do ({})",
                self.havip.havip_id,
                if d.desired {
                    "this node holds the vip"
                } else {
                    "the vip is not on this node"
                }
            );
        }
        for a in d.actions.iter() {
            self.act(a, port).await?;
        }
        Ok(())
    }

    async fn act(&self, action: Action, port: Option<u16>) -> Result<(), Failure> {
        let id = &self.havip.havip_id;
        match action {
            Action::Claim { .. } => {
                let (exec, problem) = self.executor(true).await?;
                self.claim(&exec, problem).await
            }
            Action::Release { reason } => {
                let (exec, _) = self.executor(false).await?;
                let change = exec.release(&self.havip).await.map_err(claim_failure)?;
                let what = if change == Change::Applied {
                    "removed"
                } else {
                    "was not bound: nothing to do"
                };
                info!(havip = %id, vip = %self.havip.vip, reason = reason.as_str(), "released: {what}");
                println!(
                    "{id}: released ({}): vip {} {what} on {}",
                    reason.as_str(),
                    self.havip.vip,
                    self.boot.cfg.node.interface
                );
                Ok(())
            }
            Action::PauseWrites | Action::Unpause => {
                if self.fence(NOTIFY_PAUSE).is_none() {
                    return Ok(());
                }
                let (exec, _) = self.executor(false).await?;
                let unpause = action == Action::Unpause;
                let r = if unpause {
                    exec.unpause(port).await
                } else {
                    exec.pause(port).await
                };
                match r {
                    Ok(redis) if unpause => println!("{id}: write pause lifted on {redis}"),
                    Ok(redis) => println!("{id}: writes paused on {redis} for {NOTIFY_PAUSE:?}"),
                    Err(e) => warn!(havip = %id, error = %e, "redis fence command failed"),
                }
                Ok(())
            }
            Action::AbortClaim | Action::Reannounce => Ok(()),
        }
    }

    async fn claim(&self, exec: &Executor, problem: Option<CloudProblem>) -> Result<(), Failure> {
        let cfg = &self.boot.cfg;
        let havip = &self.havip;
        let deadline = Instant::now() + cfg.claim.deadline.get();
        let out = exec
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
        if exec.claimer().cloud().is_none() {
            warn!(havip = %havip.havip_id, "vip bound and announced locally, but no cloud client: the drift range and the move could not be confirmed");
            let e = anyhow::anyhow!(
                "{}",
                problem
                    .as_ref()
                    .map_or_else(|| "no cloud client".to_owned(), |p| p.to_string())
            )
            .context(format!(
                "{}: vip {} bound and announced locally, but the cloud could not be used",
                havip.havip_id, havip.vip
            ));
            return Err(if problem.is_some_and(|p| p.is_transient()) {
                transient(e)
            } else {
                permanent(e)
            });
        }
        if out.already_held {
            println!(
                "{}: vip {} already held by this node ({}): nothing to do",
                havip.havip_id, havip.vip, self.boot.identity.instance_id
            );
            return Ok(());
        }
        if out.confirmed {
            println!(
                "{}: vip {} claimed by {}{}; {} GARP frames; cloud confirms",
                havip.havip_id,
                havip.vip,
                self.boot.identity.instance_id,
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
        if let Some(p) = problem.filter(|p| p.is_transient()) {
            // The CAM role was deferred (metadata service down, see `boot`): a retry may find it.
            return Err(transient(anyhow::Error::from(p).context(msg)));
        }
        match out.cloud_error {
            Some(e) if e.is_auth() || !e.is_retryable() => {
                Err(permanent(anyhow::Error::from(e).context(msg)))
            }
            Some(e) => Err(transient(anyhow::Error::from(e).context(msg))),
            None => Err(transient(anyhow::anyhow!(
                "{msg}: DescribeHaVips did not name {} before the {} deadline",
                self.boot.identity.instance_id,
                cfg.claim.deadline
            ))),
        }
    }

    fn print_dry_run(&self, view: &MasterView, req: Option<&Request>) {
        let cfg = &self.boot.cfg;
        let me = &self.boot.identity;
        println!("dry run: nothing will be changed");
        println!(
            "node: instance {} address {} interface {}",
            me.instance_id, me.address, cfg.node.interface
        );
        println!(
            "havip {} vip {} master {} scope {:?}",
            self.havip.havip_id, self.havip.vip, self.havip.master, self.havip.scope
        );
        println!(
            "sentinels: {} of {} reachable and counted{}",
            view.members,
            view.total,
            if view.outsiders.is_empty() {
                String::new()
            } else {
                format!("; not counted: {}", view.outsiders.join(", "))
            }
        );
        match &view.newest {
            Some(n) => println!(
                "sentinels name {} as master of {} (epoch {})",
                n.addr(),
                self.havip.master,
                n.epoch
            ),
            None => println!(
                "sentinels name no corroborated master of {}",
                self.havip.master
            ),
        }
        if let Some(p) = &view.pending {
            println!(
                "pending (not corroborated): {} epoch {} reported by {}",
                p.addr(),
                p.epoch,
                p.reported_by.join(", ")
            );
        }
        let names_me = view.newest.as_ref().is_some_and(|n| n.ip == me.address);
        let vip = &self.havip.vip;
        let ifname = &cfg.node.interface;
        match (view.majority, names_me) {
            (false, _) => {
                println!("plan: change nothing: no majority of the sentinels is in sight")
            }
            (true, true) => {
                println!("plan: claim");
                println!("1. bind {vip} on {ifname} (netlink; a no-op if already bound)");
                println!(
                    "2. DescribeHaVips {}; AssociateHaVipInstance {} only if it is not in the drift range",
                    self.havip.havip_id, me.instance_id
                );
                println!(
                    "3. gratuitous ARP for {}: {} rounds (request + reply) over {}",
                    vip.addr, cfg.announce.burst, cfg.announce.spread
                );
                println!(
                    "4. confirm with DescribeHaVips that the holder is {}, re-announcing until {}",
                    me.instance_id, cfg.claim.deadline
                );
                if self.havip.scope == crate::config::Scope::Exclusive {
                    println!(
                        "5. remove every other instance from the drift range (scope exclusive)"
                    );
                }
            }
            (true, false) => {
                println!("plan: release");
                println!("1. remove {vip} from {ifname} if it is bound (no API call)");
            }
        }
        if let Some(r) = req
            && (r.to_ip == me.address) != names_me
            && r.sentinel.is_some()
        {
            println!(
                "the call's <to-ip> {} is superseded by what the sentinels say",
                r.to_ip
            );
        }
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

/// Checks the two capabilities, opens `node.interface` (netlink + packet socket), then drops every
/// capability but `CAP_NET_ADMIN`, which goes after the one address change (see
/// [`crate::net::caps::DropAfterChange`]). Called once per run: the capabilities are gone afterwards.
async fn open_interface(cfg: &Config) -> Result<Arc<dyn LocalNet>, Failure> {
    crate::net::require_capabilities().map_err(permanent)?;
    let net = KernelNet::open(&cfg.node.interface)
        .await
        .map_err(net_failure)?;
    net.open_announcer().map_err(net_failure)?;
    crate::net::caps::drop_capabilities(
        crate::net::caps::NET_ADMIN_MASK,
        "after opening the sockets",
    )
    .map_err(permanent)?;
    Ok(Arc::new(crate::net::caps::DropAfterChange::new(Arc::new(
        net,
    ))))
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
    fn the_credentials_file_gives_only_tencentcloud_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(MIGRATE_ENV_FILE);
        std::fs::write(
            &f,
            "# keys\nTENCENTCLOUD_SECRET_ID=AKIDx\nTENCENTCLOUD_SECRET_KEY=\"k y\"\nPATH=/evil\nnot a line\n",
        )
        .unwrap();
        let got = read_env_file(&f);
        assert_eq!(got.len(), 2, "{:?}", got.keys());
        assert_eq!(got["TENCENTCLOUD_SECRET_ID"], "AKIDx");
        assert_eq!(got["TENCENTCLOUD_SECRET_KEY"], "k y");
        assert!(read_env_file(&dir.path().join("absent")).is_empty());
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

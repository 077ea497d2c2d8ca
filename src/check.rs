//! `havip-agent check`: is this node ready to run the agent?
//!
//! Validates the config, resolves credentials and this node's identity, reads every HAVIP from the cloud and
//! asks every Sentinel about every master. Owns the report and its exit code (0 when there is no problem,
//! 2 otherwise with one line per problem; warnings are printed but keep 0), and the list of settings that
//! send secrets in clear ([`cleartext_warnings`], also logged at the start of `run` and `migrate-havip`).
//! It changes nothing.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::info;

use crate::boot::{Boot, BootError};
use crate::cloud::{EipState, HaVip, eip_state};
use crate::config::{Config, HavipConfig, InstanceType, Scope};
use crate::sentinel::conn::ConnectOptions;
use crate::sentinel::probe;

/// The result of a check: what was found and what is wrong.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Informational lines.
    pub lines: Vec<String>,
    /// One line per warning: works, but weaker than it looks. Does not change the exit code.
    pub warnings: Vec<String>,
    /// One line per problem, each naming the thing and what is wrong.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// 0 when healthy, 2 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.problems.is_empty() { 0 } else { 2 }
    }

    /// Writes the report: the lines, then `warning: ...` lines, then `problem: ...` lines.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        for l in &self.lines {
            writeln!(out, "{l}")?;
        }
        for w in &self.warnings {
            writeln!(out, "warning: {w}")?;
        }
        if self.problems.is_empty() && self.warnings.is_empty() {
            writeln!(out, "ok: everything is healthy")?;
        } else if self.problems.is_empty() {
            writeln!(
                out,
                "ok: no problems ({} warning(s) above)",
                self.warnings.len()
            )?;
        } else {
            for p in &self.problems {
                writeln!(out, "problem: {p}")?;
            }
        }
        Ok(())
    }
}

/// Runs every check. `env` reads environment variables (for the credential chain).
pub async fn check(
    config_path: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Send + Sync),
) -> CheckReport {
    let mut r = CheckReport::default();
    let cfg = match Config::load(config_path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            r.problems.push(e.to_string());
            return r;
        }
    };
    r.lines
        .push(format!("config {}: valid", config_path.display()));
    r.warnings.extend(cleartext_warnings(&cfg));
    // The same start-up path as every front door; without an identity the cloud part is skipped.
    let boot = match crate::boot::boot_with(cfg.clone()).await {
        Ok(b) => {
            r.lines.push(format!(
                "node: instance {} address {} interface {}",
                b.identity.instance_id, b.identity.address, cfg.node.interface
            ));
            if cfg.node.instance_type == InstanceType::Eni {
                check_eni(&b, &mut r).await;
            }
            Some(b)
        }
        Err(e @ BootError::Metadata(_)) => {
            r.problems.push(e.to_string());
            return r;
        }
        Err(e) => {
            r.problems.push(format!("node identity: {e}"));
            None
        }
    };
    if let Some(b) = &boot {
        check_cloud(&cfg, b, env, &mut r).await;
    }
    check_sentinels(&cfg, &mut r).await;
    r
}

/// Settings that send a credential in clear: an `http://` VPC endpoint (the signed request carries the
/// SecretId and, with a CAM role, the token) or alert webhook (WeCom puts its key in the URL, so the URL
/// itself is never printed). Accepted, since labs and fakes use them; said once at start and by `check`.
pub fn cleartext_warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let endpoint = cfg.cloud.endpoint_url();
    if endpoint.to_ascii_lowercase().starts_with("http://") {
        out.push(format!(
            "cloud.endpoint {endpoint} is http://: the SecretId, the signature and any role token travel \
             in clear; use https:// outside a lab"
        ));
    }
    for (i, a) in cfg.alerts.iter().enumerate() {
        if a.url.expose().to_ascii_lowercase().starts_with("http://") {
            out.push(format!(
                "alert[{i}].url is http://: the webhook's key or token in the URL travels in clear; use \
                 https:// outside a lab"
            ));
        }
    }
    out
}

/// ENI mode: a primary ENI cannot be in a drift range (HAVIP console guide 215/36694: "主网卡暂不支持绑定"),
/// so the agent could never move the vip to it. Told by the metadata: the ENI of the instance's primary
/// MAC (`mac`, eth0's device).
async fn check_eni(b: &Boot, r: &mut CheckReport) {
    let eni = &b.identity.instance_id;
    match crate::node::is_primary_eni(&b.metadata, eni).await {
        Ok(Some(true)) => r.problems.push(format!(
            "node.instance_id {eni} is this instance's primary ENI: a primary ENI cannot join a HAVIP's \
             drift range (HAVIP console guide: primary ENIs cannot be bound), so the vip can never move \
             here; attach a secondary ENI, set node.interface to it and node.instance_id to its id (or \
             \"auto\")"
        )),
        Ok(Some(false)) => r
            .lines
            .push(format!("node: {eni} is a secondary ENI (not the primary)")),
        Ok(None) => r.lines.push(format!(
            "node: cannot tell whether {eni} is the primary ENI (the metadata lists no eni-id for the primary MAC)"
        )),
        Err(e) => r.lines.push(format!(
            "node: cannot tell whether {eni} is the primary ENI: {e}"
        )),
    }
}

/// What `CheckAssociate` off means for this HAVIP: a problem with `scope = "exclusive"` (its fence does
/// nothing), a warning with `scope = "inclusive"` (the range limits nobody). It cannot be turned on later
/// (`ModifyHaVipAttribute` takes only the name), hence the fix: a new HAVIP.
fn check_associate_off(havip_id: &str, scope: Scope, r: &mut CheckReport) {
    const FIX: &str = "create a new HAVIP with CheckAssociate on (the console does by default; with \
         the API or tccli pass CheckAssociate=true to CreateHaVip) and point havip_id at it: it cannot be \
         turned on later";
    match scope {
        Scope::Exclusive => r.problems.push(format!(
            "{havip_id}: CheckAssociate is off, so any instance's gratuitous ARP takes the vip and \
             narrowing the drift range (scope = \"exclusive\") fences nothing: a stale master can take \
             the vip back; {FIX}"
        )),
        Scope::Inclusive => r.warnings.push(format!(
            "{havip_id}: CheckAssociate is off, so any instance's gratuitous ARP in the VPC takes the vip, \
             not only the instances in the drift range; {FIX}"
        )),
    }
}

async fn check_cloud(
    cfg: &Config,
    boot: &Boot,
    env: &(dyn Fn(&str) -> Option<String> + Send + Sync),
    r: &mut CheckReport,
) {
    let cloud = boot.cloud(env, None).await;
    if let Some(p) = &cloud.problem {
        r.problems.push(p.to_string());
    }
    let Some(client) = cloud.client else {
        return;
    };
    if cloud.problem.is_none() {
        let source = client.credentials().source().to_string();
        info!(source = %source, "credentials resolved");
        r.lines.push(format!("credentials: {source}"));
    }
    for h in &cfg.havips {
        let deadline = Instant::now() + cfg.cloud.timeout.get() * 2;
        match client.describe_havip(&h.havip_id, deadline).await {
            Ok(v) => {
                let in_range = v.in_range(&boot.identity.instance_id);
                let holder = match (&v.instance_id, &v.network_interface_id) {
                    (Some(i), Some(e)) => format!("{i} ({e})"),
                    (Some(i), None) => i.clone(),
                    (None, _) => "(none)".to_owned(),
                };
                r.lines.push(format!(
                    "{}: vip {} holder {} drift-range limiting {} this node in range {}",
                    h.havip_id,
                    v.vip,
                    holder,
                    if v.check_associate { "on" } else { "off" },
                    if in_range {
                        "yes"
                    } else {
                        "no (the agent adds it when it claims)"
                    }
                ));
                if !v.check_associate {
                    check_associate_off(&h.havip_id, h.scope, r);
                }
                let ty = cfg.node.instance_type;
                let other = v
                    .associations
                    .iter()
                    .find(|a| !a.instance_type.eq_ignore_ascii_case(ty.as_api_str()));
                if let Some(a) = other.filter(|_| !in_range) {
                    // One drift range holds CVM or ENI entries, not both: the claim's association would fail.
                    r.problems.push(format!(
                        "{}: the drift range lists {} {} but this node is node.instance_type = \"{}\": \
                         a range holds either CVM or ENI entries, so the agent cannot add this node; \
                         use the same instance_type on every node (or remove the other entries)",
                        h.havip_id,
                        a.instance_type,
                        a.instance_id,
                        ty.as_api_str()
                    ));
                }
                if v.vip != h.vip.addr.to_string() {
                    r.problems.push(format!(
                        "{}: the cloud says its vip is {} but havip.vip is {}",
                        h.havip_id, v.vip, h.vip
                    ));
                }
                check_eip(h, &v, r);
            }
            Err(e) => r.problems.push(format!("{}: {e}", h.havip_id)),
        }
    }
}

/// The EIP of one HAVIP: the configured `eip` must be what the cloud reports as `AddressIp`. An EIP the
/// config does not name is only reported: the agent leaves it alone.
fn check_eip(h: &HavipConfig, v: &HaVip, r: &mut CheckReport) {
    let id = &h.havip_id;
    let Some(want) = h.eip else {
        if let Some(cloud) = &v.address_ip {
            r.lines.push(format!(
                "{id}: eip {cloud} bound (havip.eip is not set: the agent leaves it alone)"
            ));
        }
        return;
    };
    match eip_state(want, v) {
        EipState::Bound => r.lines.push(format!("{id}: eip {want} bound")),
        EipState::Missing => r.problems.push(format!(
            "{id}: eip {want} is not bound to the havip (the cloud reports no EIP on it): the agent binds it when it starts; or bind it now in the console or with HaVipAssociateAddressIp (HaVipId {id}, AddressIp {want})"
        )),
        EipState::Other(bound) => r.problems.push(format!(
            "{id}: the havip has eip {bound}, not havip.eip {want}: the agent never replaces an EIP; unbind {bound} in the console or with HaVipDisassociateAddressIp, or set eip = \"{bound}\""
        )),
    }
}

/// Asks every Sentinel (the one-shot probe, read with the daemon's rules) and reports per Sentinel and per
/// master; a Sentinel that does not count (not listed by its peers) and a lost majority are problems.
async fn check_sentinels(cfg: &Config, r: &mut CheckReport) {
    let masters: Vec<String> = cfg.havips.iter().map(|h| h.master.clone()).collect();
    let snap = probe(&cfg.sentinel, &masters, &ConnectOptions::role_check(cfg)).await;
    for s in &snap.sentinels {
        let addr = &s.addr;
        if !s.reachable {
            r.problems.push(format!(
                "sentinel {addr}: unreachable: {}",
                s.error.as_deref().unwrap_or("no answer")
            ));
            continue;
        }
        let rtt = match crate::sentinel::conn::ping(addr, &cfg.sentinel).await {
            Ok(rtt) => format!("{:.1} ms", rtt.as_secs_f64() * 1e3),
            Err(e) => format!("ping failed: {e}"),
        };
        r.lines.push(format!("sentinel {addr}: reachable ({rtt})"));
        for h in &cfg.havips {
            match s.masters.get(&h.master) {
                Some(m) => r.lines.push(format!(
                    "sentinel {addr}: {} at {}:{} config-epoch {} flags {}",
                    h.master,
                    m.ip,
                    m.port,
                    m.config_epoch,
                    m.flags.join(",")
                )),
                None => r.problems.push(format!(
                    "sentinel {addr}: {}: {}",
                    h.master,
                    s.error.as_deref().unwrap_or("no answer for this master")
                )),
            }
        }
    }
    let now = std::time::Instant::now();
    for h in &cfg.havips {
        let view = snap.view(&h.master, now);
        for o in &view.outsiders {
            r.problems.push(format!(
                "sentinel {o}: {}: not listed by the other sentinels (SENTINEL SENTINELS): it answers for another deployment under the same master name, so it is not counted and cannot move the vip; fix sentinel.addresses",
                h.master
            ));
        }
        if let Some(p) = &view.pending {
            r.lines.push(format!(
                "{}: {} epoch {} reported only by {} and not corroborated yet",
                h.master,
                p.addr(),
                p.epoch,
                p.reported_by.join(", ")
            ));
        }
        if !view.majority {
            r.problems.push(format!(
                "sentinel: {}: only {} of {} reachable and counted: the agent acts only while it reaches a majority",
                h.master, view.members, view.total
            ));
        }
    }
    if cfg.havips.is_empty() && !snap.has_majority() {
        r.problems.push(format!(
            "sentinel: only {} of {} reachable: the agent acts only while it reaches a majority",
            snap.reachable(),
            snap.total
        ));
    }
}

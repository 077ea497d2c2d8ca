//! `havip-agent check`: is this node ready to run the agent?
//!
//! Validates the config, resolves credentials and this node's identity, reads every HAVIP from the cloud and
//! asks every Sentinel about every master. Owns the report and its exit code (0 when there is no problem,
//! 2 otherwise with one line per problem; warnings are printed but keep 0), and the judge of what the
//! config exposes ([`exposure`]: secrets in clear, unchecked TLS, readable key files; also logged at the
//! start of `run` and `migrate-havip` through [`exposure_warnings`]).
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
    /// No problem was found (warnings allowed).
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
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
    let exposed = exposure(&cfg);
    r.warnings.extend(exposed.warnings);
    r.problems.extend(exposed.problems);
    check_control(&cfg, &mut r);
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

/// What the config exposes: settings that weaken a link (warnings) and files holding keys that others can
/// read (problems in `check`). The one judge of both, for `check` and for the start of `run` and
/// `migrate-havip` (which log all of it as warnings, see [`exposure_warnings`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// Works, but a credential travels in clear or to an unverified peer.
    pub warnings: Vec<String>,
    /// A file holding keys is readable by users who should not read it.
    pub problems: Vec<String>,
}

/// Judges `cfg` (see [`Exposure`]).
///
/// Warnings: an `http://` VPC endpoint (the signed request carries the SecretId and, with a CAM role, the
/// token) or alert webhook (WeCom puts its key in the URL, so the URL itself is never printed); TLS without
/// certificate checks (`sentinel.tls.insecure`, `redis.tls_insecure`: anyone on the path can pose as the
/// peer and read the ACL password). Accepted, since labs and fakes use them.
///
/// Also a warning: a `claim.lock_dir` that group or others can write without the sticky bit.
///
/// Problems: the environment file next to the config (`<config dir>/env`, the packaged unit's
/// `EnvironmentFile=/etc/havip-agent/env` with `TENCENTCLOUD_SECRET_KEY`) readable by group or others,
/// and a TLS client key (`sentinel.tls.key_file`) readable by others. The key may be group-readable:
/// `migrate-havip` reads it through the `havip-agent` group. The config itself is refused at load when it
/// holds a secret and group or others can read it (`Config::load`).
pub fn exposure(cfg: &Config) -> Exposure {
    let mut out = Exposure::default();
    let endpoint = cfg.cloud.endpoint_url();
    if endpoint.to_ascii_lowercase().starts_with("http://") {
        out.warnings.push(format!(
            "cloud.endpoint {endpoint} is http://: the SecretId, the signature and any role token travel \
             in clear; use https:// outside a lab"
        ));
    }
    for (i, a) in cfg.alerts.iter().enumerate() {
        if a.url.expose().to_ascii_lowercase().starts_with("http://") {
            out.warnings.push(format!(
                "alert[{i}].url is http://: the webhook's key or token in the URL travels in clear; use \
                 https:// outside a lab"
            ));
        }
    }
    if cfg.sentinel.tls.as_ref().is_some_and(|t| t.insecure) {
        out.warnings.push(
            "sentinel.tls.insecure = true: the Sentinels' certificates are not checked, so anyone on the \
             path can pose as a Sentinel, read the ACL password and steer the vip; set ca_file instead \
             outside a lab"
                .to_owned(),
        );
    }
    if cfg.redis.as_ref().is_some_and(|r| r.tls && r.tls_insecure) {
        out.warnings.push(
            "redis.tls_insecure = true: the local Redis' certificate is not checked, so anyone on the \
             path can pose as it and read its password; use the CA in sentinel.tls.ca_file instead \
             outside a lab"
                .to_owned(),
        );
    }
    let lock_dir = &cfg.claim.lock_dir;
    if let Some(mode) = mode_of(lock_dir)
        && mode & 0o022 != 0
        && mode & 0o1000 == 0
    {
        out.warnings.push(format!(
            "claim.lock_dir {} is writable by group or others without the sticky bit (mode {:o}): any \
             of them can delete a held lock file and let a second claim run at once; run chmod +t {} \
             (the package creates it 3770)",
            lock_dir.display(),
            mode & 0o7777,
            lock_dir.display()
        ));
    }
    let env_file = env_file_of(&cfg.source);
    if let Some(mode) = mode_of(&env_file)
        && mode & 0o077 != 0
    {
        out.problems.push(format!(
            "{} (cloud keys for the unit's EnvironmentFile=) is readable by group or others (mode {:o}): \
             run chmod 600 {}",
            env_file.display(),
            mode & 0o777,
            env_file.display()
        ));
    }
    if let Some(key) = cfg.sentinel.tls.as_ref().and_then(|t| t.key_file.as_ref())
        && let Some(mode) = mode_of(key)
        && mode & 0o007 != 0
    {
        out.problems.push(format!(
            "sentinel.tls.key_file {} (the TLS client key) is readable by others (mode {:o}): run \
             chmod 640 {} (owner root, group havip-agent)",
            key.display(),
            mode & 0o777,
            key.display()
        ));
    }
    out
}

/// Everything [`exposure`] finds, as warnings: logged once at the start of `run` and `migrate-havip`
/// (`check` reports the same findings, its problems as `problem:` lines).
pub fn exposure_warnings(cfg: &Config) -> Vec<String> {
    let e = exposure(cfg);
    e.warnings.into_iter().chain(e.problems).collect()
}

/// The packaged environment file beside `config`: `/etc/havip-agent/config.toml` → `/etc/havip-agent/env`.
pub fn env_file_of(config: &Path) -> std::path::PathBuf {
    config.parent().unwrap_or_else(|| Path::new("")).join("env")
}

/// The permission bits of `path` (following links, as a reader would), or `None` when it does not exist.
fn mode_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
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

/// The control socket `run` will create: its directory must exist and its group must exist, or Sentinel's
/// calls cannot reach the daemon (and fail without capabilities). `check` needs no daemon to say so.
pub fn check_control(cfg: &Config, r: &mut CheckReport) {
    let socket = &cfg.control_socket();
    let dir = socket.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        r.problems.push(format!(
            "agent.control_socket {}: its directory {} does not exist (the unit's RuntimeDirectory and the tmpfiles.d entry create /run/havip-agent): migrate-havip run by Sentinel cannot reach the daemon",
            socket.display(),
            dir.display()
        ));
    }
    match crate::control::group_id(&cfg.agent.control_group) {
        Ok(Some(_)) => r.lines.push(format!(
            "control socket: {} (mode 0660, group {}), for migrate-havip run by Sentinel",
            socket.display(),
            cfg.agent.control_group
        )),
        Ok(None) => r.problems.push(format!(
            "agent.control_group {:?}: no such group (the package creates havip-agent): the daemon cannot give its control socket to Sentinel's user",
            cfg.agent.control_group
        )),
        Err(e) => r.problems.push(format!(
            "agent.control_group {:?}: cannot look it up: {e}",
            cfg.agent.control_group
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config_in(dir: &Path, sentinel_tls: &str, redis: &str) -> Config {
        let path = dir.join("config.toml");
        let text = format!(
            "[cloud]\nregion = \"ap-guangzhou\"\n[node]\ninstance_id = \"ins-a\"\naddress = \"198.18.0.11\"\n\
             interface = \"eth0\"\n[sentinel]\naddresses = [\"198.18.0.1:26379\"]\n{sentinel_tls}\n{redis}\n\
             [[havip]]\nmaster = \"m\"\nhavip_id = \"havip-1\"\nvip = \"198.18.0.100/24\"\n"
        );
        Config::parse_str(&text, &path).unwrap()
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn insecure_tls_is_a_warning_for_sentinel_and_for_redis_each_by_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let secure = config_in(dir.path(), "[sentinel.tls]\nca_file = \"/ca.pem\"", "");
        assert_eq!(exposure(&secure), Exposure::default());

        let sentinel_only = config_in(
            dir.path(),
            "[sentinel.tls]\ninsecure = true",
            "[redis]\ntls = true",
        );
        let e = exposure(&sentinel_only);
        assert_eq!(e.warnings.len(), 1, "{e:?}");
        assert!(
            e.warnings[0].starts_with("sentinel.tls.insecure = true")
                && e.warnings[0].contains("not checked"),
            "{e:?}"
        );

        let both = config_in(
            dir.path(),
            "[sentinel.tls]\ninsecure = true",
            "[redis]\ntls = true\ntls_insecure = true",
        );
        let e = exposure(&both);
        assert!(
            e.warnings
                .iter()
                .any(|w| w.starts_with("redis.tls_insecure = true")),
            "{e:?}"
        );
        assert_eq!(exposure_warnings(&both).len(), 2, "logged at start too");
    }

    #[test]
    fn a_control_socket_in_a_missing_directory_or_with_a_missing_group_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config_in(dir.path(), "", "");
        cfg.agent.control_socket = Some(dir.path().join("sock"));
        cfg.agent.control_group = "root".into();
        let mut r = CheckReport::default();
        check_control(&cfg, &mut r);
        assert!(r.problems.is_empty(), "{:?}", r.problems);

        cfg.agent.control_socket = Some(dir.path().join("absent/control.sock"));
        cfg.agent.control_group = "no-such-group-hv".into();
        let mut r = CheckReport::default();
        check_control(&cfg, &mut r);
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert!(
            r.problems[0].starts_with("agent.control_socket")
                && r.problems[0].contains(&format!(
                    "{} does not exist",
                    dir.path().join("absent").display()
                )),
            "{}",
            r.problems[0]
        );
        assert!(
            r.problems[1].contains("\"no-such-group-hv\": no such group"),
            "{}",
            r.problems[1]
        );
    }

    #[test]
    fn a_shared_lock_directory_without_the_sticky_bit_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).unwrap();
        let mut cfg = config_in(dir.path(), "", "");
        cfg.claim.lock_dir = locks.clone();

        chmod(&locks, 0o2770);
        let e = exposure(&cfg);
        assert_eq!(e.warnings.len(), 1, "{e:?}");
        assert!(
            e.warnings[0].starts_with("claim.lock_dir") && e.warnings[0].contains("chmod +t"),
            "{e:?}"
        );
        chmod(&locks, 0o3770);
        assert_eq!(exposure(&cfg), Exposure::default());
        chmod(&locks, 0o700);
        assert_eq!(exposure(&cfg), Exposure::default());
    }

    #[test]
    fn a_readable_env_file_or_tls_key_is_a_problem_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----").unwrap();
        let cfg = config_in(
            dir.path(),
            &format!(
                "[sentinel.tls]\ncert_file = \"/c.pem\"\nkey_file = \"{}\"",
                key.display()
            ),
            "",
        );
        let env = dir.path().join("env");
        std::fs::write(&env, "TENCENTCLOUD_SECRET_KEY=envSecretNeverShown").unwrap();

        chmod(&env, 0o600);
        chmod(&key, 0o640);
        assert_eq!(exposure(&cfg), Exposure::default(), "0600 env, 0640 key");

        chmod(&env, 0o640);
        chmod(&key, 0o644);
        let e = exposure(&cfg);
        assert_eq!(e.problems.len(), 2, "{e:?}");
        assert!(
            e.problems[0].contains(&env.display().to_string())
                && e.problems[0].contains("mode 640")
                && e.problems[0].contains("chmod 600"),
            "{e:?}"
        );
        assert!(
            e.problems[1].starts_with("sentinel.tls.key_file")
                && e.problems[1].contains("mode 644"),
            "{e:?}"
        );
        assert!(!format!("{e:?}").contains("envSecretNeverShown"));
        assert_eq!(exposure_warnings(&cfg).len(), 2, "warnings at start");
    }
}

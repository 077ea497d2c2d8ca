//! `havip-agent check`: is this node ready to run the agent?
//!
//! Validates the config, resolves credentials and this node's identity, reads every HAVIP from the cloud and
//! asks every Sentinel about every master. Owns the report and its exit code (0 only when everything is
//! healthy, 2 otherwise with one line per problem). It changes nothing.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use crate::cloud::VpcClient;
use crate::config::Config;
use crate::credentials::CredentialProvider;
use crate::metadata::MetadataClient;
use crate::node::resolve_identity;

/// The result of a check: what was found and what is wrong.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Informational lines.
    pub lines: Vec<String>,
    /// One line per problem, each naming the thing and what is wrong.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// 0 when healthy, 2 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.problems.is_empty() { 0 } else { 2 }
    }

    /// Writes the report: the lines, then `problem: ...` lines.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        for l in &self.lines {
            writeln!(out, "{l}")?;
        }
        if self.problems.is_empty() {
            writeln!(out, "ok: everything is healthy")?;
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
        Ok(c) => c,
        Err(e) => {
            r.problems.push(e.to_string());
            return r;
        }
    };
    r.lines
        .push(format!("config {}: valid", config_path.display()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clock = crate::clock::system();
    let metadata = match MetadataClient::new(&cfg.cloud.metadata_endpoint, Duration::from_secs(2)) {
        Ok(m) => m,
        Err(e) => {
            r.problems.push(format!("cloud.metadata_endpoint: {e}"));
            return r;
        }
    };
    let identity = match resolve_identity(&cfg, &metadata).await {
        Ok(id) => {
            r.lines.push(format!(
                "node: instance {} address {} interface {}",
                id.instance_id, id.address, cfg.node.interface
            ));
            Some(id)
        }
        Err(e) => {
            r.problems.push(format!("node identity: {e}"));
            None
        }
    };

    let cloud = match CredentialProvider::resolve(env, &cfg.cloud, &metadata, clock.clone()).await {
        Ok(creds) => {
            r.lines.push(format!("credentials: {}", creds.source()));
            info!(source = %creds.source(), "credentials resolved");
            match VpcClient::new(&cfg.cloud, creds, clock) {
                Ok(c) => Some(c),
                Err(e) => {
                    r.problems.push(format!("cloud: {e}"));
                    None
                }
            }
        }
        Err(e) => {
            r.problems.push(format!("credentials: {e}"));
            None
        }
    };

    if let Some(cloud) = &cloud {
        for h in &cfg.havips {
            let deadline = Instant::now() + cfg.cloud.timeout.get() * 2;
            match cloud.describe_havip(&h.havip_id, deadline).await {
                Ok(v) => {
                    let in_range = identity.as_ref().map(|id| v.in_range(&id.instance_id));
                    r.lines.push(format!(
                        "{}: vip {} holder {} drift-range limiting {} this node in range {}",
                        h.havip_id,
                        v.vip,
                        v.instance_id.as_deref().unwrap_or("(none)"),
                        if v.check_associate { "on" } else { "off" },
                        match in_range {
                            Some(true) => "yes",
                            Some(false) => "no (the agent adds it when it claims)",
                            None => "unknown",
                        }
                    ));
                    if v.vip != h.vip.addr.to_string() {
                        r.problems.push(format!(
                            "{}: the cloud says its vip is {} but havip.vip is {}",
                            h.havip_id, v.vip, h.vip
                        ));
                    }
                }
                Err(e) => r.problems.push(format!("{}: {e}", h.havip_id)),
            }
        }
    }

    let mut reachable = 0;
    for addr in &cfg.sentinel.addresses {
        match crate::sentinel::conn::ping(addr, &cfg.sentinel).await {
            Ok(rtt) => {
                reachable += 1;
                r.lines.push(format!(
                    "sentinel {addr}: reachable ({:.1} ms)",
                    rtt.as_secs_f64() * 1e3
                ));
                for h in &cfg.havips {
                    match crate::sentinel::conn::query(addr, &cfg.sentinel, &h.master).await {
                        Ok(m) => r.lines.push(format!(
                            "sentinel {addr}: {} at {}:{} config-epoch {} flags {}",
                            h.master,
                            m.ip,
                            m.port,
                            m.config_epoch,
                            m.flags.join(",")
                        )),
                        Err(e) => r
                            .problems
                            .push(format!("sentinel {addr}: {}: {e}", h.master)),
                    }
                }
            }
            Err(e) => r
                .problems
                .push(format!("sentinel {addr}: unreachable: {e}")),
        }
    }
    let total = cfg.sentinel.addresses.len();
    if reachable <= total / 2 {
        r.problems.push(format!(
            "sentinel: only {reachable} of {total} reachable: the agent acts only while it reaches a majority"
        ));
    }
    r
}

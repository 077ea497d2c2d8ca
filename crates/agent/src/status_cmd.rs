//! `havip-agent status`: per HAVIP, the majority master, the local binding, the cloud holder and the last
//! switch, as a table (or JSON).
//!
//! Owns where the report comes from: the running agent's `/status` when `[metrics] listen` is set and the
//! agent answers, otherwise the same report computed here from the Sentinels, the interface and the cloud
//! API (read-only). The table itself is `status::render_table`.

use std::path::Path;

use tokio::time::Instant;

use crate::cloud::{EipState, HaVip, eip_state};
use crate::config::{Config, HavipConfig};
use crate::net::{KernelNet, LocalNet};
use crate::sentinel::conn::ConnectOptions;
use crate::status::{HavipStatus, StatusReport, fetch_status, render_table, status_url};

/// What `havip-agent status` was asked (the binary owns the flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusOptions {
    /// Print JSON instead of a table.
    pub json: bool,
    /// Do not ask the running agent; compute the status from Sentinel, the interface and the API.
    pub direct: bool,
}

/// Why no report was printed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The config file could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The report could not be written as JSON.
    #[error("cannot encode the report: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Runs the command: prints the report on stdout (what the running agent says, or else what the sources
/// say), and notes on stderr why the agent was not asked. An error when no report could be printed.
pub async fn run(path: &Path, opts: StatusOptions) -> Result<(), StatusError> {
    let cfg = Config::load(path)?;
    let mut source = String::new();
    let mut report = None;
    if !opts.direct
        && let Some(listen) = cfg.metrics.listen
    {
        let url = status_url(listen);
        match fetch_status(&url).await {
            Ok(r) => {
                source = format!("from the running agent at {url}");
                report = Some(r);
            }
            Err(e) => eprintln!("havip-agent status: {e}; computing the status directly"),
        }
    }
    let report = match report {
        Some(r) => r,
        None => {
            source = "computed directly (no running agent answered)".into();
            compute(&cfg).await
        }
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("# {source}");
        print!("{}", render_table(&report));
    }
    Ok(())
}

/// The EIP fields of a HAVIP's status from the configured `eip` and the HAVIP as the cloud reports it
/// (`None` when it could not be read).
pub fn fill_eip(s: &mut HavipStatus, h: &HavipConfig, described: Option<&HaVip>) {
    s.eip = h.eip.map(|e| e.to_string());
    s.cloud_eip = described.and_then(|v| v.address_ip.clone());
    s.eip_bound = h
        .eip
        .zip(described)
        .map(|(want, v)| eip_state(want, v) == EipState::Bound);
}

/// The status as this node would see it, from the sources themselves (no agent needed): the same start-up
/// path (`boot`), the same Sentinel reading (`sentinel::probe` and `Snapshot::view`) as the daemon.
pub async fn compute(cfg: &Config) -> StatusReport {
    let boot = crate::boot::boot_with(std::sync::Arc::new(cfg.clone()))
        .await
        .ok();
    let identity = boot.as_ref().map(|b| b.identity.clone());
    let mut report = StatusReport {
        node: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        instance_id: identity
            .as_ref()
            .map(|i| i.instance_id.clone())
            .unwrap_or_default(),
        address: identity
            .as_ref()
            .map(|i| i.address.to_string())
            .unwrap_or_default(),
        sentinels_total: cfg.sentinel.addresses.len(),
        ..StatusReport::default()
    };
    let masters: Vec<String> = cfg.havips.iter().map(|h| h.master.clone()).collect();
    let snap =
        crate::sentinel::probe(&cfg.sentinel, &masters, &ConnectOptions::role_check(cfg)).await;
    report.sentinels_reachable = snap.reachable();
    report.sentinels_uncorroborated = snap.outsiders();

    let net = KernelNet::open(&cfg.node.interface).await.ok();
    let cloud = match &boot {
        Some(b) => b.cloud(&|k: &str| std::env::var(k).ok(), None).await.client,
        None => None,
    };
    for h in &cfg.havips {
        let view = snap.view(&h.master, std::time::Instant::now());
        let m = view.newest.as_ref();
        let local_bound = match &net {
            Some(n) => n.is_bound(h.vip).await.unwrap_or(false),
            None => false,
        };
        // The holder as this node names itself (the CVM, or the ENI in ENI mode), so the one holder rule
        // (`HaVip::held_by`) decides whether it is this node.
        let ty = cfg.node.instance_type;
        let described = match &cloud {
            Some(c) => c
                .describe_havip(&h.havip_id, Instant::now() + cfg.cloud.timeout.get())
                .await
                .ok(),
            None => None,
        };
        let cloud_holder = described
            .as_ref()
            .and_then(|v| v.holder(ty))
            .map(str::to_owned);
        let desired = view.majority
            && identity
                .as_ref()
                .zip(m)
                .is_some_and(|(id, m)| m.ip == id.address);
        let cloud_matches = described
            .as_ref()
            .filter(|_| cloud_holder.is_some())
            .map(|v| {
                let mine = identity
                    .as_ref()
                    .is_some_and(|id| v.held_by(ty, &id.instance_id));
                mine == local_bound
            });
        report.havips.push(HavipStatus {
            havip_id: h.havip_id.clone(),
            master: h.master.clone(),
            vip: h.vip.to_string(),
            majority_master: m.map(|m| m.addr().to_string()),
            epoch: m.map(|m| m.epoch),
            desired_holder: desired,
            local_bound,
            cloud_holder,
            cloud_matches,
            last_switch: None,
            fenced: false,
            failover_id: m.map(|m| format!("{}-{}", h.master, m.epoch)),
            pending_master: view
                .pending
                .as_ref()
                .map(|p| format!("{} epoch {}", p.addr(), p.epoch)),
            eip: None,
            cloud_eip: None,
            eip_bound: None,
        });
        if let Some(s) = report.havips.last_mut() {
            fill_eip(s, h, described.as_ref());
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn havip(address_ip: Option<&str>) -> HaVip {
        HaVip {
            address_ip: address_ip.map(str::to_owned),
            ..HaVip::unbound("havip-xxxxxxxx", "172.16.2.250")
        }
    }

    fn config(eip: Option<&str>) -> HavipConfig {
        HavipConfig {
            master: "mymaster".into(),
            havip_id: "havip-xxxxxxxx".into(),
            vip: "172.16.2.250/24".parse().unwrap(),
            scope: Default::default(),
            eip: eip.map(|e| e.parse().unwrap()),
        }
    }

    #[test]
    fn eip_fields_say_what_is_configured_what_the_cloud_has_and_whether_they_agree() {
        let mut s = HavipStatus::default();
        fill_eip(
            &mut s,
            &config(Some("203.0.113.10")),
            Some(&havip(Some("203.0.113.10"))),
        );
        assert_eq!(
            (s.eip.as_deref(), s.cloud_eip.as_deref(), s.eip_bound),
            (Some("203.0.113.10"), Some("203.0.113.10"), Some(true))
        );
        fill_eip(&mut s, &config(Some("203.0.113.10")), Some(&havip(None)));
        assert_eq!((s.cloud_eip.as_deref(), s.eip_bound), (None, Some(false)));
        fill_eip(&mut s, &config(Some("203.0.113.10")), None);
        assert_eq!(s.eip_bound, None, "unknown when the cloud was not read");
        fill_eip(&mut s, &config(None), Some(&havip(Some("203.0.113.99"))));
        assert_eq!(
            (s.eip.as_deref(), s.cloud_eip.as_deref(), s.eip_bound),
            (None, Some("203.0.113.99"), None)
        );
    }
}

//! The lab's data path, as the VPC's: the client reaches the VIP through the fake cloud's holder, not ARP.
//!
//! In the VPC the virtual switch answers ARP for a HAVIP and forwards its traffic to the holder's ENI; a
//! guest's GARP only asks the control plane to move it (`shared/reference/tencentcloud.md`, "Data path").
//! The lab does the same with a permanent neighbour entry on the client for the VIP, naming the holder's MAC:
//! ARP cannot change a permanent entry, so the client ignores every GARP and every ARP reply for the VIP,
//! and the entry is rewritten (`ip -n <client> neigh replace ... nud permanent`) whenever the fake applies a
//! move ([`FakeCloud::on_move`]). A stale host's GARP or bind therefore reaches no client unless the cloud
//! moved the HAVIP to it. With no holder the entry names [`NO_HOLDER_MAC`], which no host has: the bridge
//! floods such frames and every host drops them, as traffic to an unbound HAVIP goes nowhere.
//!
//! Owns the entry and the record of its rewrites ([`Steer`]). It does not move the HAVIP (the fake does) and
//! does not watch ARP (`havip_testkit::fake::garp_watch` does).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use anyhow::{Result, bail};

use havip_testkit::fake::FakeCloud;
use havip_testkit::fake::metadata::format_mac;

/// The MAC the client's entry names while the HAVIP has no holder (locally administered, on no host).
pub const NO_HOLDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0];

/// One rewrite of the client's neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steer {
    /// When the rewrite finished (wall clock).
    pub at: SystemTime,
    /// The host the VIP's traffic now goes to (node index), `None` for no holder.
    pub node: Option<usize>,
    /// Why the rewrite failed, if it did (the entry is then unchanged).
    pub error: Option<String>,
}

/// Where the client's traffic for the VIP goes, and how that changed.
#[derive(Debug, Clone)]
pub struct DataPath {
    log: Arc<Mutex<Vec<Steer>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the subscriber needs: no [`FakeCloud`] clone (the fake holds the subscriber; a clone would keep it
/// alive forever).
struct Route {
    client_ns: String,
    client_if: String,
    vip: Ipv4Addr,
    havip_id: String,
    instances: Vec<(String, [u8; 6])>,
    log: Arc<Mutex<Vec<Steer>>>,
}

impl Route {
    /// Points the client's entry at `node` (or nowhere) and records it.
    fn steer(&self, node: Option<usize>) -> Result<()> {
        let mac = node.map_or(NO_HOLDER_MAC, |n| self.instances[n].1);
        let result = set_neighbour(&self.client_ns, &self.client_if, self.vip, mac);
        lock(&self.log).push(Steer {
            at: SystemTime::now(),
            node,
            error: result.as_ref().err().map(|e| format!("{e:#}")),
        });
        result
    }
}

fn set_neighbour(ns: &str, ifname: &str, vip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
    let out = Command::new("ip")
        .args(["-n", ns, "neigh", "replace", &vip.to_string(), "lladdr"])
        .arg(format_mac(mac))
        .args(["dev", ifname, "nud", "permanent"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "ip -n {ns} neigh replace {vip} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!("running ip -n {ns} neigh replace {vip}: {e} (is iproute2 installed?)"),
    }
}

impl DataPath {
    /// Points the client's traffic for `vip` (namespace `client_ns`, interface `client_if`) at the current
    /// holder of `havip_id` in `fake`, and re-points it on every move of that HAVIP. `instances`: each
    /// host's instance id and MAC, node order. Call it before anything can move the HAVIP (the first entry
    /// comes from the holder read here). Errors when the first entry cannot be written.
    pub fn start(
        fake: &FakeCloud,
        havip_id: &str,
        vip: Ipv4Addr,
        client_ns: &str,
        client_if: &str,
        instances: Vec<(String, [u8; 6])>,
    ) -> Result<DataPath> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let route = Arc::new(Route {
            client_ns: client_ns.to_owned(),
            client_if: client_if.to_owned(),
            vip,
            havip_id: havip_id.to_owned(),
            instances,
            log: log.clone(),
        });
        let sub = route.clone();
        fake.on_move(move |mv| {
            if mv.havip_id != sub.havip_id {
                return;
            }
            let node = sub.instances.iter().position(|(id, _)| *id == mv.to);
            if let Err(e) = sub.steer(node) {
                tracing::error!(havip = %mv.havip_id, to = %mv.to, error = %format!("{e:#}"), "lab data path: cannot steer the client");
            }
        });
        let holder = fake.havip(havip_id).and_then(|h| h.instance_id);
        let node = holder.and_then(|h| route.instances.iter().position(|(id, _)| *id == h));
        route.steer(node)?;
        Ok(DataPath { log })
    }

    /// Every rewrite so far, oldest first.
    pub fn steers(&self) -> Vec<Steer> {
        lock(&self.log).clone()
    }

    /// The host the client's traffic for the VIP goes to now (`None`: nowhere).
    pub fn current(&self) -> Option<usize> {
        lock(&self.log)
            .iter()
            .rev()
            .find(|s| s.error.is_none())
            .and_then(|s| s.node)
    }
}

//! Capability checks: does this process hold `CAP_NET_ADMIN` (netlink address changes) and `CAP_NET_RAW`
//! (the packet socket for gratuitous ARP)? Read from the effective set in `/proc/self/status`.
//!
//! Owns the check and its message, and [`DropAfterChange`], the wrapper with which a one-shot process
//! gives up `CAP_NET_ADMIN` once its only address change is done (the raw dropping is `crate::privs`). The
//! operations themselves still map `EPERM` to [`NetError::MissingCapability`], because a check can race
//! with a changed setup.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{CAP_NET_ADMIN, CAP_NET_RAW, Change, LocalNet, NetError, grant_hint};
use crate::config::VipCidr;

/// The mask of `CAP_NET_ADMIN` for [`crate::privs::keep_only`].
pub const NET_ADMIN_MASK: u64 = 1 << CAP_NET_ADMIN_BIT;

/// Drops every capability this process still has and logs the effective set afterwards (debug level,
/// `cap_eff` in hex, so tests and operators can see it is 0). `stage` says which drop this is.
pub fn drop_capabilities(keep: u64, stage: &'static str) -> Result<(), NetError> {
    match crate::privs::keep_only(keep) {
        Ok(_) => {
            let eff = crate::privs::cap_eff().unwrap_or(u64::MAX);
            tracing::debug!(stage, cap_eff = %format!("{eff:016x}"), "capabilities dropped");
            Ok(())
        }
        Err(source) => Err(NetError::Io {
            context: format!("dropping capabilities ({stage})"),
            source,
        }),
    }
}

/// A [`LocalNet`] for a one-shot process that holds only `CAP_NET_ADMIN` when it is made: after the first
/// `bind` or `unbind` (done or failed), it drops that too, so everything after (the cloud calls, the
/// announcements on the already open packet socket, the confirmation) runs with no capability at all.
///
/// Why not drop it with the rest, right after opening the sockets: rtnetlink checks `CAP_NET_ADMIN` of the
/// process *sending* each address change (`netlink_net_capable`), not only of the one that opened the
/// socket, so the capability is needed until the change is sent. The packet socket needs `CAP_NET_RAW`
/// only to be opened.
#[derive(Debug)]
pub struct DropAfterChange {
    inner: Arc<dyn LocalNet>,
}

impl DropAfterChange {
    /// Wraps `inner`. Use it only in a process that makes one address change in its life.
    pub fn new(inner: Arc<dyn LocalNet>) -> Self {
        DropAfterChange { inner }
    }

    fn drop_rest(&self) {
        if let Err(e) = drop_capabilities(0, "after the address change") {
            // The change is made; failing it now would hide that. The error names the call that failed.
            tracing::warn!(error = %e, "cannot drop the last capability");
        }
    }
}

#[async_trait::async_trait]
impl LocalNet for DropAfterChange {
    fn interface(&self) -> &str {
        self.inner.interface()
    }

    async fn is_bound(&self, vip: VipCidr) -> Result<bool, NetError> {
        self.inner.is_bound(vip).await
    }

    async fn bind(&self, vip: VipCidr) -> Result<Change, NetError> {
        let r = self.inner.bind(vip).await;
        self.drop_rest();
        r
    }

    async fn unbind(&self, vip: VipCidr) -> Result<Change, NetError> {
        let r = self.inner.unbind(vip).await;
        self.drop_rest();
        r
    }

    async fn announce_round(&self, vip: Ipv4Addr) -> Result<u32, NetError> {
        self.inner.announce_round(vip).await
    }
}

/// Bit of `CAP_NET_ADMIN` in the capability sets (linux/capability.h).
const CAP_NET_ADMIN_BIT: u32 = 12;
/// Bit of `CAP_NET_RAW` in the capability sets (linux/capability.h).
const CAP_NET_RAW_BIT: u32 = 13;

/// The needed capabilities missing from this process's effective set: a subset of `["CAP_NET_ADMIN",
/// "CAP_NET_RAW"]`, in that order. Empty when both are there, and also when `/proc/self/status` cannot be
/// read or parsed (then the operations report `EPERM` themselves).
pub fn missing_capabilities() -> Vec<&'static str> {
    match std::fs::read_to_string("/proc/self/status") {
        Ok(status) => match parse_cap_eff(&status) {
            Some(eff) => missing_from(eff),
            None => {
                tracing::warn!("no CapEff line in /proc/self/status; cannot check capabilities");
                Vec::new()
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/status; cannot check capabilities");
            Vec::new()
        }
    }
}

/// `Ok` when both capabilities are held, else [`NetError::MissingCapability`] naming the missing one(s) and
/// how to grant them (systemd `AmbientCapabilities=`, or `setcap` on the binary).
pub fn require_capabilities() -> Result<(), NetError> {
    let missing = missing_capabilities();
    if missing.is_empty() {
        return Ok(());
    }
    let capability = missing.join(" and ");
    let needs = missing
        .iter()
        .map(|c| match *c {
            CAP_NET_ADMIN => "CAP_NET_ADMIN to add and remove the VIP on the interface (netlink)",
            _ => "CAP_NET_RAW to send gratuitous ARP (packet socket)",
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(NetError::MissingCapability {
        capability,
        hint: grant_hint(&format!("havip-agent needs {needs}")),
    })
}

/// The effective capability set from the text of `/proc/<pid>/status` (`CapEff:\t000001ffffffffff`).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The needed capabilities absent from the effective set `eff`.
pub fn missing_from(eff: u64) -> Vec<&'static str> {
    [
        (CAP_NET_ADMIN_BIT, CAP_NET_ADMIN),
        (CAP_NET_RAW_BIT, CAP_NET_RAW),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1u64 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                          CapEff:\t0000000000002000\nCapBnd:\t000001ffffffffff\n";

    #[test]
    fn parses_the_effective_set_not_the_others() {
        assert_eq!(parse_cap_eff(STATUS), Some(0x2000));
    }

    #[test]
    fn missing_status_line_is_none() {
        assert_eq!(parse_cap_eff("Name:\tcat\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn bit_12_is_net_admin_and_bit_13_is_net_raw() {
        assert_eq!(missing_from(0), vec![CAP_NET_ADMIN, CAP_NET_RAW]);
        assert_eq!(missing_from(1 << 12), vec![CAP_NET_RAW]);
        assert_eq!(missing_from(1 << 13), vec![CAP_NET_ADMIN]);
        assert!(missing_from(0x1ff_ffff_ffff).is_empty());
    }
}

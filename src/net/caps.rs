//! Capability checks: does this process hold `CAP_NET_ADMIN` (netlink address changes) and `CAP_NET_RAW`
//! (the packet socket for gratuitous ARP)? Read from the effective set in `/proc/self/status`.
//!
//! Owns only the check and its message. It does not raise or drop capabilities; the operations themselves
//! still map `EPERM` to [`NetError::MissingCapability`], because a check can race with a changed setup.

use super::{CAP_NET_ADMIN, CAP_NET_RAW, NetError, grant_hint};

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

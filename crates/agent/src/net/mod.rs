//! Local VIP handling on this host: binding the VIP on an interface (netlink), announcing it with gratuitous
//! ARP (an `AF_PACKET` socket), and checking the Linux capabilities both need.
//!
//! Owns: the [`LocalNet`] trait the claim/release/reconcile code drives, its kernel implementation
//! [`KernelNet`] (the test kit has an in-memory one, `havip_testkit::recording`), [`announce_burst`], the ARP frame
//! format and a capture socket for tests ([`garp`]), and the capability checks ([`caps`]).
//!
//! Does not own: deciding *when* to bind, release or announce (the claim and reconcile code), nor anything the
//! cloud API does. A HAVIP moves when the VPC sees a GARP from an instance in its drift range; making sure the
//! instance is in that range is the cloud client's job.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::config::VipCidr;

pub mod caps;
pub mod garp;
pub mod netlink;
mod watch;

pub use caps::{missing_capabilities, require_capabilities};
pub use garp::{ArpCapture, ArpFrame, ArpOp, CapturedFrame};
pub use netlink::{KernelNet, KernelReads};

/// `CAP_NET_ADMIN`: needed to add and remove addresses over netlink.
pub const CAP_NET_ADMIN: &str = "CAP_NET_ADMIN";
/// `CAP_NET_RAW`: needed to open the packet socket that sends gratuitous ARP.
pub const CAP_NET_RAW: &str = "CAP_NET_RAW";

/// What a [`LocalNet::bind`] or [`LocalNet::unbind`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// The interface was changed.
    Applied,
    /// The interface already was in the wanted state; nothing was changed.
    AlreadyDone,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Applied => "applied",
            Change::AlreadyDone => "already done",
        })
    }
}

/// Errors of local network operations. Callers branch on the variant: a missing capability or interface is
/// permanent, [`NetError::Io`] and [`NetError::Netlink`] may be transient (a link that is down, a full queue).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The process lacks a Linux capability; `hint` says how to grant it.
    #[error("missing capability {capability}: {hint}")]
    MissingCapability {
        /// The capability name(s), e.g. `CAP_NET_ADMIN` or `CAP_NET_ADMIN and CAP_NET_RAW`.
        capability: String,
        /// What needs it and how to grant it.
        hint: String,
    },
    /// No network interface has this name (in this network namespace).
    #[error("no network interface named {0:?}")]
    NoSuchInterface(String),
    /// The interface exists but cannot carry a HAVIP (e.g. it has no Ethernet address, so no ARP).
    #[error("interface {interface:?} cannot be used: {reason}")]
    UnsupportedInterface {
        /// The interface name.
        interface: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The kernel refused a netlink request, or the reply could not be understood.
    #[error("netlink: {0}")]
    Netlink(String),
    /// The VIP is not inside the subnet of an address already on the interface, with that subnet's prefix
    /// length: binding it would route a foreign network through this host (see [`check_vip_subnet`]).
    #[error(
        "refusing to bind vip {vip} on {interface:?}: it must sit inside the subnet of an address already on \
         {interface:?}, with that subnet's prefix length; addresses found: {found}"
    )]
    VipOutsideSubnet {
        /// The VIP with its configured prefix.
        vip: VipCidr,
        /// The interface name.
        interface: String,
        /// The interface's other IPv4 addresses (`none` when it has none).
        found: String,
    },
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the interface.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    /// True for errors that retrying cannot fix (missing capability, interface absent or unusable).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            NetError::MissingCapability { .. }
                | NetError::NoSuchInterface(_)
                | NetError::UnsupportedInterface { .. }
                | NetError::VipOutsideSubnet { .. }
        )
    }
}

/// The VIP on this host's interface: the side effects of a claim or release that are not cloud API calls.
///
/// Implementations: [`KernelNet`] (netlink + packet socket) and, in the test kit, `RecordingNet` (in
/// memory).
#[async_trait::async_trait]
pub trait LocalNet: Send + Sync + std::fmt::Debug {
    /// The interface name the VIP is bound on.
    fn interface(&self) -> &str;

    /// True when this implementation does not touch the kernel (tests, the demo).
    fn simulated(&self) -> bool {
        false
    }

    /// Whether `vip.addr` is an address of the interface. Exact match: 198.18.0.1 is not 198.18.0.10. The
    /// prefix length is not compared (the address is what the VPC and the clients care about).
    async fn is_bound(&self, vip: VipCidr) -> Result<bool, NetError>;

    /// Adds `vip` (address/prefix) to the interface. [`Change::AlreadyDone`] when the address is already there.
    async fn bind(&self, vip: VipCidr) -> Result<Change, NetError>;

    /// Removes `vip.addr` from the interface. [`Change::AlreadyDone`] when it is not there.
    async fn unbind(&self, vip: VipCidr) -> Result<Change, NetError>;

    /// Sends one gratuitous ARP request and one gratuitous ARP reply for `vip`; returns the frames sent (2).
    async fn announce_round(&self, vip: Ipv4Addr) -> Result<u32, NetError>;
}

/// Announces `vip` in `burst` rounds (see [`LocalNet::announce_round`]): the first round immediately, round
/// `i` at `spread * i / (burst - 1)` after the start, so the last round goes out `spread` after the first.
/// Returns the frames sent. Stops at the first error: a frame that cannot be sent now (link down, missing
/// capability) will not be sent a few hundred milliseconds later either, and the caller decides what next.
///
/// `burst == 0` sends nothing. The rounds are scheduled against the start, not against the previous round,
/// so a slow send does not stretch the burst.
pub async fn announce_burst(
    net: &dyn LocalNet,
    vip: Ipv4Addr,
    burst: u32,
    spread: Duration,
) -> Result<u32, NetError> {
    announce_burst_with(net, vip, burst, spread, &|_| {}).await
}

/// [`announce_burst`], calling `after_round` with the frames sent so far after every round (a claim reports
/// its first GARP the moment it leaves, and counts frames of a burst it stops early).
pub async fn announce_burst_with(
    net: &dyn LocalNet,
    vip: Ipv4Addr,
    burst: u32,
    spread: Duration,
    after_round: &(dyn Fn(u32) + Send + Sync),
) -> Result<u32, NetError> {
    let start = tokio::time::Instant::now();
    let mut frames = 0;
    for round in 0..burst {
        if round > 0 {
            tokio::time::sleep_until(start + round_offset(round, burst, spread)).await;
        }
        frames += net.announce_round(vip).await?;
        after_round(frames);
    }
    tracing::debug!(interface = net.interface(), %vip, burst, frames, "gratuitous arp burst sent");
    Ok(frames)
}

/// When round `round` of a burst of `burst` rounds is due, relative to the first.
fn round_offset(round: u32, burst: u32, spread: Duration) -> Duration {
    if burst <= 1 {
        return Duration::ZERO;
    }
    // u128 nanoseconds: no overflow and no rounding drift for any realistic spread.
    let nanos = spread.as_nanos() * u128::from(round) / u128::from(burst - 1);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The one rule for where a VIP may go, checked by [`KernelNet`]'s `bind` (so by the daemon and by
/// `migrate-havip` alike): `vip` must lie in the subnet of an address in `on_interface` (other than the VIP
/// itself) and carry that address's prefix length. A HAVIP belongs to a VPC subnet, and the node's own
/// address in that subnet says which one; a VIP outside it (a typo, or a hostile config such as `/1`) would
/// route someone else's network through this host.
pub fn check_vip_subnet(
    vip: VipCidr,
    interface: &str,
    on_interface: &[VipCidr],
) -> Result<(), NetError> {
    let others: Vec<&VipCidr> = on_interface.iter().filter(|a| a.addr != vip.addr).collect();
    let fits = others
        .iter()
        .any(|a| a.prefix == vip.prefix && same_subnet(a.addr, vip.addr, vip.prefix));
    if fits {
        return Ok(());
    }
    Err(NetError::VipOutsideSubnet {
        vip,
        interface: interface.to_owned(),
        found: found_list(&others),
    })
}

/// The addresses for [`NetError::VipOutsideSubnet`]: all of them up to [`FOUND_SHOWN`], then a count, so a
/// NIC with hundreds of addresses gives a readable error.
fn found_list(addrs: &[&VipCidr]) -> String {
    if addrs.is_empty() {
        return "none".to_owned();
    }
    let mut s = addrs
        .iter()
        .take(FOUND_SHOWN)
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if addrs.len() > FOUND_SHOWN {
        s.push_str(&format!(" and {} more", addrs.len() - FOUND_SHOWN));
    }
    s
}

/// How many of the interface's addresses a subnet refusal names.
const FOUND_SHOWN: usize = 8;

/// Whether `a` and `b` share their first `prefix` bits (`prefix` is 1..=32, as [`VipCidr`] guarantees;
/// 0 would be every address, and is treated so).
fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// How to grant the capabilities, for error messages. Names the running binary when it can.
pub(crate) fn grant_hint(what_needs_it: &str) -> String {
    let exe = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/usr/bin/migrate-havip".to_owned());
    format!(
        "{what_needs_it}; grant CAP_NET_ADMIN and CAP_NET_RAW, either in the systemd unit \
         (`AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW`, and keep them in `CapabilityBoundingSet=`) or on \
         the binary (`setcap cap_net_admin,cap_net_raw+ep {exe}`), or run as root"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_offsets_spread_evenly_from_zero_to_spread() {
        let spread = Duration::from_millis(900);
        let offsets: Vec<_> = (0..4).map(|i| round_offset(i, 4, spread)).collect();
        assert_eq!(
            offsets,
            [0, 300, 600, 900].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn a_vip_must_sit_in_the_subnet_of_an_address_on_the_interface_with_its_prefix() {
        struct Row {
            name: &'static str,
            vip: &'static str,
            addrs: &'static [&'static str],
            ok: bool,
        }
        let rows = [
            Row {
                name: "same /24",
                vip: "198.18.0.10/24",
                addrs: &["198.18.0.2/24"],
                ok: true,
            },
            Row {
                name: "one of several",
                vip: "198.19.1.9/16",
                addrs: &["198.18.0.2/24", "198.19.0.1/16"],
                ok: true,
            },
            Row {
                name: "other subnet",
                vip: "198.18.1.10/24",
                addrs: &["198.18.0.2/24"],
                ok: false,
            },
            Row {
                name: "wider prefix",
                vip: "198.18.0.10/1",
                addrs: &["198.18.0.2/24"],
                ok: false,
            },
            Row {
                name: "narrower prefix",
                vip: "198.18.0.10/32",
                addrs: &["198.18.0.2/24"],
                ok: false,
            },
            Row {
                name: "no address",
                vip: "198.18.0.10/24",
                addrs: &[],
                ok: false,
            },
            Row {
                name: "only the vip itself",
                vip: "198.18.0.10/24",
                addrs: &["198.18.0.10/24"],
                ok: false,
            },
        ];
        for r in rows {
            let addrs: Vec<VipCidr> = r.addrs.iter().map(|a| a.parse().unwrap()).collect();
            let got = check_vip_subnet(r.vip.parse().unwrap(), "eth0", &addrs);
            assert_eq!(got.is_ok(), r.ok, "{}: {got:?}", r.name);
        }
    }

    #[test]
    fn the_subnet_refusal_names_the_vip_the_interface_and_the_addresses() {
        let e = check_vip_subnet(
            "198.18.0.10/1".parse().unwrap(),
            "eth0",
            &["198.18.0.2/24".parse().unwrap()],
        )
        .unwrap_err();
        assert!(e.is_permanent());
        let msg = e.to_string();
        for want in [
            "198.18.0.10/1",
            "\"eth0\"",
            "addresses found: 198.18.0.2/24",
        ] {
            assert!(msg.contains(want), "{want} not in {msg}");
        }
    }

    #[test]
    fn single_round_burst_is_immediate() {
        assert_eq!(round_offset(0, 1, Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn grant_hint_names_both_ways_to_grant() {
        let hint = grant_hint("x needs it");
        assert!(
            hint.contains("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW"),
            "{hint}"
        );
        assert!(
            hint.contains("setcap cap_net_admin,cap_net_raw+ep "),
            "{hint}"
        );
    }
}

//! [`KernelNet`]: the real [`LocalNet`]. Adds and removes the VIP with rtnetlink (never by running `ip`) and
//! sends gratuitous ARP through a packet socket (see [`super::garp`]).
//!
//! Owns one netlink connection per instance and the interface's identity (index, MAC). Does not own policy:
//! it binds, unbinds and announces when told to.
//!
//! Privileges: reading needs none; `bind`/`unbind` need `CAP_NET_ADMIN`, `announce_round` needs
//! `CAP_NET_RAW`. A kernel `EPERM` becomes [`NetError::MissingCapability`] with a hint how to grant it.
//!
//! # One address dump at a time
//!
//! The daemon shares one `KernelNet` between its per-HAVIP tasks, so their `is_bound`, `bind` and `unbind`
//! calls (each of which lists the interface's addresses first) overlap on one netlink socket. Listing
//! addresses is a netlink *dump*, and the kernel runs one dump per socket at a time: a dump request that
//! arrives while an earlier dump on the same socket has not been read to its end is refused with `EBUSY`
//! ("Device or resource busy"). The netlink connection task (netlink-proto, under rtnetlink) sends the next
//! queued request whenever it is woken, not only after the previous dump's last reply, so concurrent callers
//! do collide. With 20 HAVIPs that happened hundreds of times in one failover, and every refused check
//! waited for the caller's next tick, delaying claims by seconds.
//!
//! So the IPv4 address dump is serialised and single-flight (`KernelNet::dump_v4`): a caller notes when
//! it asked, then takes a lock; if a dump that *started after* that moment has completed meanwhile, it
//! takes that dump's result (concurrent callers share one dump, and none gets a view older than its own
//! request), otherwise it dumps itself and leaves the result for the callers queued behind it. A transient
//! refusal (`EBUSY`, `EINTR`, `EAGAIN`; e.g. the remainder of a dump whose caller was cancelled is still
//! being drained) is retried a few milliseconds later, 5 tries in all.
//!
//! The interface lookup by name (`KernelNet::link`) is not a dump: with a name, rtnetlink sends a plain
//! `RTM_GETLINK` request (no `NLM_F_DUMP`) answered by one message, which the kernel serves beside a
//! running dump.
//!
//! # Read once per change
//!
//! Every HAVIP task checks its binding once per `poll_interval`, and the claim and release paths read the
//! addresses too: with 20 HAVIPs that was 20 lookups and 20 dumps a second while nothing changed. So the
//! interface's identity and its addresses are read from the kernel once per *change* and kept: a second
//! netlink socket subscribed to link and IPv4 address notifications ([`super::watch`]) is drained, without
//! blocking, at the start of every read, and a kept lookup or dump is used while no notification about the
//! interface arrived since it began. The kernel queues a notification before the call that made the change
//! returns, so a read never answers from a view older than the read itself: the same freshness as dumping
//! every time, for one `recv` that finds nothing. A change (the agent's own bind, an operator's `ip addr`,
//! an interface re-created under the same name) costs the next reader one lookup and one dump, shared by
//! every reader queued behind it. If the notification socket cannot be opened, every read asks the kernel
//! as before (logged once at start).
//!
//! # A bound on every request
//!
//! Each netlink request (lookup, dump with its transient retries, add, delete) is bounded by
//! [`REQUEST_TIMEOUT`]: a wedged connection task or a kernel that never answers would otherwise hang a
//! claim or a release with no error at all. On expiry the error names the operation and the interface.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::{AddressMessageBuilder, Handle};

use super::garp::{GarpSender, format_mac};
use super::watch::{ChangeWatch, Changes, Watched};
use super::{CAP_NET_ADMIN, Change, LocalNet, NetError, grant_hint};
use crate::config::VipCidr;

/// The kernel's view of the interface, refreshed on every operation (see [`KernelNet::link`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    index: u32,
    mac: [u8; 6],
}

/// A netlink request refused with a transient errno is sent this many times in all before the error counts.
const TRANSIENT_TRIES: u32 = 5;
/// The wait before the first retry; it doubles for each further one (1, 2, 4, 8 ms).
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(1);

/// The longest one netlink request (with its transient retries) may take before it fails, naming the
/// operation. The kernel answers in microseconds; 2 s is far past any sane answer and well inside a claim.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the netlink request `fut` within `limit`. The outer error is the expiry, naming what was being
/// done (`doing`, e.g. "adding 198.18.0.10/24 to") and the interface; the inner one is the request's own.
async fn within<T>(
    limit: Duration,
    doing: &str,
    ifname: &str,
    fut: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<Result<T, rtnetlink::Error>, NetError> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        NetError::Netlink(format!(
            "{doing} interface {ifname:?}: no answer from the kernel within {limit:?} (netlink request timed out)"
        ))
    })
}

/// The interface's identity as last looked up, and the change count it is valid for (see the module docs,
/// "Read once per change"; `None`: not known to be current, look it up again).
#[derive(Debug, Clone, Copy)]
struct LinkView {
    link: Link,
    as_of: Option<u64>,
}

/// How often a [`KernelNet`] asked the kernel (for tests and benchmarks: a read served from the kept view
/// asks nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelReads {
    /// Interface lookups by name (`RTM_GETLINK`).
    pub lookups: u64,
    /// IPv4 address dumps (`RTM_GETADDR` with `NLM_F_DUMP`).
    pub dumps: u64,
}

/// A completed IPv4 address dump (see the module docs, "One address dump at a time").
#[derive(Debug)]
struct Dump {
    /// When it was started: before its request was sent.
    started: Instant,
    /// The address change count when it was started (`None` without a notification socket).
    as_of: Option<u64>,
    /// The interface it was filtered to.
    index: u32,
    /// The interface's IPv4 address messages, in kernel order.
    messages: Arc<Vec<AddressMessage>>,
}

/// Binds the VIP on a real interface of the calling thread's network namespace and announces it.
///
/// `open` must run inside a tokio runtime: the netlink connection is a task spawned on it (and aborted when
/// the `KernelNet` is dropped), and the packet socket registers with its reactor. Use it within that runtime.
#[derive(Debug)]
pub struct KernelNet {
    ifname: String,
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
    link: Mutex<LinkView>,
    /// Says when a kept view may be stale; `None` if it could not be opened (then every read asks).
    watch: Option<ChangeWatch>,
    lookups: AtomicU64,
    dumps: AtomicU64,
    /// Held for the whole of an address dump, so that one runs at a time on this socket; holds the last
    /// completed one, for the callers that queued while it ran.
    dump: tokio::sync::Mutex<Option<Dump>>,
    /// Opened on the first announcement, so that reading and binding work without `CAP_NET_RAW`; reopened
    /// only if the interface was re-created under the same name (new index).
    garp: Mutex<Option<Arc<GarpSender>>>,
}

impl KernelNet {
    /// Opens a netlink connection and resolves `ifname` to its index and MAC address.
    ///
    /// Errors: [`NetError::NoSuchInterface`] naming `ifname` when it does not exist (or is not a valid
    /// interface name); [`NetError::UnsupportedInterface`] when it has no Ethernet address (ARP impossible).
    pub async fn open(ifname: &str) -> Result<Self, NetError> {
        if !valid_ifname(ifname) {
            return Err(NetError::NoSuchInterface(ifname.to_owned()));
        }
        // Subscribed before the first lookup, so that no change after it can be missed.
        let watch = ChangeWatch::open()
            .inspect_err(|e| {
                tracing::warn!(interface = ifname, error = %e, "cannot subscribe to netlink change notifications; reading the interface from the kernel on every check")
            })
            .ok();
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(|source| NetError::Io {
                context: "opening a netlink route socket".to_owned(),
                source,
            })?;
        let connection = tokio::spawn(connection);
        let link = resolve(&handle, ifname).await;
        let link = match link {
            Ok(link) => link,
            Err(e) => {
                connection.abort();
                return Err(e);
            }
        };
        tracing::debug!(interface = ifname, index = link.index, mac = %format_mac(&link.mac), "interface opened");
        Ok(KernelNet {
            ifname: ifname.to_owned(),
            handle,
            connection,
            link: Mutex::new(LinkView { link, as_of: None }),
            watch,
            lookups: AtomicU64::new(1),
            dumps: AtomicU64::new(0),
            dump: tokio::sync::Mutex::new(None),
            garp: Mutex::new(None),
        })
    }

    /// Opens the packet socket for gratuitous ARP now rather than on the first announcement (needs
    /// `CAP_NET_RAW`), so that a process can drop `CAP_NET_RAW` before it announces. The socket is reopened
    /// only if the interface is re-created under the same name, which would then need the capability again.
    pub fn open_announcer(&self) -> Result<(), NetError> {
        self.garp_sender(self.cached()).map(drop)
    }

    /// The interface's MAC address (the sender MAC of every announcement), as last seen by the kernel.
    pub fn mac(&self) -> [u8; 6] {
        self.cached().mac
    }

    /// The interface index, as last seen by the kernel.
    pub fn index(&self) -> u32 {
        self.cached().index
    }

    /// Every IPv4 address on the interface, with its prefix length, in kernel order.
    pub async fn addresses(&self) -> Result<Vec<VipCidr>, NetError> {
        let link = self.link().await?;
        Ok(self
            .dump_v4(link.index)
            .await?
            .iter()
            .filter_map(|m| {
                Some(VipCidr {
                    addr: local_v4(m)?,
                    prefix: m.header.prefix_len,
                })
            })
            .collect())
    }

    /// How often this instance asked the kernel so far.
    pub fn kernel_reads(&self) -> KernelReads {
        KernelReads {
            lookups: self.lookups.load(Ordering::Relaxed),
            dumps: self.dumps.load(Ordering::Relaxed),
        }
    }

    fn cached(&self) -> Link {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).link
    }

    /// The change counts for interface `index` now, after reading every pending notification; `None`
    /// without a notification socket. See the module docs, "Read once per change".
    fn changes(&self, index: u32) -> Option<Changes> {
        let watched = Watched {
            index,
            name: &self.ifname,
        };
        self.watch.as_ref().map(|w| w.changes(watched))
    }

    /// The interface's index and MAC, current as of this call: the kept lookup while nothing changed, else a
    /// lookup by name (one round trip, not a dump, so it needs no serialising). It keeps the index and MAC
    /// right if the interface was re-created (e.g. a NIC driver reload) while a long-running daemon holds
    /// this value.
    async fn link(&self) -> Result<Link, NetError> {
        let as_of = self.changes(self.cached().index).map(|c| c.link);
        {
            let kept = self.link.lock().unwrap_or_else(|p| p.into_inner());
            if as_of.is_some() && kept.as_of == as_of {
                return Ok(kept.link);
            }
        }
        let fresh = resolve(&self.handle, &self.ifname).await?;
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if kept.link != fresh {
            tracing::warn!(
                interface = %self.ifname,
                old_index = kept.link.index,
                new_index = fresh.index,
                mac = %format_mac(&fresh.mac),
                "interface changed identity; following it by name"
            );
        }
        *kept = LinkView { link: fresh, as_of };
        Ok(fresh)
    }

    /// The IPv4 address messages of interface `index`, current as of this call: the kept dump while no
    /// change was notified since it started, else a dump that started after this call (its own, or one that
    /// a concurrent caller started after this call and that completed while this one waited for the lock).
    /// One dump runs at a time on this socket (see the module docs).
    async fn dump_v4(&self, index: u32) -> Result<Arc<Vec<AddressMessage>>, NetError> {
        let asked = Instant::now();
        let mut last = self.dump.lock().await;
        // Read after the lock: a dump that completed while this call waited may already be current.
        let as_of = self.changes(index).map(|c| c.addresses);
        if let Some(d) = last.as_ref()
            && d.index == index
            // Strictly later: a dump started at the very instant of the request might have been sent
            // before what the caller did just before asking.
            && ((as_of.is_some() && d.as_of == as_of) || d.started > asked)
        {
            return Ok(Arc::clone(&d.messages));
        }
        let started = Instant::now();
        self.dumps.fetch_add(1, Ordering::Relaxed);
        const DOING: &str = "listing the addresses of";
        let messages = Arc::new(
            within(
                REQUEST_TIMEOUT,
                DOING,
                &self.ifname,
                retry_transient(|| self.dump_v4_once(index)),
            )
            .await?
            .map_err(|e| self.map_err(e, DOING))?,
        );
        *last = Some(Dump {
            started,
            as_of,
            index,
            messages: Arc::clone(&messages),
        });
        Ok(messages)
    }

    /// One address dump request. Call it only with the [`KernelNet::dump`] lock held.
    async fn dump_v4_once(&self, index: u32) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
        let mut req = self.handle.address().get().set_link_index_filter(index);
        req.message_mut().header.family = AddressFamily::Inet;
        req.execute()
            .try_filter(|m| futures::future::ready(m.header.family == AddressFamily::Inet))
            .try_collect()
            .await
    }

    /// The address messages on the interface whose local address is exactly `addr`.
    async fn find(&self, index: u32, addr: Ipv4Addr) -> Result<Vec<AddressMessage>, NetError> {
        Ok(self
            .dump_v4(index)
            .await?
            .iter()
            .filter(|m| local_v4(m) == Some(addr))
            .cloned()
            .collect())
    }

    fn map_err(&self, e: rtnetlink::Error, doing: &str) -> NetError {
        map_netlink_error(e, &self.ifname, doing)
    }

    fn garp_sender(&self, link: Link) -> Result<Arc<GarpSender>, NetError> {
        let mut slot = self.garp.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(s) if s.ifindex() == link.index => Ok(Arc::clone(s)),
            _ => {
                let s = Arc::new(GarpSender::open(&self.ifname, link.index)?);
                *slot = Some(Arc::clone(&s));
                Ok(s)
            }
        }
    }
}

impl Drop for KernelNet {
    fn drop(&mut self) {
        // The connection task would end by itself once every handle is gone; aborting makes it immediate.
        self.connection.abort();
    }
}

#[async_trait::async_trait]
impl LocalNet for KernelNet {
    fn interface(&self) -> &str {
        &self.ifname
    }

    async fn is_bound(&self, vip: VipCidr) -> Result<bool, NetError> {
        let link = self.link().await?;
        Ok(!self.find(link.index, vip.addr).await?.is_empty())
    }

    async fn bind(&self, vip: VipCidr) -> Result<Change, NetError> {
        let link = self.link().await?;
        let all = self.dump_v4(link.index).await?;
        let existing: Vec<&AddressMessage> = all
            .iter()
            .filter(|m| local_v4(m) == Some(vip.addr))
            .collect();
        if let Some(m) = existing.first() {
            if m.header.prefix_len != vip.prefix {
                tracing::warn!(
                    interface = %self.ifname, vip = %vip, bound_prefix = m.header.prefix_len,
                    "vip already bound with a different prefix length; leaving it as it is"
                );
            }
            return Ok(Change::AlreadyDone);
        }
        // The one place every bind passes (daemon and migrate-havip): refuse a VIP outside the interface's
        // subnets before touching anything.
        let on_interface: Vec<VipCidr> = all
            .iter()
            .filter_map(|m| {
                Some(VipCidr {
                    addr: local_v4(m)?,
                    prefix: m.header.prefix_len,
                })
            })
            .collect();
        super::check_vip_subnet(vip, &self.ifname, &on_interface)?;
        let doing = format!("adding {vip} to");
        let add = self
            .handle
            .address()
            .add(link.index, IpAddr::V4(vip.addr), vip.prefix)
            .execute();
        match within(REQUEST_TIMEOUT, &doing, &self.ifname, add).await? {
            Ok(()) => {
                tracing::info!(interface = %self.ifname, vip = %vip, "vip bound");
                Ok(Change::Applied)
            }
            // Someone (another migrate-havip call, an operator) added it between our dump and our add.
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(Change::AlreadyDone),
            Err(e) => Err(self.map_err(e, &doing)),
        }
    }

    async fn unbind(&self, vip: VipCidr) -> Result<Change, NetError> {
        let link = self.link().await?;
        let existing = self.find(link.index, vip.addr).await?;
        let mut removed = false;
        // Normally one entry; the same address can exist with two prefix lengths, and all of them go.
        for m in existing {
            let msg = AddressMessageBuilder::<Ipv4Addr>::new()
                .index(link.index)
                .address(vip.addr, m.header.prefix_len)
                .build();
            let doing = format!("removing {vip} from");
            let del = self.handle.address().del(msg).execute();
            match within(REQUEST_TIMEOUT, &doing, &self.ifname, del).await? {
                Ok(()) => removed = true,
                // Already removed by someone else since our dump.
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(self.map_err(e, &doing)),
            }
        }
        if removed {
            tracing::info!(interface = %self.ifname, vip = %vip, "vip unbound");
            Ok(Change::Applied)
        } else {
            Ok(Change::AlreadyDone)
        }
    }

    async fn announce_round(&self, vip: Ipv4Addr) -> Result<u32, NetError> {
        let link = self.link().await?;
        let sender = self.garp_sender(link)?;
        let frames = sender.announce_round(link.mac, vip).await?;
        tracing::trace!(interface = %self.ifname, %vip, frames, "gratuitous arp round sent");
        Ok(frames)
    }
}

/// Index and MAC of `ifname`.
async fn resolve(handle: &Handle, ifname: &str) -> Result<Link, NetError> {
    // `match_name` makes this a single `RTM_GETLINK` request, not a dump.
    let lookup = retry_transient(|| async {
        let mut replies = handle.link().get().match_name(ifname).execute();
        replies.try_next().await
    });
    let msg: Option<LinkMessage> = within(REQUEST_TIMEOUT, "looking up", ifname, lookup)
        .await?
        .map_err(|e| map_netlink_error(e, ifname, "looking up"))?;
    let msg = msg.ok_or_else(|| NetError::NoSuchInterface(ifname.to_owned()))?;
    if msg.header.link_layer_type != LinkLayerType::Ether {
        return Err(NetError::UnsupportedInterface {
            interface: ifname.to_owned(),
            reason: format!(
                "link type {:?} is not Ethernet, so gratuitous ARP cannot announce a VIP on it",
                msg.header.link_layer_type
            ),
        });
    }
    let mac = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| NetError::UnsupportedInterface {
            interface: ifname.to_owned(),
            reason: "it has no 6-byte hardware address".to_owned(),
        })?;
    Ok(Link {
        index: msg.header.index,
        mac,
    })
}

/// The local IPv4 address of an address message: `IFA_LOCAL`, or `IFA_ADDRESS` when there is no `IFA_LOCAL`
/// (on point-to-point links `IFA_ADDRESS` is the peer, so `IFA_LOCAL` must win).
fn local_v4(m: &AddressMessage) -> Option<Ipv4Addr> {
    let pick = |want_local: bool| {
        m.attributes.iter().find_map(|a| match (a, want_local) {
            (AddressAttribute::Local(IpAddr::V4(ip)), true)
            | (AddressAttribute::Address(IpAddr::V4(ip)), false) => Some(*ip),
            _ => None,
        })
    };
    pick(true).or_else(|| pick(false))
}

/// Runs the read-only request `op` again while the kernel refuses it with a transient errno (see
/// [`is_transient`]), [`TRANSIENT_TRIES`] times in all, waiting 1, 2, 4, 8 ms in between: such a refusal
/// clears within milliseconds and must not wait for the caller's next tick.
async fn retry_transient<T, F, Fut>(mut op: F) -> Result<T, rtnetlink::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
{
    let mut wait = FIRST_RETRY_WAIT;
    let mut tries = 1;
    loop {
        match op().await {
            Err(e) if tries < TRANSIENT_TRIES && is_transient(&e) => {
                tracing::debug!(error = %e, tries, "transient netlink refusal; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// A refusal that goes away by itself in a moment: `EBUSY` (another dump still running on the socket),
/// `EINTR`, `EAGAIN`.
fn is_transient(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(libc::EBUSY | libc::EINTR | libc::EAGAIN))
}

/// The errno of a kernel NACK (positive), if `e` is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn map_netlink_error(e: rtnetlink::Error, ifname: &str, doing: &str) -> NetError {
    match errno(&e) {
        Some(libc::EPERM) => NetError::MissingCapability {
            capability: CAP_NET_ADMIN.to_owned(),
            hint: grant_hint(&format!(
                "{doing} interface {ifname:?} over netlink needs it"
            )),
        },
        Some(libc::ENODEV) => NetError::NoSuchInterface(ifname.to_owned()),
        // A kernel NACK reads best as its errno text ("File exists (os error 17)").
        Some(_) => NetError::Netlink(format!(
            "{doing} interface {ifname:?}: {}",
            match &e {
                rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
                other => other.to_string(),
            }
        )),
        None => NetError::Netlink(format!("{doing} interface {ifname:?}: {e}")),
    }
}

/// Linux interface names: 1..=15 bytes, no `/`, no whitespace, no NUL, not `.` or `..`.
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NACK like the kernel's (netlink-packet-core is reachable through rtnetlink's re-export).
    fn error_message(errno: i32) -> rtnetlink::Error {
        let mut m = rtnetlink::packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(m)
    }

    #[test]
    fn eperm_is_a_missing_net_admin_capability() {
        let e = map_netlink_error(
            error_message(libc::EPERM),
            "eth0",
            "adding 198.18.0.1/24 to",
        );
        match e {
            NetError::MissingCapability { capability, hint } => {
                assert_eq!(capability, "CAP_NET_ADMIN");
                assert!(hint.contains("\"eth0\""), "{hint}");
            }
            other => panic!("want MissingCapability, got {other:?}"),
        }
    }

    #[test]
    fn enodev_names_the_interface() {
        let e = map_netlink_error(error_message(libc::ENODEV), "eth9", "looking up");
        assert_eq!(e.to_string(), "no network interface named \"eth9\"");
    }

    #[test]
    fn other_errors_keep_the_kernel_reason_and_the_interface() {
        let e = map_netlink_error(
            error_message(libc::EINVAL),
            "eth0",
            "adding 198.18.0.1/24 to",
        )
        .to_string();
        assert_eq!(
            e,
            "netlink: adding 198.18.0.1/24 to interface \"eth0\": Invalid argument (os error 22)"
        );
    }

    #[test]
    fn busy_interrupted_and_again_are_transient_and_others_are_not() {
        for errno in [libc::EBUSY, libc::EINTR, libc::EAGAIN] {
            assert!(is_transient(&error_message(errno)), "errno {errno}");
        }
        for errno in [libc::EPERM, libc::ENODEV, libc::EINVAL, libc::EEXIST] {
            assert!(!is_transient(&error_message(errno)), "errno {errno}");
        }
    }

    /// Runs `retry_transient` over answers taken from `script` in turn; returns its result and the tries.
    #[tokio::test]
    async fn a_request_the_kernel_never_answers_fails_naming_the_operation_and_interface() {
        let hang = std::future::pending::<Result<(), rtnetlink::Error>>();
        let err = within(
            Duration::from_millis(20),
            "adding 198.18.0.10/24 to",
            "eth9",
            hang,
        )
        .await
        .expect_err("a request that never ends must time out");
        let text = err.to_string();
        assert!(
            text.contains("adding 198.18.0.10/24 to interface \"eth9\"")
                && text.contains("timed out"),
            "{text}"
        );
        assert!(
            !err.is_permanent(),
            "a timeout may heal: the caller retries"
        );
        let done = within(Duration::from_secs(1), "x", "eth9", async {
            Ok::<_, rtnetlink::Error>(7)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(done, 7, "an answer within the limit passes through");
    }

    async fn retried(script: Vec<Result<u32, i32>>) -> (Result<u32, Option<i32>>, usize) {
        let tries = std::cell::Cell::new(0);
        let out = retry_transient(|| {
            let answer = script[tries.get()];
            tries.set(tries.get() + 1);
            async move { answer.map_err(error_message) }
        })
        .await;
        (out.map_err(|e| errno(&e)), tries.get())
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_refusal_is_retried_within_milliseconds() {
        let start = tokio::time::Instant::now();
        let (out, tries) = retried(vec![Err(libc::EBUSY), Err(libc::EINTR), Ok(7)]).await;
        assert_eq!((out, tries), (Ok(7), 3));
        // Paused clock: exactly the two waits, 1 ms then 2 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_transient_refusal_is_reported_after_five_tries() {
        let start = tokio::time::Instant::now();
        let (out, tries) = retried(vec![Err(libc::EBUSY); 6]).await;
        assert_eq!((out, tries), (Err(Some(libc::EBUSY)), 5));
        assert_eq!(start.elapsed(), Duration::from_millis(1 + 2 + 4 + 8));
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_not_retried() {
        let (out, tries) = retried(vec![Err(libc::EPERM), Ok(1)]).await;
        assert_eq!((out, tries), (Err(Some(libc::EPERM)), 1));
    }

    #[test]
    fn interface_names_are_checked_before_asking_the_kernel() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("enp0s31f6"));
        for bad in ["", "a/b", "with space", "sixteen-chars-xx", ".", ".."] {
            assert!(!valid_ifname(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn local_address_wins_over_peer_address() {
        let mut m = AddressMessage::default();
        m.attributes
            .push(AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(
                198, 18, 0, 99,
            ))));
        m.attributes
            .push(AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(
                198, 18, 0, 1,
            ))));
        assert_eq!(local_v4(&m), Some(Ipv4Addr::new(198, 18, 0, 1)));
        m.attributes.remove(1);
        assert_eq!(local_v4(&m), Some(Ipv4Addr::new(198, 18, 0, 99)));
    }
}

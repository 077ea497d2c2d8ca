//! [`ChangeWatch`]: tells [`super::KernelNet`] when its cached view of the interface (identity and IPv4
//! addresses) may be stale, from the kernel's own change notifications.
//!
//! Owns one netlink route socket subscribed to `RTNLGRP_LINK` and `RTNLGRP_IPV4_IFADDR`, and the change
//! counters ([`Changes`]). It does not read or hold the addresses themselves: `KernelNet` dumps them once per
//! change and keeps the result while the counters have not moved (see its module docs, "Read once per
//! change").
//!
//! # Why a non-blocking drain, not a listening task
//!
//! The kernel queues a notification on every subscribed socket inside the system call that made the change,
//! before that call returns (`rtnl_notify`). So draining the socket without blocking at the moment of a
//! read sees every change that completed before the read began: a reader never gets a view older than its
//! own call, exactly as if it had dumped, whoever made the change (this process, `ip addr`, another agent).
//! A background task fed by the same socket would lag by a scheduling round, and a reader right after an
//! external change could be answered from the stale view. The drain costs one `recv` that finds nothing,
//! instead of a lookup and a dump per read.
//!
//! Notifications for other interfaces are read and ignored. A message that cannot be parsed counts as a
//! change (a needless dump is cheap, a missed change is not). When the kernel dropped notifications because
//! the socket's buffer was full (`ENOBUFS`), every view counts as stale: that is the one case where the
//! notifications alone cannot say what changed.

use std::io;
use std::sync::Mutex;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `RTNLGRP_LINK` and `RTNLGRP_IPV4_IFADDR` as a bind-time group mask (`RTMGRP_LINK | RTMGRP_IPV4_IFADDR`).
const GROUPS: u32 = rtnetlink::constants::RTMGRP_LINK | rtnetlink::constants::RTMGRP_IPV4_IFADDR;

/// The receive buffer asked for: room for thousands of notifications between two reads (a burst of address
/// changes on a busy host) before the kernel drops any. The kernel caps it at `net.core.rmem_max`.
const RECV_BUFFER: usize = 1 << 20;

/// Datagrams read per drain at most; past it the view counts as stale (and the rest is read next time), so
/// a flood of notifications cannot hold a reader.
const MAX_DATAGRAMS_PER_DRAIN: usize = 4096;

/// The interface whose notifications matter: by index, and by name (a re-created interface has a new index).
#[derive(Debug, Clone, Copy)]
pub(super) struct Watched<'a> {
    /// The index the cached view belongs to.
    pub index: u32,
    /// The interface name.
    pub name: &'a str,
}

/// How many changes of the watched interface were notified so far. A kept view is current while the counter
/// it depends on has not moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Changes {
    /// Changes of the interface itself (appeared, went, renamed, re-created, flags, MAC).
    pub link: u64,
    /// Changes of its IPv4 addresses; every link change counts here too.
    pub addresses: u64,
}

/// What one notification datagram means for the watched interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Concerns {
    Nothing,
    Addresses,
    Link,
}

/// The notification socket and the change counters (see the module docs).
#[derive(Debug)]
pub(super) struct ChangeWatch {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: Socket,
    changes: Changes,
    buf: Vec<u8>,
}

impl Changes {
    fn count(&mut self, c: Concerns) {
        match c {
            Concerns::Nothing => {}
            Concerns::Addresses => self.addresses += 1,
            Concerns::Link => {
                self.link += 1;
                self.addresses += 1;
            }
        }
    }
}

impl ChangeWatch {
    /// Subscribes to link and IPv4 address notifications in the calling thread's network namespace. Needs no
    /// privilege.
    pub fn open() -> io::Result<ChangeWatch> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, GROUPS))?;
        socket.set_non_blocking(true)?;
        // A smaller buffer only means an earlier ENOBUFS, which is handled; so a refusal is not an error.
        let _ = socket.set_rx_buf_sz(RECV_BUFFER);
        Ok(ChangeWatch {
            inner: Mutex::new(Inner {
                socket,
                changes: Changes::default(),
                buf: Vec::with_capacity(64 * 1024),
            }),
        })
    }

    /// Reads every pending notification without blocking and returns the change counters: one has moved
    /// since an earlier call if, and only if (as far as the kernel says), that part of `watched` changed in
    /// between. Never blocks.
    pub fn changes(&self, watched: Watched<'_>) -> Changes {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner {
            socket,
            changes,
            buf,
        } = &mut *inner;
        for _ in 0..MAX_DATAGRAMS_PER_DRAIN {
            buf.clear();
            match socket.recv(buf, 0) {
                Ok(_) => changes.count(datagram_concerns(buf, watched)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return *changes,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ENOBUFS: notifications were dropped; nothing says which, so assume ours.
                    tracing::debug!(error = %e, "netlink notifications lost; re-reading the interface");
                    changes.count(Concerns::Link);
                }
            }
        }
        changes.count(Concerns::Link);
        *changes
    }
}

/// What the messages in one notification datagram say about `watched` (a message that cannot be parsed
/// counts as a link change).
fn datagram_concerns(mut datagram: &[u8], watched: Watched<'_>) -> Concerns {
    let mut concerns = Concerns::Nothing;
    while !datagram.is_empty() {
        let len = match NetlinkBuffer::new_checked(datagram) {
            Ok(b) => b.length() as usize,
            Err(_) => return Concerns::Link,
        };
        let this = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[..len]) {
            Ok(m) => message_concerns(&m, watched),
            Err(_) => Concerns::Link,
        };
        concerns = concerns.max(this);
        // Messages in a datagram are 4-byte aligned (NLMSG_ALIGN).
        let next = (len + 3) & !3;
        datagram = datagram.get(next..).unwrap_or_default();
    }
    concerns
}

/// What one notification says about the watched interface: an IPv4 address added to or removed from it, or
/// the interface itself (or another one taking its name) appearing, changing or going.
fn message_concerns(m: &NetlinkMessage<RouteNetlinkMessage>, watched: Watched<'_>) -> Concerns {
    let ours = match &m.payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a),
        ) => {
            return if a.header.index == watched.index {
                Concerns::Addresses
            } else {
                Concerns::Nothing
            };
        }
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l),
        ) => l.header.index == watched.index || link_name(l) == Some(watched.name),
        NetlinkPayload::Overrun(_) => true,
        _ => false,
    };
    if ours {
        Concerns::Link
    } else {
        Concerns::Nothing
    }
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::address::AddressMessage;
    use rtnetlink::packet_core::NetlinkHeader;

    const WATCHED: Watched<'static> = Watched {
        index: 7,
        name: "eth0",
    };

    fn emit(inner: RouteNetlinkMessage) -> Vec<u8> {
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(inner),
        );
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    fn address(index: u32) -> AddressMessage {
        let mut a = AddressMessage::default();
        a.header.index = index;
        a
    }

    fn link(index: u32, name: &str) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.attributes.push(LinkAttribute::IfName(name.to_owned()));
        l
    }

    #[test]
    fn an_address_change_on_the_watched_interface_concerns_it_and_one_elsewhere_does_not() {
        assert_eq!(
            datagram_concerns(&emit(RouteNetlinkMessage::NewAddress(address(7))), WATCHED),
            Concerns::Addresses
        );
        assert_eq!(
            datagram_concerns(&emit(RouteNetlinkMessage::DelAddress(address(7))), WATCHED),
            Concerns::Addresses
        );
        assert_eq!(
            datagram_concerns(&emit(RouteNetlinkMessage::NewAddress(address(8))), WATCHED),
            Concerns::Nothing
        );
    }

    #[test]
    fn a_link_change_concerns_it_by_index_or_by_name() {
        assert_eq!(
            datagram_concerns(
                &emit(RouteNetlinkMessage::NewLink(link(7, "eth0"))),
                WATCHED
            ),
            Concerns::Link
        );
        // Re-created under the same name: a new index.
        assert_eq!(
            datagram_concerns(
                &emit(RouteNetlinkMessage::NewLink(link(9, "eth0"))),
                WATCHED
            ),
            Concerns::Link
        );
        assert_eq!(
            datagram_concerns(&emit(RouteNetlinkMessage::DelLink(link(7, "old"))), WATCHED),
            Concerns::Link
        );
        assert_eq!(
            datagram_concerns(
                &emit(RouteNetlinkMessage::NewLink(link(9, "veth9"))),
                WATCHED
            ),
            Concerns::Nothing
        );
    }

    #[test]
    fn every_message_of_a_datagram_is_looked_at() {
        let mut two = emit(RouteNetlinkMessage::NewAddress(address(8)));
        two.extend(emit(RouteNetlinkMessage::DelAddress(address(7))));
        assert_eq!(datagram_concerns(&two, WATCHED), Concerns::Addresses);
    }

    #[test]
    fn what_cannot_be_parsed_counts_as_a_change() {
        assert_eq!(datagram_concerns(&[1, 2, 3], WATCHED), Concerns::Link);
        let mut truncated = emit(RouteNetlinkMessage::NewAddress(address(8)));
        truncated.truncate(truncated.len() - 4);
        assert_eq!(datagram_concerns(&truncated, WATCHED), Concerns::Link);
    }
}

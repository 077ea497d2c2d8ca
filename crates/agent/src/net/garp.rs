//! Gratuitous ARP: the frame format, the packet socket that sends it, and a capture socket that receives ARP
//! frames on an interface (for tests, and for anything that watches a segment for announcements).
//!
//! Owns the bytes on the wire. Does not own when or how often to announce ([`super::announce_burst`] and the
//! claim code decide), nor the interface's address (see [`super::netlink`]).
//!
//! The two forms sent per round, both to the Ethernet broadcast address, sender IP = target IP = VIP and
//! sender MAC = the interface MAC:
//! - **request** (opcode 1) with target MAC `00:00:00:00:00:00`: the RFC 5227 "ARP announcement", what the
//!   Linux kernel itself sends for `arp_notify`;
//! - **reply** (opcode 2) with target MAC = the sender MAC: what `arping -A` sends, and the form RFC 5944
//!   §4.6 describes for a gratuitous reply. Some equipment only updates its tables from one of the two forms,
//!   which is why keepalived-style senders emit both.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use super::{CAP_NET_RAW, NetError, grant_hint};

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// The Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// Length of an Ethernet II header plus an Ethernet/IPv4 ARP packet (no padding: the NIC pads to 60 bytes).
pub const FRAME_LEN: usize = 42;

/// The ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOp {
    /// Opcode 1.
    Request,
    /// Opcode 2.
    Reply,
    /// Any other opcode (RARP, InARP, ...).
    Other(u16),
}

impl ArpOp {
    /// The opcode on the wire.
    pub fn code(self) -> u16 {
        match self {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
            ArpOp::Other(c) => c,
        }
    }

    fn from_code(c: u16) -> Self {
        match c {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            c => ArpOp::Other(c),
        }
    }
}

/// An Ethernet II frame carrying an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpFrame {
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// Ethernet source.
    pub eth_src: [u8; 6],
    /// ARP operation.
    pub op: ArpOp,
    /// ARP sender hardware address.
    pub sender_mac: [u8; 6],
    /// ARP sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// ARP target hardware address.
    pub target_mac: [u8; 6],
    /// ARP target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpFrame {
    /// The gratuitous request announcing `vip` at `mac` (target MAC all zeros, RFC 5227 announcement).
    pub fn gratuitous_request(mac: [u8; 6], vip: Ipv4Addr) -> Self {
        ArpFrame {
            eth_dst: BROADCAST,
            eth_src: mac,
            op: ArpOp::Request,
            sender_mac: mac,
            sender_ip: vip,
            target_mac: [0; 6],
            target_ip: vip,
        }
    }

    /// The gratuitous reply announcing `vip` at `mac` (target MAC = sender MAC, like `arping -A`).
    pub fn gratuitous_reply(mac: [u8; 6], vip: Ipv4Addr) -> Self {
        ArpFrame {
            op: ArpOp::Reply,
            target_mac: mac,
            ..Self::gratuitous_request(mac, vip)
        }
    }

    /// True when sender and target IP are equal: the frame announces an address rather than asking for one.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }

    /// The frame as sent on a `SOCK_RAW` packet socket.
    pub fn to_bytes(&self) -> [u8; FRAME_LEN] {
        let mut b = [0u8; FRAME_LEN];
        b[0..6].copy_from_slice(&self.eth_dst);
        b[6..12].copy_from_slice(&self.eth_src);
        b[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        b[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
        b[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
        b[18] = 6; // hardware address length
        b[19] = 4; // protocol address length
        b[20..22].copy_from_slice(&self.op.code().to_be_bytes());
        b[22..28].copy_from_slice(&self.sender_mac);
        b[28..32].copy_from_slice(&self.sender_ip.octets());
        b[32..38].copy_from_slice(&self.target_mac);
        b[38..42].copy_from_slice(&self.target_ip.octets());
        b
    }

    /// Parses an Ethernet II frame; `None` unless it carries an Ethernet/IPv4 ARP packet. Trailing bytes
    /// (padding to the 60-byte minimum) are ignored.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..FRAME_LEN)?;
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let mac_at = |i: usize| -> [u8; 6] { b[i..i + 6].try_into().expect("6 bytes") };
        let ip_at = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
        if u16_at(12) != ETH_P_ARP
            || u16_at(14) != 1
            || u16_at(16) != 0x0800
            || b[18] != 6
            || b[19] != 4
        {
            return None;
        }
        Some(ArpFrame {
            eth_dst: mac_at(0),
            eth_src: mac_at(6),
            op: ArpOp::from_code(u16_at(20)),
            sender_mac: mac_at(22),
            sender_ip: ip_at(28),
            target_mac: mac_at(32),
            target_ip: ip_at(38),
        })
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A non-blocking `AF_PACKET`/`SOCK_RAW` socket bound to one interface, registered with the tokio reactor.
///
/// Sending: a `sendto` on a packet socket only queues the frame to the device (it never waits for the wire),
/// so it is called directly from async code. The socket is non-blocking anyway: when the send buffer is full
/// (a burst on a congested queue) `sendto` returns `EAGAIN` and we await writability through [`AsyncFd`]
/// instead of blocking a runtime thread or dropping the frame.
#[derive(Debug)]
struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
    ifname: String,
}

impl PacketSocket {
    /// Opens the socket on `ifindex`. `protocol` is the EtherType to receive (0: receive nothing).
    fn open(ifname: &str, ifindex: u32, protocol: u16, purpose: &str) -> Result<Self, NetError> {
        let io_err = |what: &str, source: io::Error| NetError::Io {
            context: format!("{what} packet socket on {ifname:?}"),
            source,
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                // Protocol 0 at creation: no frames are queued to us until bind() names the interface, so a
                // capture never sees frames of other interfaces.
                0,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                return Err(NetError::MissingCapability {
                    capability: CAP_NET_RAW.to_owned(),
                    hint: grant_hint(&format!(
                        "opening a packet socket on {ifname:?} to {purpose} needs it"
                    )),
                });
            }
            return Err(io_err("opening", e));
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sll = sockaddr_ll(ifindex, protocol);
        // SAFETY: `sll` is a valid sockaddr_ll and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENODEV) {
                return Err(NetError::NoSuchInterface(ifname.to_owned()));
            }
            return Err(io_err("binding", e));
        }
        // `register` panics outside a runtime; report that as an error instead.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io_err(
                "registering",
                io::Error::other("no tokio runtime in this thread"),
            ));
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, so the descriptor stays open and the same for the
        // AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io_err("registering", e.into()))?;
        Ok(PacketSocket {
            fd,
            ifindex,
            ifname: ifname.to_owned(),
        })
    }

    /// Sends one complete Ethernet frame to the broadcast address.
    async fn send(&self, frame: &[u8]) -> Result<(), NetError> {
        let mut sll = sockaddr_ll(self.ifindex, ETH_P_ARP);
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&BROADCAST);
        let io_err = |source| NetError::Io {
            context: format!("sending gratuitous arp on {:?}", self.ifname),
            source,
        };
        loop {
            let mut guard = self.fd.writable().await.map_err(io_err)?;
            let sent = guard.try_io(|fd| {
                // SAFETY: `frame` is valid for `frame.len()` bytes; `sll` is a valid sockaddr_ll.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const sll).cast::<libc::sockaddr>(),
                        mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                Ok(Ok(n)) if n == frame.len() => return Ok(()),
                Ok(Ok(n)) => {
                    return Err(io_err(io::Error::other(format!(
                        "short write: {n} of {} bytes",
                        frame.len()
                    ))));
                }
                Ok(Err(e)) if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ENODEV)) => {
                    return Err(NetError::NoSuchInterface(self.ifname.clone()));
                }
                Ok(Err(e)) => return Err(io_err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

fn sockaddr_ll(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll
}

/// Sends gratuitous ARP frames on one interface (one socket, opened once).
#[derive(Debug)]
pub(crate) struct GarpSender {
    socket: PacketSocket,
}

impl GarpSender {
    /// Opens the packet socket. Needs `CAP_NET_RAW`.
    pub(crate) fn open(ifname: &str, ifindex: u32) -> Result<Self, NetError> {
        let socket = PacketSocket::open(ifname, ifindex, 0, "send gratuitous arp")?;
        Ok(GarpSender { socket })
    }

    /// The interface index the socket is bound to.
    pub(crate) fn ifindex(&self) -> u32 {
        self.socket.ifindex
    }

    /// One round: the request form, then the reply form. Returns the frames sent.
    pub(crate) async fn announce_round(
        &self,
        mac: [u8; 6],
        vip: Ipv4Addr,
    ) -> Result<u32, NetError> {
        self.socket
            .send(&ArpFrame::gratuitous_request(mac, vip).to_bytes())
            .await?;
        self.socket
            .send(&ArpFrame::gratuitous_reply(mac, vip).to_bytes())
            .await?;
        Ok(2)
    }
}

/// Sends one gratuitous ARP frame for `vip` from `mac` on `ifname`: the reply form if `reply`, else the
/// request form.
/// Needs `CAP_NET_RAW` and a tokio runtime. For tools and tests that must not depend on which `arping` is
/// installed (iputils' and Thomas Habets' take different flags); the agent itself uses its own sender.
pub async fn send_gratuitous(
    ifname: &str,
    mac: [u8; 6],
    vip: Ipv4Addr,
    reply: bool,
) -> Result<(), NetError> {
    let socket = PacketSocket::open(ifname, ifindex_by_name(ifname)?, 0, "send gratuitous arp")?;
    let frame = if reply {
        ArpFrame::gratuitous_reply(mac, vip)
    } else {
        ArpFrame::gratuitous_request(mac, vip)
    };
    socket.send(&frame.to_bytes()).await
}

/// An ARP frame received by an [`ArpCapture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    /// The parsed frame.
    pub frame: ArpFrame,
    /// True when this host sent the frame on the captured interface (`PACKET_OUTGOING`).
    pub outgoing: bool,
    /// When the capture read it (tokio clock).
    pub at: tokio::time::Instant,
    /// The frame's bytes as received (for checks that should not trust [`ArpFrame::parse`]).
    pub raw: Vec<u8>,
}

/// Receives every ARP frame seen on one interface, in and out, from the moment it is opened. Needs
/// `CAP_NET_RAW`, and a tokio runtime; opened in the calling thread's network namespace.
#[derive(Debug)]
pub struct ArpCapture {
    socket: PacketSocket,
}

impl ArpCapture {
    /// Starts capturing on `ifname`.
    pub fn open(ifname: &str) -> Result<Self, NetError> {
        let ifindex = ifindex_by_name(ifname)?;
        let socket = PacketSocket::open(ifname, ifindex, ETH_P_ARP, "capture arp")?;
        Ok(ArpCapture { socket })
    }

    /// The next ARP frame (frames that are not Ethernet/IPv4 ARP are skipped).
    pub async fn recv(&self) -> Result<CapturedFrame, NetError> {
        let mut buf = [0u8; 2048];
        loop {
            let mut guard = self
                .socket
                .fd
                .readable()
                .await
                .map_err(|e| self.recv_err(e))?;
            let got = guard.try_io(|fd| {
                // SAFETY: sockaddr_ll is plain old data.
                let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
                let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buf` is valid for its length; `from`/`from_len` describe a valid sockaddr_ll.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut from).cast::<libc::sockaddr>(),
                        &mut from_len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok((n as usize, from.sll_pkttype == libc::PACKET_OUTGOING))
                }
            });
            match got {
                Ok(Ok((n, outgoing))) => {
                    if let Some(frame) = ArpFrame::parse(&buf[..n]) {
                        return Ok(CapturedFrame {
                            frame,
                            outgoing,
                            at: tokio::time::Instant::now(),
                            raw: buf[..n].to_vec(),
                        });
                    }
                }
                Ok(Err(e)) => return Err(self.recv_err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Frames received until `n` of them match `keep` or `deadline` passes, whichever comes first; only the
    /// matching frames are returned, in arrival order.
    pub async fn collect_until(
        &self,
        n: usize,
        deadline: tokio::time::Instant,
        keep: impl Fn(&CapturedFrame) -> bool,
    ) -> Result<Vec<CapturedFrame>, NetError> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(frame) => {
                    let frame = frame?;
                    if keep(&frame) {
                        out.push(frame);
                    }
                }
                Err(_elapsed) => break,
            }
        }
        Ok(out)
    }

    fn recv_err(&self, source: io::Error) -> NetError {
        NetError::Io {
            context: format!("capturing arp on {:?}", self.socket.ifname),
            source,
        }
    }
}

/// The index of interface `ifname` in the calling thread's network namespace.
fn ifindex_by_name(ifname: &str) -> Result<u32, NetError> {
    let c =
        std::ffi::CString::new(ifname).map_err(|_| NetError::NoSuchInterface(ifname.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(NetError::NoSuchInterface(ifname.to_owned()));
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    #[test]
    fn request_bytes_match_the_rfc5227_announcement_layout() {
        let b = ArpFrame::gratuitous_request(MAC, VIP).to_bytes();
        let want: [u8; FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // eth dst: broadcast
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // eth src
            0x08, 0x06, // ethertype ARP
            0x00, 0x01, 0x08, 0x00, 6, 4, // Ethernet, IPv4, hlen, plen
            0x00, 0x01, // request
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 198, 18, 0, 1, // sender
            0, 0, 0, 0, 0, 0, 198, 18, 0, 1, // target
        ];
        assert_eq!(b, want);
    }

    #[test]
    fn reply_targets_its_own_mac_like_arping_a() {
        let f = ArpFrame::gratuitous_reply(MAC, VIP);
        assert_eq!(f.op, ArpOp::Reply);
        assert_eq!(f.target_mac, MAC);
        assert_eq!(f.eth_dst, BROADCAST);
        assert!(f.is_gratuitous());
        assert_eq!(&f.to_bytes()[20..22], &[0, 2]);
    }

    #[test]
    fn parse_round_trips_and_ignores_padding() {
        let f = ArpFrame::gratuitous_reply(MAC, VIP);
        let mut padded = f.to_bytes().to_vec();
        padded.resize(60, 0);
        assert_eq!(ArpFrame::parse(&padded), Some(f));
    }

    #[test]
    fn parse_rejects_short_and_non_arp_frames() {
        let b = ArpFrame::gratuitous_request(MAC, VIP).to_bytes();
        assert_eq!(ArpFrame::parse(&b[..41]), None);
        let mut ipv4 = b;
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(ArpFrame::parse(&ipv4), None);
    }

    #[test]
    fn formats_mac_lowercase_with_colons() {
        assert_eq!(format_mac(&MAC), "52:54:00:12:34:56");
    }
}

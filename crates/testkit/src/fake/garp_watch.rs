//! Watches an interface for gratuitous ARP and hands every one to a [`FakeCloud`], as the VPC's control plane
//! hears a guest's GARP.
//!
//! Owns: an `AF_PACKET` raw socket for ARP frames on one interface (e.g. the lab's bridge), parsing of
//! Ethernet/ARP frames, the list of GARPs seen (with what the fake made of each: moved, scheduled after the
//! move delay, rate-limited, ...), and a background thread that stops on drop. It does not decide whether or
//! when a holder moves: [`FakeCloud::garp`] does (drift range, `CheckAssociate`, move delay, rate limit). It does not
//! send anything (the agent's announcements live in `havip_agent::net`).
//!
//! The socket belongs to the network namespace of the thread that calls [`watch_garp`]: to watch an
//! interface in another namespace, call it from a thread that has entered that namespace (`setns`).

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;

use super::vpc::{FakeCloud, GarpOutcome};

const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ARP_LEN: usize = 28;

/// One gratuitous ARP the watcher saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarpSeen {
    /// Real wall-clock time the frame was read.
    pub at: SystemTime,
    /// ARP sender hardware address.
    pub mac: [u8; 6],
    /// The announced address (sender IP == target IP).
    pub ip: Ipv4Addr,
    /// ARP request (1) or reply (2).
    pub op: u16,
    /// Whether the fake moved a holder at once because of it (a move scheduled after the fake's move
    /// delay shows in `outcome`, and later in [`FakeCloud::moves`]).
    pub moved: bool,
    /// What the fake made of it.
    pub outcome: GarpOutcome,
}

/// A parsed ARP frame (Ethernet, IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    /// 1 = request, 2 = reply.
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: [u8; 6],
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpFrame {
    /// Gratuitous: the sender announces its own address (sender IP == target IP), request or reply.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip && !self.sender_ip.is_unspecified()
    }
}

/// Parses an Ethernet frame carrying an IPv4-over-Ethernet ARP packet (optionally 802.1Q tagged).
/// Returns `None` for anything else or a truncated frame.
pub fn parse_arp_frame(frame: &[u8]) -> Option<ArpFrame> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    if ethertype == ETHERTYPE_VLAN {
        off += 4;
        ethertype = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    }
    if ethertype != ETHERTYPE_ARP {
        return None;
    }
    let arp = frame.get(off + 2..off + 2 + ARP_LEN)?;
    let htype = u16::from_be_bytes([arp[0], arp[1]]);
    let ptype = u16::from_be_bytes([arp[2], arp[3]]);
    if htype != 1 || ptype != 0x0800 || arp[4] != 6 || arp[5] != 4 {
        return None;
    }
    let mac = |s: &[u8]| -> [u8; 6] { [s[0], s[1], s[2], s[3], s[4], s[5]] };
    let ip = |s: &[u8]| Ipv4Addr::new(s[0], s[1], s[2], s[3]);
    Some(ArpFrame {
        op: u16::from_be_bytes([arp[6], arp[7]]),
        sender_mac: mac(&arp[8..14]),
        sender_ip: ip(&arp[14..18]),
        target_mac: mac(&arp[18..24]),
        target_ip: ip(&arp[24..28]),
    })
}

/// A running watcher. Dropping it stops the thread and closes the socket.
pub struct GarpWatch {
    ifname: String,
    seen: Arc<Mutex<Vec<GarpSeen>>>,
    stop_tx: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GarpWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarpWatch")
            .field("interface", &self.ifname)
            .field("seen", &lock(&self.seen).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GarpWatch {
    /// The interface watched.
    pub fn interface(&self) -> &str {
        &self.ifname
    }

    /// Every gratuitous ARP seen so far, oldest first.
    pub fn seen(&self) -> Vec<GarpSeen> {
        lock(&self.seen).clone()
    }
}

impl Drop for GarpWatch {
    fn drop(&mut self) {
        // Closing the write end of the pipe wakes the thread's poll (POLLHUP on the read end).
        drop(self.stop_tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn last_os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens a raw ARP socket on `ifname` (in the calling thread's network namespace) and calls
/// `fake.garp(sender_mac, ip)` for every gratuitous ARP seen, on a background thread.
///
/// Needs `CAP_NET_RAW`. Errors name the interface and the step that failed.
pub fn watch_garp(fake: FakeCloud, ifname: &str) -> Result<GarpWatch, io::Error> {
    let c_name = CString::new(ifname).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {ifname:?} has a NUL byte"),
        )
    })?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("garp watcher: no interface named {ifname:?} in this network namespace"),
        ));
    }
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        let e = io::Error::last_os_error();
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            " (needs CAP_NET_RAW)"
        } else {
            ""
        };
        return Err(io::Error::new(
            e.kind(),
            format!("garp watcher: opening an AF_PACKET socket for {ifname}: {e}{hint}"),
        ));
    }
    // SAFETY: raw is a fresh, owned descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_os_error(&format!(
            "garp watcher: binding the ARP socket to {ifname}"
        )));
    }
    // Promiscuous membership (dropped with the socket): on a bridge, frames addressed to another port's
    // MAC (e.g. a unicast ARP reply) reach the bridge device only in promiscuous mode.
    // SAFETY: packet_mreq is plain data; zeroed is a valid starting value.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = ifindex as i32;
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    // SAFETY: mreq is a valid packet_mreq and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(
            interface = ifname,
            error = %io::Error::last_os_error(),
            "garp watcher could not enter promiscuous mode; unicast arp to other hosts will be missed"
        );
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_os_error("garp watcher: creating the stop pipe"));
    }
    // SAFETY: both descriptors are fresh and owned from here on.
    let (stop_rx, stop_tx) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let thread = {
        let seen = seen.clone();
        let ifname = ifname.to_owned();
        std::thread::Builder::new()
            .name(format!("garp-watch-{ifname}"))
            .spawn(move || read_loop(&fake, &ifname, &sock, &stop_rx, &seen))
            .map_err(|e| {
                io::Error::new(e.kind(), format!("garp watcher: spawning the thread: {e}"))
            })?
    };
    tracing::info!(interface = ifname, "fake cloud watching for gratuitous arp");
    Ok(GarpWatch {
        ifname: ifname.to_owned(),
        seen,
        stop_tx: Some(stop_tx),
        thread: Some(thread),
    })
}

fn read_loop(
    fake: &FakeCloud,
    ifname: &str,
    sock: &OwnedFd,
    stop_rx: &OwnedFd,
    seen: &Mutex<Vec<GarpSeen>>,
) {
    let mut buf = [0u8; 2048];
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop_rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: pfds is a valid array of two pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(interface = ifname, error = %e, "garp watcher poll failed, stopping");
            return;
        }
        if pfds[1].revents != 0 {
            return;
        }
        if pfds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            tracing::error!(interface = ifname, "garp watcher socket failed, stopping");
            return;
        }
        if pfds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: buf is valid for buf.len() bytes.
        let len = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if len < ETH_HEADER_LEN as isize {
            continue;
        }
        let Some(arp) = parse_arp_frame(&buf[..len as usize]) else {
            continue;
        };
        if !arp.is_gratuitous() {
            continue;
        }
        // Read before the fake acts: it may call move subscribers (the lab rewrites the client's route).
        let at = SystemTime::now();
        let outcome = fake.garp(arp.sender_mac, arp.sender_ip);
        let moved = outcome.moved();
        tracing::info!(
            interface = ifname,
            mac = %super::metadata::format_mac(arp.sender_mac),
            ip = %arp.sender_ip,
            op = arp.op,
            moved,
            outcome = ?outcome,
            "fake cloud saw gratuitous arp"
        );
        lock(seen).push(GarpSeen {
            at,
            mac: arp.sender_mac,
            ip: arp.sender_ip,
            op: arp.op,
            moved,
            outcome,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(op: u16, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend([2, 0, 0, 0, 0, 1]);
        f.extend(ETHERTYPE_ARP.to_be_bytes());
        f.extend([0, 1, 8, 0, 6, 4]);
        f.extend(op.to_be_bytes());
        f.extend([2, 0, 0, 0, 0, 1]);
        f.extend(spa);
        f.extend([0; 6]);
        f.extend(tpa);
        f
    }

    #[test]
    fn parses_a_gratuitous_request() {
        let a = parse_arp_frame(&frame(1, [198, 18, 0, 100], [198, 18, 0, 100])).unwrap();
        assert_eq!(a.op, 1);
        assert_eq!(a.sender_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(a.sender_ip, Ipv4Addr::new(198, 18, 0, 100));
        assert!(a.is_gratuitous());
    }

    #[test]
    fn an_ordinary_request_is_not_gratuitous() {
        let a = parse_arp_frame(&frame(1, [198, 18, 0, 1], [198, 18, 0, 100])).unwrap();
        assert!(!a.is_gratuitous());
    }

    #[test]
    fn rejects_truncated_and_non_arp_frames() {
        let f = frame(2, [198, 18, 0, 100], [198, 18, 0, 100]);
        assert!(parse_arp_frame(&f[..f.len() - 1]).is_none());
        let mut ip = f.clone();
        ip[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert!(parse_arp_frame(&ip).is_none());
        assert!(parse_arp_frame(&[]).is_none());
    }

    #[test]
    fn parses_a_vlan_tagged_reply() {
        let f = frame(2, [198, 18, 0, 100], [198, 18, 0, 100]);
        let mut tagged = f[..12].to_vec();
        tagged.extend(ETHERTYPE_VLAN.to_be_bytes());
        tagged.extend([0, 7]);
        tagged.extend(&f[12..]);
        let a = parse_arp_frame(&tagged).unwrap();
        assert_eq!(a.op, 2);
        assert!(a.is_gratuitous());
    }
}

//! The lab's network: a switch namespace with bridge `br0`, three Redis hosts and one client host on it, the
//! fake Tencent Cloud listening inside the switch namespace, and the fake's GARP watcher on `br0`.
//!
//! Owns the addresses and names every lab run uses ([`VIP`], [`HAVIP_ID`], the instance ids, ports), creating
//! the namespaces (through [`havip_testkit::testbed::netns::Lab`]) and the fake's state (key pair, instances with
//! their real veth MACs, the HAVIP) and the client's data path ([`DataPath`]): as in the VPC, the client's
//! traffic for the VIP goes to the fake cloud's holder, whatever the hosts announce. Everything is removed when [`Topology`] drops (the
//! namespaces delete themselves, also while a failing test unwinds). It does not start Redis, Sentinel or any
//! VIP manager (see `lab::method` and `lab::scenario`).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow};

use super::datapath::DataPath;
use havip_testkit::fake::{FakeCloud, GarpWatch, HavipSpec, watch_garp};
use havip_testkit::testbed::netns::{Lab, LabHost, Netns};

/// The lab subnet's prefix length.
pub const PREFIX: u8 = 24;
/// The switch's address on `br0` (the fake cloud listens here).
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The Redis hosts' addresses, node order (node 0 starts as master).
pub const HOST_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 0, 11),
    Ipv4Addr::new(198, 18, 0, 12),
    Ipv4Addr::new(198, 18, 0, 13),
];
/// The client host's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
/// The virtual IP the VIP managers move.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The HAVIP's id in the fake cloud.
pub const HAVIP_ID: &str = "havip-lab00001";
/// The CVM instance id of each Redis host, node order.
pub const INSTANCE_IDS: [&str; 3] = ["ins-lab-1", "ins-lab-2", "ins-lab-3"];
/// The Sentinel master name.
pub const MASTER_NAME: &str = "mymaster";
/// Redis port on every host (each host is its own namespace, so one port fits all, as on real hosts).
pub const REDIS_PORT: u16 = 6379;
/// Sentinel port on every host.
pub const SENTINEL_PORT: u16 = 26379;
/// The lab's API key id (accepted by the fake only; not a real credential).
pub const SECRET_ID: &str = "AKIDhavipLab0000000000000000000000";
/// The lab's API key (fake only).
pub const SECRET_KEY: &str = "havipLabSecretKey000000000000000";
/// Names of the Redis hosts in the [`Lab`] (also their bridge ports are `p0`..`p2`, in this order).
pub const HOST_NAMES: [&str; 3] = ["r1", "r2", "r3"];
/// Name of the client host in the [`Lab`] (bridge port `p3`).
pub const CLIENT_NAME: &str = "cli";

/// The VIP as `addr/prefix`.
pub fn vip_cidr() -> String {
    format!("{VIP}/{PREFIX}")
}

/// One HAVIP a VIP manager keeps on one Sentinel master: the lab has one ([`HavipEntry::lab`]), the scale
/// run (`lab::scale`) one per master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HavipEntry {
    /// The Sentinel master name.
    pub master: String,
    /// The HAVIP's id in the fake cloud.
    pub havip_id: String,
    /// The virtual IP (in the lab subnet, [`PREFIX`]).
    pub vip: Ipv4Addr,
}

impl HavipEntry {
    /// The lab's single HAVIP: [`MASTER_NAME`], [`HAVIP_ID`], [`VIP`].
    pub fn lab() -> HavipEntry {
        HavipEntry {
            master: MASTER_NAME.into(),
            havip_id: HAVIP_ID.into(),
            vip: VIP,
        }
    }

    /// The VIP as `addr/prefix`.
    pub fn vip_cidr(&self) -> String {
        format!("{}/{PREFIX}", self.vip)
    }
}

/// How the HAVIP's drift range starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftRange {
    /// `CheckAssociate` on and no instance in range: the VIP manager must add its own instance (the agent).
    Empty,
    /// `CheckAssociate` on and all three Redis hosts in range, as an operator of the seed's methods (which
    /// make no API call) has to set it up.
    AllHosts,
}

/// The running lab network and fake cloud. Fields drop in order: the GARP watcher stops, the fake stops,
/// then the namespaces go.
#[derive(Debug)]
pub struct Topology {
    data_path: DataPath,
    garp: GarpWatch,
    fake: FakeCloud,
    net: Lab,
}

impl Topology {
    /// Builds the namespaces (names `hvt-<prefix>-...`, unique per process and call), starts the fake
    /// cloud on `198.18.0.1:<free port>` inside the switch namespace and the GARP watcher on `br0`.
    /// Needs root. `prefix`: up to 7 characters of `[a-z0-9-]`.
    pub async fn build(prefix: &str, range: DriftRange) -> Result<Topology> {
        let mut builder = Lab::builder(prefix).switch_addr(&format!("{SWITCH_IP}/{PREFIX}"));
        for (name, ip) in HOST_NAMES.iter().zip(HOST_IPS) {
            builder = builder.host(name, &format!("{ip}/{PREFIX}"));
        }
        let net = builder
            .host(CLIENT_NAME, &format!("{CLIENT_IP}/{PREFIX}"))
            .build()
            .context("building the lab namespaces (needs root and iproute2)")?;
        // The listening socket must belong to the switch namespace; the fake then serves it from its own
        // thread, wherever that runs.
        let listener = net
            .switch()
            .try_run(|| std::net::TcpListener::bind((SWITCH_IP, 0)))?
            .with_context(|| format!("binding the fake cloud's listener on {SWITCH_IP}"))?;
        let fake = FakeCloud::start_on(listener).await;
        fake.add_key(SECRET_ID, SECRET_KEY);
        let mut spec = HavipSpec::new(HAVIP_ID, VIP).check_associate(true);
        for (i, id) in INSTANCE_IDS.iter().enumerate() {
            let host = net
                .host(HOST_NAMES[i])
                .ok_or_else(|| anyhow!("lab host {} missing", HOST_NAMES[i]))?;
            fake.add_instance(id, host.mac);
            if range == DriftRange::AllHosts {
                spec = spec.associate(*id);
            }
        }
        fake.add_havip(spec);
        let client = net
            .host(CLIENT_NAME)
            .ok_or_else(|| anyhow!("lab host {CLIENT_NAME} missing"))?;
        let instances = INSTANCE_IDS
            .iter()
            .zip(HOST_NAMES)
            .map(|(id, name)| {
                let mac = net.host(name).map(|h| h.mac).unwrap_or_default();
                ((*id).to_owned(), mac)
            })
            .collect();
        let data_path = DataPath::start(
            &fake,
            HAVIP_ID,
            VIP,
            client.ns.name(),
            Lab::HOST_IF,
            instances,
        )
        .context("pointing the client's data path at the HAVIP's holder")?;
        let garp_fake = fake.clone();
        let garp = net
            .switch()
            .try_run(move || watch_garp(garp_fake, Lab::BRIDGE))?
            .context("starting the fake cloud's GARP watcher on br0")?;
        Ok(Topology {
            data_path,
            garp,
            fake,
            net,
        })
    }

    /// The fake cloud.
    pub fn fake(&self) -> &FakeCloud {
        &self.fake
    }

    /// Where the client's traffic for the VIP goes (the fake's holder), and its rewrites.
    pub fn data_path(&self) -> &DataPath {
        &self.data_path
    }

    /// The GARP watcher on `br0`.
    pub fn garp(&self) -> &GarpWatch {
        &self.garp
    }

    /// The switch namespace (holds `br0`, the fake's listener and the observers' sockets).
    pub fn switch(&self) -> &Netns {
        self.net.switch()
    }

    /// Redis host `i` (0..3).
    pub fn host(&self, i: usize) -> &LabHost {
        &self.net.hosts()[i]
    }

    /// The client host.
    pub fn client(&self) -> &LabHost {
        &self.net.hosts()[HOST_NAMES.len()]
    }

    /// The bridge port (in the switch namespace) that connects Redis host `i`.
    pub fn port_of(&self, i: usize) -> String {
        format!("p{i}")
    }

    /// The fake cloud's base URL, reachable from every host: `http://198.18.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{SWITCH_IP}:{}", self.fake.address().port())
    }

    /// The RedisLab hosts (address + namespace) of the three Redis hosts, node order.
    pub fn redis_hosts(&self) -> Vec<havip_testkit::testbed::redis::LabHost> {
        (0..HOST_IPS.len())
            .map(|i| havip_testkit::testbed::redis::LabHost {
                ip: IpAddr::V4(HOST_IPS[i]),
                netns: Some(self.host(i).ns.name().to_owned()),
            })
            .collect()
    }

    /// The node whose MAC is `mac`, if any.
    pub fn node_of_mac(&self, mac: [u8; 6]) -> Option<usize> {
        (0..HOST_IPS.len()).find(|i| self.host(*i).mac == mac)
    }

    /// The node with instance id `id`, if any.
    pub fn node_of_instance(id: &str) -> Option<usize> {
        INSTANCE_IDS.iter().position(|x| *x == id)
    }

    /// The node whose address is `ip`, if any.
    pub fn node_of_ip(ip: IpAddr) -> Option<usize> {
        HOST_IPS.iter().position(|x| IpAddr::V4(*x) == ip)
    }
}

//! Three agents in one process, on a real Redis Sentinel lab, against the fake cloud.
//!
//! Owns the wiring of a small "fleet": a [`RedisLab`] (real `redis-server` + `redis-sentinel` per host on
//! loopback addresses), one [`FakeCloud`] with the HAVIP and the hosts' instances, and one [`Agent`] per
//! host binding on a [`FakeVpcNet`] (a simulated interface whose GARPs reach the fake cloud, as the VPC
//! sees them). Used by the daemon's tests, the demo and the benchmarks. It does not build the lab's
//! processes (`testbed::redis`) or decide anything (`daemon`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::broadcast;

use crate::fake::{FakeCloud, FakeVpcNet, HavipSpec};
use crate::testbed::redis::{LabSpec, RedisLab};
use havip_agent::config::Config;
use havip_agent::daemon::{Agent, AgentEvent};
use havip_agent::metrics::Metrics;
use havip_agent::node::Identity;
use havip_agent::sentinel::watcher::WatchOptions;
use havip_agent::status::{Health, StatusHandle, StatusReport};

/// The HAVIP every fleet manages.
pub const HAVIP_ID: &str = "havip-fleet001";
/// Its VIP (simulated: never bound in the kernel).
pub const VIP: &str = "198.18.0.100/24";
/// The fake cloud's SecretId (a fake key, accepted only by the fake).
pub const SECRET_ID: &str = "AKIDfleetEXAMPLE";
/// The fake cloud's SecretKey.
pub const SECRET_KEY: &str = "fleetSecretKeyEXAMPLE";

/// How to build a fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The Redis/Sentinel lab.
    pub lab: LabSpec,
    /// Drift-range limiting on the HAVIP.
    pub check_associate: bool,
    /// Hosts (indices) already in the drift range at start.
    pub initial_range: Vec<usize>,
    /// Extra TOML appended to every agent's config (e.g. `[agent]` settings). Must not repeat a table the
    /// generated config has (`[cloud]`, `[node]`, `[sentinel]`, `[redis]`, `[[havip]]`, `[claim]`).
    pub extra_toml: String,
    /// Extra `[sentinel]` keys (e.g. `fence_after = "500ms"`).
    pub sentinel_toml: String,
    /// More `ip:port` entries for every agent's `[sentinel] addresses`, after the lab's own (e.g. a Sentinel
    /// of another deployment that an operator listed by mistake).
    pub extra_sentinels: Vec<String>,
    /// Configure `[redis]`, so fencing also pauses writes.
    pub redis_fence: bool,
    /// Watcher knobs.
    pub watch: WatchOptions,
    /// A host whose agent runs outside this process (the demo sandbox's real `havip-agent run`): no
    /// in-process agent is started for it, and the fake cloud knows it by this MAC (its real interface).
    pub external: Option<(usize, [u8; 6])>,
    /// The interface name in the external host's config.
    pub external_interface: Option<String>,
    /// `[metrics] listen` for every agent's config (the external agent serves `/status` there).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// ENI mode: every host binds on a secondary ENI `eni-fleet-<n>` (MAC [`eni_mac_of`]) and its agent
    /// runs with `instance_type = "ENI"` and that ENI's id; the drift range holds ENI entries.
    pub eni_mode: bool,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            lab: LabSpec::default(),
            check_associate: true,
            initial_range: Vec::new(),
            extra_toml: String::new(),
            sentinel_toml: String::new(),
            extra_sentinels: Vec::new(),
            redis_fence: true,
            watch: WatchOptions::default(),
            external: None,
            external_interface: None,
            metrics_listen: None,
            eni_mode: false,
        }
    }
}

/// One host's agent and what it binds on.
pub struct FleetNode {
    /// Host index in the lab.
    pub index: usize,
    /// Its id in the drift range: the instance `ins-fleet-<index+1>`, or in ENI mode its secondary ENI
    /// `eni-fleet-<index+1>`.
    pub instance_id: String,
    /// Its Redis address as Sentinel reports it.
    pub address: IpAddr,
    /// Its simulated interface.
    pub net: FakeVpcNet,
    /// Its config.
    pub config: Arc<Config>,
    /// Its metrics.
    pub metrics: Metrics,
    /// Its status.
    pub status: StatusHandle,
    /// Its health.
    pub health: Health,
    /// Where its agent publishes (kept across restarts, so subscribers see every incarnation).
    pub events: broadcast::Sender<AgentEvent>,
    /// Its config as TOML (what an external agent is given).
    pub config_text: String,
    /// Its agent runs outside this process.
    pub external: bool,
    agent: Option<Agent>,
}

impl std::fmt::Debug for FleetNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetNode")
            .field("index", &self.index)
            .field("instance_id", &self.instance_id)
            .field("address", &self.address)
            .field("running", &self.agent.is_some())
            .finish()
    }
}

impl FleetNode {
    /// Whether the VIP is bound on this node's (simulated) interface.
    pub fn holds_vip(&self) -> bool {
        let vip: havip_agent::config::VipCidr = VIP.parse().expect("valid VIP");
        self.net
            .recording()
            .bound()
            .iter()
            .any(|b| b.addr == vip.addr)
    }

    /// Whether its agent runs.
    pub fn running(&self) -> bool {
        self.agent.is_some()
    }
}

/// A running fleet. Drop stops the agents (keeping VIPs) and the lab.
pub struct Fleet {
    /// The Redis/Sentinel lab.
    pub lab: RedisLab,
    /// The fake cloud.
    pub cloud: FakeCloud,
    /// One agent per host.
    pub nodes: Vec<FleetNode>,
    eni_mode: bool,
    watch: WatchOptions,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("nodes", &self.nodes).finish()
    }
}

/// The MAC of fleet host `i`.
pub fn mac_of(i: usize) -> [u8; 6] {
    [0x02, 0x00, 0x5e, 0x10, 0x00, (i + 1) as u8]
}

/// The MAC of fleet host `i`'s secondary ENI (ENI mode).
pub fn eni_mac_of(i: usize) -> [u8; 6] {
    [0x02, 0x00, 0x5e, 0x20, 0x00, (i + 1) as u8]
}

/// The id of fleet host `i`'s secondary ENI (ENI mode).
pub fn eni_of(i: usize) -> String {
    format!("eni-fleet-{}", i + 1)
}

impl Fleet {
    /// Starts the lab, the fake cloud and one agent per host.
    pub async fn start(spec: FleetSpec) -> anyhow::Result<Fleet> {
        havip_agent::tls::install_provider();
        let lab = RedisLab::start(spec.lab.clone())
            .await
            .context("starting the redis lab")?;
        let cloud = FakeCloud::start().await;
        cloud.add_key(SECRET_ID, SECRET_KEY);
        let vip: havip_agent::config::VipCidr = VIP.parse().expect("valid VIP");
        let mut havip = HavipSpec::new(HAVIP_ID, vip.addr).check_associate(spec.check_associate);
        for i in &spec.initial_range {
            havip = if spec.eni_mode {
                havip.associate_eni(eni_of(*i))
            } else {
                havip.associate(format!("ins-fleet-{}", i + 1))
            };
        }
        cloud.add_havip(havip);
        let dir = tempfile::tempdir().context("creating the fleet's temp dir")?;
        let mut nodes = Vec::new();
        for i in 0..lab.nodes() {
            let cvm_id = format!("ins-fleet-{}", i + 1);
            let external = spec.external.filter(|(e, _)| *e == i);
            cloud.add_instance(&cvm_id, external.map(|(_, mac)| mac).unwrap_or(mac_of(i)));
            let (instance_id, nic_mac, node_type) = if spec.eni_mode {
                cloud.add_eni(&cvm_id, &eni_of(i), eni_mac_of(i));
                (eni_of(i), eni_mac_of(i), "\ninstance_type = \"ENI\"")
            } else {
                (cvm_id, mac_of(i), "")
            };
            let address = lab.host(i).ip;
            let lock_dir = dir.path().join(format!("node{}", i + 1));
            let redis = if spec.redis_fence {
                format!("[redis]\naddress = \"{}\"\n", lab.redis_addr(i))
            } else {
                String::new()
            };
            let sentinels: Vec<String> = lab
                .sentinel_addrs()
                .iter()
                .chain(&spec.extra_sentinels)
                .map(|a| format!("\"{a}\""))
                .collect();
            let text = format!(
                r#"{cloud_toml}
[node]
instance_id = "{instance_id}"
address = "{address}"
interface = "{interface}"{node_type}

[sentinel]
addresses = [{sentinels}]
{sentinel_toml}

{redis}
[[havip]]
master = "{master}"
havip_id = "{HAVIP_ID}"
vip = "{VIP}"

[claim]
lock_dir = "{lock_dir}"

{metrics}
{extra}
"#,
                cloud_toml = super::inproc::cloud_toml(&cloud),
                interface = match (&external, &spec.external_interface) {
                    (Some(_), Some(ifname)) => ifname.clone(),
                    _ => format!("fleet{}", i + 1),
                },
                metrics = spec
                    .metrics_listen
                    .map(|a| format!("[metrics]\nlisten = \"{a}\"\n"))
                    .unwrap_or_default(),
                sentinels = sentinels.join(", "),
                sentinel_toml = spec.sentinel_toml,
                master = lab.master_name(),
                lock_dir = lock_dir.display(),
                extra = spec.extra_toml,
            );
            let config = Arc::new(
                Config::parse_str(
                    &text,
                    std::path::Path::new(&format!("fleet-node{}.toml", i + 1)),
                )
                .with_context(|| format!("fleet config for node {}", i + 1))?,
            );
            let (events, _) = broadcast::channel(8192);
            nodes.push(FleetNode {
                index: i,
                instance_id,
                address,
                net: FakeVpcNet::new(&format!("fleet{}", i + 1), nic_mac, cloud.clone()),
                config,
                metrics: Metrics::new(),
                status: StatusHandle::new(StatusReport::default()),
                health: Health::new(Duration::from_secs(10)),
                events,
                config_text: text,
                external: external.is_some(),
                agent: None,
            });
        }
        let mut fleet = Fleet {
            lab,
            cloud,
            eni_mode: spec.eni_mode,
            nodes,
            watch: spec.watch,
            _dir: dir,
        };
        for i in 0..fleet.nodes.len() {
            if !fleet.nodes[i].external {
                fleet.start_agent(i)?;
            }
        }
        Ok(fleet)
    }

    /// Starts (or restarts) host `i`'s agent.
    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        anyhow::ensure!(node.agent.is_none(), "agent {} already runs", i + 1);
        let parts = super::inproc::agent_parts(
            &node.config,
            Identity {
                instance_id: node.instance_id.clone(),
                address: node.address,
            },
            Arc::new(node.net.clone()),
            &node.metrics,
            &node.status,
            &node.health,
            self.watch.clone(),
        )?;
        node.agent = Some(Agent::start_with_events(parts, node.events.clone()));
        Ok(())
    }

    /// Stops host `i`'s agent (applying its `on_shutdown`).
    pub async fn stop_agent(&mut self, i: usize) {
        if let Some(a) = self.nodes[i].agent.take() {
            a.shutdown().await;
        }
    }

    /// Kills host `i`'s agent without any shutdown work, as SIGKILL would.
    pub fn kill_agent(&mut self, i: usize) {
        self.nodes[i].agent.take();
    }

    /// Host `i`'s agent, if it runs.
    pub fn agent(&self, i: usize) -> Option<&Agent> {
        self.nodes[i].agent.as_ref()
    }

    /// The host whose Redis is at `addr`.
    pub fn node_at(&self, ip: IpAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.address == ip)
    }

    /// The hosts whose interface holds the VIP.
    pub fn holders(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|n| n.holds_vip())
            .map(|n| n.index)
            .collect()
    }

    /// The fake cloud's holder, as a host index: by `InstanceId`, or in ENI mode by `NetworkInterfaceId`
    /// (the same rule as `HaVip::held_by`: another ENI of the host's CVM is not the host).
    pub fn cloud_holder(&self) -> Option<usize> {
        let h = self.cloud.havip(HAVIP_ID)?;
        let ty = if self.eni_mode {
            havip_agent::config::InstanceType::Eni
        } else {
            havip_agent::config::InstanceType::Cvm
        };
        self.nodes
            .iter()
            .position(|n| h.held_by(ty, &n.instance_id))
    }

    /// Whether host `i` has settled as the holder: it alone holds the VIP, the cloud names it, and its
    /// agent's status says the VIP is bound locally and the cloud matches.
    pub fn settled_on(&self, i: usize) -> bool {
        self.holders() == vec![i]
            && self.cloud_holder() == Some(i)
            && self.nodes[i]
                .status
                .snapshot()
                .havips
                .first()
                .is_some_and(|h| h.local_bound && h.cloud_matches == Some(true))
    }

    /// The lab's current master as a host index, once every running Sentinel agrees on it (within 20 s).
    /// Panics when they do not, or when the master is no lab host.
    pub async fn master_index(&self) -> usize {
        let addr = self
            .lab
            .wait_master(|_| true, Duration::from_secs(20))
            .await
            .expect("the sentinels agree on a master");
        self.lab.node_of(addr).expect("the master is a lab host")
    }

    /// Polls `cond` every 20 ms until it holds, for at most `within`; then panics naming `what`, with the
    /// holders, the cloud's view and the lab's last log lines.
    pub async fn wait_until(&self, within: Duration, what: &str, cond: impl Fn(&Fleet) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !cond(self) {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {within:?} waiting for {what}: holders {:?}, cloud holder {:?} ({:?})\n{}",
                    self.holders(),
                    self.cloud_holder(),
                    self.cloud.havip(HAVIP_ID),
                    self.lab.logs_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The VIP address.
    pub fn vip() -> Ipv4Addr {
        let vip: havip_agent::config::VipCidr = VIP.parse().expect("valid VIP");
        vip.addr
    }

    /// Stops every agent, then the lab.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_agent(i).await;
        }
    }
}

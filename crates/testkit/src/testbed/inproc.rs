//! One agent in this process, over the fake cloud and fake Sentinels whose every answer the test chooses.
//!
//! Owns the wiring of that one agent: its config (the node, the Sentinels, one `[[havip]]` per
//! [`HavipEntry`], `fence_after = "hold"`, a lock dir of its own), its cloud client (one per agent, as
//! `boot` builds it, so the rate limit and the batching queues are shared by every HAVIP task), a
//! [`FakeVpcNet`] for its interface, its [`Claimer`] and [`Agent`], and waiting for the agent's events. The
//! same wiring of the parts serves [`testbed::agents`](super::agents). It does not start the fake cloud or
//! the Sentinels (the test sets them up and moves them), nor decide anything (`daemon`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::broadcast;

use crate::fake::{FakeCloud, FakeVpcNet};
use crate::testbed::fake_sentinel::FakeSentinel;
use havip_agent::alerts::Alerter;
use havip_agent::claim::Claimer;
use havip_agent::cloud::VpcClient;
use havip_agent::config::Config;
use havip_agent::credentials::{Credential, CredentialProvider};
use havip_agent::daemon::{Agent, AgentEvent, AgentParts};
use havip_agent::hooks::Hooks;
use havip_agent::metrics::Metrics;
use havip_agent::net::LocalNet;
use havip_agent::node::Identity;
use havip_agent::secret::Secret;
use havip_agent::sentinel::watcher::WatchOptions;
use havip_agent::status::{Health, StatusHandle, StatusReport};

/// The key the agent signs with: the fleet's, so one `FakeCloud::add_key` serves both test beds.
pub use super::agents::{SECRET_ID, SECRET_KEY};

/// The agent's instance id unless [`InprocBuilder::node`] says otherwise.
pub const INSTANCE_ID: &str = "ins-a";
/// Its Redis address as Sentinel reports it, unless [`InprocBuilder::node`] says otherwise.
pub const ADDRESS: &str = "198.18.0.2";
/// The MAC of its interface, unless [`InprocBuilder::node`] says otherwise.
pub const MAC: [u8; 6] = [0x02, 0, 0x5e, 0x20, 0, 1];
/// Its interface.
pub const INTERFACE: &str = "eth0";

/// One `[[havip]]` of the agent's config (`vip` with prefix length 24).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HavipEntry {
    /// `master`: the Sentinel master name it follows.
    pub master: String,
    /// `havip_id`.
    pub havip_id: String,
    /// `vip`.
    pub vip: Ipv4Addr,
    /// `eip`, if any.
    pub eip: Option<Ipv4Addr>,
}

impl HavipEntry {
    /// A HAVIP without an EIP.
    pub fn new(master: impl Into<String>, havip_id: impl Into<String>, vip: Ipv4Addr) -> Self {
        Self {
            master: master.into(),
            havip_id: havip_id.into(),
            vip,
            eip: None,
        }
    }

    /// The same HAVIP with `eip` configured.
    pub fn with_eip(self, eip: Ipv4Addr) -> Self {
        Self {
            eip: Some(eip),
            ..self
        }
    }
}

/// What [`InprocAgent::next_event`] does about events its receiver missed because it fell behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Go on with the next one: the test waits for an event of interest.
    Skip,
    /// Panic: the test must see every event (e.g. to prove that none of them was a failure).
    Fail,
}

/// Wraps the agent's fake interface (e.g. in one that hangs on demand).
type WrapNet = Box<dyn FnOnce(FakeVpcNet) -> Arc<dyn LocalNet>>;

/// How to build an [`InprocAgent`]: [`InprocAgent::builder`], a few knobs, then [`InprocBuilder::start`].
pub struct InprocBuilder<'a> {
    cloud: &'a FakeCloud,
    sentinels: Vec<String>,
    instance_id: String,
    address: IpAddr,
    mac: [u8; 6],
    havips: Vec<HavipEntry>,
    extra_toml: String,
    sentinel_toml: String,
    health: Health,
    wrap_net: WrapNet,
    lock_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for InprocBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InprocBuilder")
            .field("sentinels", &self.sentinels)
            .field("instance_id", &self.instance_id)
            .field("address", &self.address)
            .field("havips", &self.havips)
            .finish_non_exhaustive()
    }
}

impl InprocBuilder<'_> {
    /// This node: its instance id, its Redis address and its interface's MAC (the fake cloud learns the
    /// instance by that MAC when the agent starts).
    pub fn node(mut self, instance_id: &str, address: IpAddr, mac: [u8; 6]) -> Self {
        self.instance_id = instance_id.to_owned();
        self.address = address;
        self.mac = mac;
        self
    }

    /// Adds a `[[havip]]`.
    pub fn havip(mut self, entry: HavipEntry) -> Self {
        self.havips.push(entry);
        self
    }

    /// TOML appended to the config (e.g. `[agent]` settings, `[[alert]]`). Must not repeat a table the
    /// generated config has (`[cloud]`, `[node]`, `[sentinel]`, `[claim]`).
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self
    }

    /// Lines added to the generated `[sentinel]` table (e.g. `poll_interval = "10m"`).
    pub fn sentinel_toml(mut self, toml: &str) -> Self {
        self.sentinel_toml.push_str(toml);
        self.sentinel_toml.push('\n');
        self
    }

    /// The agent's liveness beats (default: a 10 s deadline).
    pub fn health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// The agent binds and announces through `wrap(net)` instead of the fake interface itself.
    pub fn wrap_net(
        mut self,
        wrap: impl FnOnce(FakeVpcNet) -> Arc<dyn LocalNet> + 'static,
    ) -> Self {
        self.wrap_net = Box::new(wrap);
        self
    }

    /// `claim.lock_dir` (default: a fresh directory removed with the agent).
    pub fn lock_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.lock_dir = Some(dir.into());
        self
    }

    /// Registers the node's instance with the fake cloud, writes the config and starts the agent. The
    /// fake cloud must know [`SECRET_ID`]. Needs a Tokio runtime (the agent's tasks are spawned on it).
    pub fn start(self) -> anyhow::Result<InprocAgent> {
        havip_agent::tls::install_provider();
        self.cloud.add_instance(&self.instance_id, self.mac);
        let dir = tempfile::tempdir().context("creating the agent's lock dir")?;
        let mut text = format!(
            r#"{cloud}
[node]
instance_id = "{instance_id}"
address = "{address}"
interface = "{INTERFACE}"

[sentinel]
addresses = [{sentinels}]
fence_after = "hold"
{sentinel_extra}
[claim]
lock_dir = "{lock}"
"#,
            cloud = cloud_toml(self.cloud),
            instance_id = self.instance_id,
            address = self.address,
            sentinels = self.sentinels.join(", "),
            sentinel_extra = self.sentinel_toml,
            lock = self
                .lock_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("lock"))
                .display(),
        );
        for h in &self.havips {
            text.push_str(&format!(
                "\n[[havip]]\nmaster = \"{}\"\nhavip_id = \"{}\"\nvip = \"{}/24\"\n",
                h.master, h.havip_id, h.vip
            ));
            if let Some(eip) = h.eip {
                text.push_str(&format!("eip = \"{eip}\"\n"));
            }
        }
        text.push('\n');
        text.push_str(&self.extra_toml);
        let config = Arc::new(
            Config::parse_str(&text, std::path::Path::new("inproc-agent.toml"))
                .context("the in-process agent's config")?,
        );
        let net = FakeVpcNet::new(INTERFACE, self.mac, self.cloud.clone());
        let metrics = Metrics::new();
        let status = StatusHandle::new(StatusReport::default());
        let identity = Identity {
            instance_id: self.instance_id,
            address: self.address,
        };
        let parts = agent_parts(
            &config,
            identity,
            (self.wrap_net)(net.clone()),
            &metrics,
            &status,
            &self.health,
            WatchOptions::default(),
        )?;
        let (tx, events) = broadcast::channel(8192);
        Ok(InprocAgent {
            agent: Some(Agent::start_with_events(parts, tx)),
            events,
            net,
            config,
            metrics,
            status,
            health: self.health,
            _dir: dir,
        })
    }
}

/// A running in-process agent. Drop stops it at once (its tasks are aborted, no shutdown work), then
/// removes its lock dir.
pub struct InprocAgent {
    agent: Option<Agent>,
    /// Everything the agent publishes, from its start (subscribed before it started).
    pub events: broadcast::Receiver<AgentEvent>,
    /// Its simulated interface (what it bound and announced).
    pub net: FakeVpcNet,
    /// Its config.
    pub config: Arc<Config>,
    /// Its metrics.
    pub metrics: Metrics,
    /// Its status.
    pub status: StatusHandle,
    /// Its health.
    pub health: Health,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for InprocAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InprocAgent")
            .field("net", &self.net.interface())
            .field("running", &self.agent.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for InprocAgent {
    fn drop(&mut self) {
        // Abort the agent's tasks before the lock dir goes (fields drop in order, but say it).
        drop(self.agent.take());
    }
}

impl InprocAgent {
    /// An agent over `cloud` and `sentinels`, this node [`INSTANCE_ID`] at [`ADDRESS`] with [`MAC`], no
    /// HAVIP yet.
    pub fn builder<'a>(cloud: &'a FakeCloud, sentinels: &[FakeSentinel]) -> InprocBuilder<'a> {
        InprocBuilder {
            cloud,
            sentinels: sentinels
                .iter()
                .map(|s| format!("{:?}", s.addr()))
                .collect(),
            instance_id: INSTANCE_ID.to_owned(),
            address: IpAddr::V4(ADDRESS.parse().expect("ADDRESS is an IPv4 address")),
            mac: MAC,
            havips: Vec::new(),
            extra_toml: String::new(),
            sentinel_toml: String::new(),
            health: Health::new(Duration::from_secs(10)),
            wrap_net: Box::new(|n| Arc::new(n)),
            lock_dir: None,
        }
    }

    /// The running agent (its watcher, for the control socket).
    pub fn agent(&self) -> &Agent {
        self.agent
            .as_ref()
            .expect("the agent runs until the InprocAgent is dropped")
    }

    /// Whether `vip` is bound on the agent's (simulated) interface.
    pub fn is_bound(&self, vip: Ipv4Addr) -> bool {
        self.net.recording().bound().iter().any(|b| b.addr == vip)
    }

    /// Feeds the agent's events to `pick` until it returns `Some`, for at most `within`; `missed` says what
    /// to do about events this receiver missed because it lagged. Panics naming `what` on the deadline or
    /// when the stream ends.
    pub async fn next_event<T>(
        &mut self,
        within: Duration,
        missed: Missed,
        what: &str,
        mut pick: impl FnMut(&AgentEvent) -> Option<T>,
    ) -> T {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Ok(e) => {
                        if let Some(t) = pick(&e) {
                            return t;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) if missed == Missed::Fail => {
                        panic!("missed {n} agent events waiting for {what}")
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(e) => panic!("agent event stream ended waiting for {what}: {e}"),
                }
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("no {what} within {within:?}"))
    }
}

/// The `[cloud]` table for `cloud`: its endpoint, no metadata service (a closed port), 1 s per call.
pub(crate) fn cloud_toml(cloud: &FakeCloud) -> String {
    format!(
        r#"
[cloud]
region = "ap-guangzhou"
endpoint = "{}"
metadata_endpoint = "http://127.0.0.1:9/latest/meta-data/"
timeout = "1s"
"#,
        cloud.endpoint()
    )
}

/// The fake cloud's key ([`SECRET_ID`], [`SECRET_KEY`]) as fixed credentials.
pub fn credentials() -> CredentialProvider {
    CredentialProvider::fixed(Credential {
        secret_id: Secret::new(SECRET_ID),
        secret_key: Secret::new(SECRET_KEY),
        token: None,
    })
}

/// The parts of an in-process agent, wired as `daemon::run` wires the real ones: a cloud client that
/// signs with the fake cloud's key and records its calls in `metrics`, `net` as its interface, hooks and
/// alerts from `config`.
pub(crate) fn agent_parts(
    config: &Arc<Config>,
    identity: Identity,
    net: Arc<dyn LocalNet>,
    metrics: &Metrics,
    status: &StatusHandle,
    health: &Health,
    watch: WatchOptions,
) -> anyhow::Result<AgentParts> {
    let cloud = VpcClient::new(&config.cloud, credentials(), havip_agent::clock::system())
        .context("building the cloud client")?
        .with_observer(Arc::new(metrics.clone()));
    let claimer = Claimer::new(
        Some(cloud),
        net,
        identity.instance_id.clone(),
        config.node.instance_type,
        config.announce.clone(),
        config.cloud.timeout.get(),
    );
    Ok(AgentParts {
        config: config.clone(),
        identity,
        claimer,
        metrics: metrics.clone(),
        status: status.clone(),
        health: health.clone(),
        hooks: Hooks::with_metrics(&config.hooks, metrics.clone()),
        alerter: Alerter::new(&config.alerts, metrics.clone()),
        watch,
    })
}

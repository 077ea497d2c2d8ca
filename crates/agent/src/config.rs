//! The configuration file: parse, validate and type it in one step.
//!
//! Owns the TOML schema (a contract: other tools and checks depend on these key names), defaults, and every
//! check that can be made without touching the network. It does not resolve `"auto"` values (see
//! `metadata`) or credentials (see `credentials`).
//!
//! Every error names the key (`havip[1].vip`, `sentinel.addresses[2]`) and what is wrong with it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// Where the config is read from when `--config` is not given and `HAVIP_AGENT_CONFIG` is unset.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/havip-agent/config.toml";
/// The environment variable that names the config file (Sentinel cannot pass flags to its script).
pub const CONFIG_ENV: &str = "HAVIP_AGENT_CONFIG";

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown, or a value has the wrong form. The message names the key
    /// and the line, never the value (it may be a secret).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// `key: what is wrong (line L, column C)`, built from the error's span.
        message: String,
        /// The 1-based line of the error, when toml gave its place.
        line: Option<usize>,
    },
    /// A value is well-formed but not acceptable.
    #[error("config file {path}: {key}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `havip[0].vip`.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// Picks the config path: `--config`, then `HAVIP_AGENT_CONFIG`, then [`DEFAULT_CONFIG_PATH`].
pub fn resolve_path(flag: Option<&Path>, env: Option<&str>) -> PathBuf {
    match (flag, env) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(e)) if !e.is_empty() => PathBuf::from(e),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[cloud]`: the Tencent Cloud API.
    pub cloud: CloudConfig,
    /// `[node]`: this host.
    pub node: NodeConfig,
    /// `[sentinel]`: the Sentinels to watch.
    pub sentinel: SentinelConfig,
    /// `[redis]`: optional access to the local Redis, used to pause writes when fencing.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// `[[havip]]`: one entry per Sentinel master name.
    #[serde(rename = "havip", default)]
    pub havips: Vec<HavipConfig>,
    /// `[claim]`: how a claim is carried out (shared by `migrate-havip` and the daemon).
    #[serde(default)]
    pub claim: ClaimConfig,
    /// `[announce]`: gratuitous ARP timing.
    #[serde(default)]
    pub announce: AnnounceConfig,
    /// `[agent]`: daemon behaviour.
    #[serde(default)]
    pub agent: AgentConfig,
    /// `[metrics]`: the HTTP endpoint for metrics, health and status.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[hooks]`: executables run after acquiring or releasing a VIP.
    #[serde(default)]
    pub hooks: HooksConfig,
    /// `[[alert]]`: webhooks notified of failovers, off the failover path.
    #[serde(rename = "alert", default)]
    pub alerts: Vec<AlertConfig>,
    /// The file this was read from (not a key).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[cloud]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Region, e.g. `ap-guangzhou`; sent as `X-TC-Region`. Required.
    pub region: String,
    /// VPC API endpoint. `http://` is allowed (tests point it at the fake). When absent, the regional
    /// endpoint `https://vpc.<region>.tencentcloudapi.com`: see [`CloudConfig::endpoint_url`].
    #[serde(default)]
    pub endpoint: Option<String>,
    /// CVM metadata service base URL.
    #[serde(default = "default_metadata_endpoint")]
    pub metadata_endpoint: String,
    /// Timeout of one API request.
    #[serde(default = "default_cloud_timeout")]
    pub timeout: Dur,
    /// Optional static SecretId (the environment takes precedence).
    #[serde(default)]
    pub secret_id: Option<Secret>,
    /// Optional static SecretKey. The config file must then not be readable by group or others.
    #[serde(default)]
    pub secret_key: Option<Secret>,
    /// Client-side limit of requests per second, per API action, shared by every HAVIP of the process.
    /// The API's documented default is 20 per second per action per account.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// How often an idle client touches the endpoint to keep its connection open, so that a failover's
    /// first call does not pay for DNS, TCP and TLS again. `0s` turns it off.
    #[serde(default = "default_keep_warm")]
    pub keep_warm: Dur,
}

impl CloudConfig {
    /// The VPC endpoint to use: `cloud.endpoint` when set, else the regional
    /// `https://vpc.<region>.tencentcloudapi.com`. The regional domain is the only one the financial
    /// regions (`ap-shanghai-fsi`, `ap-shenzhen-fsi`) answer on, and the low-latency choice everywhere;
    /// the nearest-access `vpc.tencentcloudapi.com` is "only for non-financial zones".
    pub fn endpoint_url(&self) -> String {
        match &self.endpoint {
            Some(url) => url.clone(),
            None => format!("https://vpc.{}.tencentcloudapi.com", self.region.trim()),
        }
    }
}

/// Whether `s` can be a region id (`ap-guangzhou`, `ap-shanghai-fsi`): lowercase letters, digits and `-`.
/// The default endpoint puts it in a host name, so nothing else may pass.
pub fn is_region(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The documented default rate limit of a VPC API action, per second.
pub const DEFAULT_RATE_LIMIT: u32 = 20;

fn default_rate_limit() -> u32 {
    DEFAULT_RATE_LIMIT
}
fn default_keep_warm() -> Dur {
    Dur::from_secs(30)
}
fn default_metadata_endpoint() -> String {
    "http://metadata.tencentyun.com/latest/meta-data/".into()
}
fn default_cloud_timeout() -> Dur {
    Dur::from_secs(3)
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This CVM's instance id, or `"auto"` for the metadata `instance-id`. With `instance_type = "ENI"`:
    /// the ENI's id, or `"auto"` for the ENI of `interface` (metadata `network/interfaces/macs/<mac>/eni-id`).
    #[serde(default)]
    pub instance_id: AutoOr<String>,
    /// This host's Redis address as Sentinel reports it, or `"auto"` for the metadata `local-ipv4`.
    #[serde(default)]
    pub address: AutoOr<IpAddr>,
    /// The interface the VIP is bound on and announced from.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// How this node appears in a drift range: `"CVM"` (default) or `"ENI"` (a secondary ENI; the holder is
    /// then compared by `NetworkInterfaceId`).
    #[serde(default)]
    pub instance_type: InstanceType,
}

fn default_interface() -> String {
    "eth0".into()
}

/// `"auto"` or a concrete value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AutoOr<T> {
    /// Resolve at run time (from the metadata service).
    #[default]
    Auto,
    /// A configured value.
    Value(T),
}

impl<'de, T> Deserialize<'de> for AutoOr<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "auto" {
            return Ok(AutoOr::Auto);
        }
        s.parse::<T>().map(AutoOr::Value).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is neither \"auto\" nor valid: {e}"))
        })
    }
}

/// The kind of entry this node is in a drift range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum InstanceType {
    /// A CVM instance (covers every ENI of it).
    #[default]
    #[serde(rename = "CVM")]
    Cvm,
    /// An elastic network interface.
    #[serde(rename = "ENI")]
    Eni,
}

impl InstanceType {
    /// The API's spelling.
    pub fn as_api_str(self) -> &'static str {
        match self {
            InstanceType::Cvm => "CVM",
            InstanceType::Eni => "ENI",
        }
    }
}

/// `[sentinel]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// Every Sentinel of the deployment, `host:port`. A majority of these must be reachable to act.
    pub addresses: Vec<String>,
    /// ACL username.
    #[serde(default)]
    pub username: Option<String>,
    /// ACL or `requirepass` password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS, for Sentinels started with `tls-port`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Timeout of one request (and of connecting). A Sentinel that does not answer within it counts as
    /// unreachable and its connection is dropped: this is what catches silently stalled links.
    #[serde(default = "default_sentinel_timeout")]
    pub timeout: Dur,
    /// How often each Sentinel is pinged to measure reachability. A link that stalls silently is noticed
    /// within `heartbeat + timeout` (450 ms with the defaults). The pings are most of an idle agent's CPU
    /// time (BENCHMARKS.md, idle footprint): 100 ms costs about one and a half times what 200 ms does.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: Dur,
    /// How often every Sentinel is asked `SENTINEL MASTER` even without events.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Dur,
    /// Upper bound of the reconnect backoff.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Dur,
    /// Self-fencing: how long this node may hold a VIP without seeing a Sentinel majority.
    /// `"auto"` (a third of the smallest `down-after-milliseconds` Sentinel reports), a duration, or `"hold"`.
    #[serde(default)]
    pub fence_after: FenceAfter,
    /// Confirm the newest configuration's address with `ROLE` before claiming.
    #[serde(default)]
    pub confirm_role: bool,
}

fn default_sentinel_timeout() -> Dur {
    Dur::from_millis(250)
}
fn default_heartbeat() -> Dur {
    Dur::from_millis(200)
}
fn default_poll_interval() -> Dur {
    Dur::from_secs(1)
}
fn default_reconnect_max() -> Dur {
    Dur::from_secs(1)
}

/// TLS settings for Sentinel (and local Redis) connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA that signed the server certificates. Default: the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for `tls-auth-clients yes`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM client key, with `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Skip server certificate verification of the Sentinels. Only for labs: logged as a warning at start and
    /// in `check`. Never applies to `[redis]`, which has its own `tls_insecure`.
    #[serde(default)]
    pub insecure: bool,
}

/// When to release a held VIP after losing sight of the Sentinel majority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FenceAfter {
    /// A third of the smallest `down-after-milliseconds` any Sentinel reports for the master.
    #[default]
    Auto,
    /// After this long.
    After(Duration),
    /// Never release because of lost sight.
    Hold,
}

impl<'de> Deserialize<'de> for FenceAfter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "auto" => Ok(FenceAfter::Auto),
            "hold" | "never" => Ok(FenceAfter::Hold),
            other => humantime::parse_duration(other)
                .map_err(|e| {
                    format!("{other:?} is not \"auto\", \"hold\" or a duration like \"500ms\": {e}")
                })
                .and_then(|d| within_max_duration(other, d))
                .map(FenceAfter::After)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `[redis]`: access to the local Redis, for the write-pause fence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The local Redis, `host:port`. Default: this node's address and the port Sentinel reports.
    #[serde(default)]
    pub address: Option<String>,
    /// ACL username.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Use TLS, with the `[sentinel.tls]` CA and client files; the server certificate is verified even
    /// when `sentinel.tls.insecure` is set (see `tls_insecure`).
    #[serde(default)]
    pub tls: bool,
    /// Skip verification of the local Redis' certificate (with `tls = true`). Only for labs: logged as a
    /// warning at start and in `check`.
    #[serde(default)]
    pub tls_insecure: bool,
    /// Pause writes (`CLIENT PAUSE <ms> WRITE`) while fenced. On by default when `[redis]` is present.
    #[serde(default = "default_true")]
    pub pause_writes: bool,
    /// Length of one pause; it is renewed at half this while still cut off.
    #[serde(default = "default_pause")]
    pub pause: Dur,
}

fn default_true() -> bool {
    true
}
fn default_pause() -> Dur {
    Dur::from_secs(2)
}

/// `[[havip]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HavipConfig {
    /// The Sentinel master name.
    pub master: String,
    /// The HAVIP, `havip-xxxxxxxx`.
    pub havip_id: String,
    /// The VIP with its prefix length, e.g. `172.16.2.250/24`.
    pub vip: VipCidr,
    /// `"inclusive"` (default): the drift range keeps every instance. `"exclusive"`: after a successful claim
    /// the new holder removes the other instances, so the cloud ignores a stale master's GARP; the next
    /// failover then needs the API to be reachable.
    #[serde(default)]
    pub scope: Scope,
    /// An EIP (public IPv4 address) to keep bound to the HAVIP, so clients outside the VPC reach the VIP.
    /// The agent binds it when the HAVIP has none (`HaVipAssociateAddressIp`) and never unbinds it: it
    /// follows the HAVIP on failover.
    #[serde(default, deserialize_with = "deserialize_eip")]
    pub eip: Option<Ipv4Addr>,
}

fn deserialize_eip<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{s:?} is not an IPv4 address like \"203.0.113.10\" (the EIP's public address)"
        ))
    })
}

/// Why `eip` cannot be the EIP of a HAVIP whose VIP is `vip`, if it cannot.
fn eip_problem(eip: Ipv4Addr, vip: Ipv4Addr) -> Option<String> {
    if eip == vip {
        return Some(format!(
            "{eip} is the VIP itself: eip is the public address (EIP) to bind to the HAVIP"
        ));
    }
    let shared = eip.octets()[0] == 100 && (eip.octets()[1] & 0xc0) == 64;
    if eip.is_unspecified()
        || eip.is_loopback()
        || eip.is_multicast()
        || eip.is_broadcast()
        || eip.is_link_local()
    {
        return Some(format!("{eip} cannot be an EIP"));
    }
    if eip.is_private() || shared {
        return Some(format!(
            "{eip} is a private address: an EIP is a public address (the VIP itself goes in havip.vip)"
        ));
    }
    None
}

/// Drift-range policy, see [`HavipConfig::scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Leave other instances in the drift range.
    #[default]
    Inclusive,
    /// Remove other instances from the drift range after a successful claim.
    Exclusive,
}

/// `[claim]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimConfig {
    /// How long a claim keeps trying to get the move confirmed. Always under Sentinel's 60 s script kill.
    #[serde(default = "default_claim_deadline")]
    pub deadline: Dur,
    /// Directory of the per-HAVIP lock files that serialise concurrent `migrate-havip` calls.
    #[serde(default = "default_lock_dir")]
    pub lock_dir: PathBuf,
}

fn default_claim_deadline() -> Dur {
    Dur::from_secs(15)
}
fn default_lock_dir() -> PathBuf {
    PathBuf::from("/run/havip-agent")
}

impl Default for ClaimConfig {
    fn default() -> Self {
        Self {
            deadline: default_claim_deadline(),
            lock_dir: default_lock_dir(),
        }
    }
}

/// `[announce]`: gratuitous ARP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// Rounds in one burst. Each round sends one ARP request and one ARP reply. The first is immediate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Time over which the rounds of one burst are spread.
    #[serde(default = "default_spread")]
    pub spread: Dur,
    /// While holding a VIP, re-announce this often. Tencent's VPC rate-limits GARP per NIC; Tencent's
    /// keepalived guide uses 5 s. `"0s"` turns it off.
    #[serde(default = "default_refresh")]
    pub refresh_interval: Dur,
}

fn default_burst() -> u32 {
    4
}
fn default_spread() -> Dur {
    Dur::from_secs(1)
}
fn default_refresh() -> Dur {
    Dur::from_secs(10)
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            burst: default_burst(),
            spread: default_spread(),
            refresh_interval: default_refresh(),
        }
    }
}

/// `[agent]`: the daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// What to do with held VIPs on SIGTERM/SIGINT.
    #[serde(default)]
    pub on_shutdown: OnShutdown,
    /// While holding, verify the cloud holder with `DescribeHaVips` this often.
    #[serde(default = "default_verify_interval")]
    pub verify_interval: Dur,
    /// The daemon's control socket, where `migrate-havip` (run by Sentinel) asks it to look again
    /// (see `control`). Default: `control.sock` in `claim.lock_dir` (`/run/havip-agent`, which the unit's
    /// `RuntimeDirectory` and the tmpfiles.d entry create); see [`Config::control_socket`].
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// The group given the control socket (mode 0660): the Sentinel's user joins it.
    #[serde(default = "default_control_group")]
    pub control_group: String,
}

fn default_verify_interval() -> Dur {
    Dur::from_secs(30)
}

fn default_control_group() -> String {
    crate::control::DEFAULT_GROUP.to_owned()
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            on_shutdown: OnShutdown::default(),
            verify_interval: default_verify_interval(),
            control_socket: None,
            control_group: default_control_group(),
        }
    }
}

/// What the daemon does with a held VIP when it is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnShutdown {
    /// Leave the VIP bound: a restart or upgrade of the agent must not cause an outage of the master.
    #[default]
    Keep,
    /// Remove the VIP before exiting.
    Release,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/status`). Off when unset.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// `[hooks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Executable run after this node acquired a VIP.
    #[serde(default)]
    pub on_acquire: Option<PathBuf>,
    /// Executable run after this node released a VIP.
    #[serde(default)]
    pub on_release: Option<PathBuf>,
    /// A hook still running after this is killed.
    #[serde(default = "default_hook_timeout")]
    pub timeout: Dur,
}

fn default_hook_timeout() -> Dur {
    Dur::from_secs(10)
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            on_acquire: None,
            on_release: None,
            timeout: default_hook_timeout(),
        }
    }
}

/// `[[alert]]`: a webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// The webhook URL. Treated as a secret (WeCom puts its key in the URL).
    pub url: Secret,
    /// `"json"` (a generic JSON body) or `"wecom"` (企业微信 group robot).
    #[serde(default)]
    pub format: AlertFormat,
    /// For `wecom`: `"text"` or `"markdown"`.
    #[serde(default)]
    pub msgtype: WecomMsgType,
    /// Timeout of one delivery attempt.
    #[serde(default = "default_alert_timeout")]
    pub timeout: Dur,
    /// Attempts per alert, with backoff.
    #[serde(default = "default_alert_attempts")]
    pub attempts: u32,
}

fn default_alert_timeout() -> Dur {
    Dur::from_secs(5)
}
fn default_alert_attempts() -> u32 {
    3
}

/// Body format of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// A generic JSON object.
    #[default]
    Json,
    /// The WeCom group-robot format.
    Wecom,
}

/// WeCom message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WecomMsgType {
    /// Plain text.
    #[default]
    Text,
    /// Markdown.
    Markdown,
}

/// A duration written the humantime way (`"3s"`, `"250ms"`, `"1m 30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Seconds.
    pub const fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    /// The `Duration`.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| format!("{s:?} is not a duration like \"3s\" or \"250ms\": {e}"))
            .and_then(|d| within_max_duration(&s, d))
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// The longest duration any key accepts. Every duration ends up added to an `Instant`, which panics on
/// overflow (`"100000000000d"` parses); none of them makes sense beyond a day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

fn within_max_duration(text: &str, d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "{text:?} is longer than the longest accepted duration, {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// An IPv4 VIP with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VipCidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 1..=32.
    pub prefix: u8,
}

impl FromStr for VipCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} has no prefix length: write it like \"172.16.2.250/24\"")
        })?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address (HAVIPs are IPv4)"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| format!("prefix length {p:?} is not a number from 1 to 32"))?;
        if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast()
        {
            return Err(format!("{addr} cannot be a VIP"));
        }
        Ok(VipCidr { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for VipCidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for VipCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Splits `host:port` (or `[v6]:port`) and checks both parts.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: port {port:?} is not a number from 1 to 65535"))?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid_host {
        return Err(format!("{s:?}: {host:?} is not a host name or IP address"));
    }
    Ok((host.to_owned(), port))
}

/// Whether `name` looks like a bare dotted key (`cloud`, `havip`, `sentinel.password`). Anything else on a
/// malformed line (`[secret_key = "..."]`) is not a key and may hold a value, so it is never named.
fn is_key_path(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The dotted key (`havip[1].vip`) on the line holding byte `offset`, for error messages. Understands the
/// simple layout this file uses: `[table]`, `[[array]]` headers and `key = value` lines.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let end = pos + line.len();
        let t = line.trim();
        if let Some(name) = t
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim())
            .filter(|n| is_key_path(n))
        {
            let n = counts.entry(name.to_owned()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n.trim())
            .filter(|n| is_key_path(n))
        {
            table = name.to_owned();
        } else if t.starts_with('[') {
            // A header that is not a key path (`[secret_key = "..."]`): name no table from here on.
            table.clear();
        }
        if (pos..end).contains(&offset) {
            if t.starts_with('[') {
                return (!table.is_empty()).then_some(table);
            }
            let key = t
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"'))
                .filter(|k| is_key_path(k))?;
            return Some(if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            });
        }
        pos = end;
    }
    None
}

/// Keys whose value is a secret: a parse error on them never shows toml's or serde's message, which can
/// quote the value (`invalid type: integer `123``).
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    matches!(
        last,
        "secret_id" | "secret_key" | "password" | "url" | "token"
    ) || last.contains("secret")
        || last.contains("password")
}

/// The message of a TOML error without the source line that toml's `Display` shows (an unterminated
/// `secret_key = "...` would otherwise be quoted into the journal): `key: problem (line L, column C)`.
/// Returns the message and the 1-based line.
fn parse_error_message(text: &str, e: &toml::de::Error) -> (String, Option<usize>) {
    let start = e.span().map(|s| s.start.min(text.len()));
    let key = start.and_then(|s| key_path_at(text, s));
    let place = start.map(|s| {
        let before = &text.as_bytes()[..s];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let column = text
            .get(line_start..s)
            .map_or(s - line_start, |t| t.chars().count())
            + 1;
        (line, column, line_start)
    });
    // toml's and serde's messages are one line each, but a few span two ("invalid string\nexpected ..").
    let raw = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let problem = if key.as_deref().is_some_and(is_secret_key) {
        "is malformed or has the wrong type (the value is not shown: it is a secret)".to_owned()
    } else if key.is_some() {
        raw
    } else {
        // The place is not a `key = value` line we understand (a multi-line value, a stray line): keep
        // every word of that line out of the message, in case it is a pasted secret.
        let line_text = place.map_or("", |(_, _, ls)| {
            let rest = &text[ls..];
            rest.split('\n').next().unwrap_or(rest)
        });
        redact_line_value(&raw, line_text)
    };
    let mut message = match &key {
        Some(key) => format!("{key}: {problem}"),
        None => problem,
    };
    if let Some((line, column, _)) = place {
        message.push_str(&format!(" (line {line}, column {column})"));
    }
    (message, place.map(|(line, _, _)| line))
}

/// `message` with every word of `line`'s value (the part after `=`, or the whole line) that is 4
/// characters or longer replaced by `***`.
fn redact_line_value(message: &str, line: &str) -> String {
    let value = line.split_once('=').map_or(line, |(_, v)| v);
    let mut out = message.to_owned();
    let mut words: Vec<&str> = value
        .split(|c: char| c.is_whitespace() || "\"'`,[]{}".contains(c))
        .filter(|w| w.chars().count() >= 4)
        .collect();
    // Longest first, so a word inside another does not leave the rest of the longer one behind.
    words.sort_by_key(|w| std::cmp::Reverse(w.len()));
    for w in words {
        out = out.replace(w, "***");
    }
    out
}

impl Config {
    /// Reads, parses and validates the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Config::parse_str(&text, path)?;
        cfg.check_file_mode(path)?;
        cfg.source = path.to_path_buf();
        Ok(cfg)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn parse_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let (message, line) = parse_error_message(text, &e);
            ConfigError::Parse {
                path: path.to_path_buf(),
                message,
                line,
            }
        })?;
        cfg.source = path.to_path_buf();
        cfg.validate()?;
        Ok(cfg)
    }

    fn invalid(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The control socket's path: `agent.control_socket`, else `control.sock` in `claim.lock_dir`, the
    /// directory the daemon and `migrate-havip` already share.
    pub fn control_socket(&self) -> PathBuf {
        self.agent
            .control_socket
            .clone()
            .unwrap_or_else(|| self.claim.lock_dir.join(crate::control::SOCKET_NAME))
    }

    /// The `[[havip]]` entry for a Sentinel master name.
    pub fn havip_for_master(&self, master: &str) -> Option<&HavipConfig> {
        self.havips.iter().find(|h| h.master == master)
    }

    /// Checks that cannot be expressed in the types.
    fn validate(&self) -> Result<(), ConfigError> {
        let region = &self.cloud.region;
        if !is_region(region) {
            return Err(self.invalid(
                "cloud.region",
                format!("{region:?} is not a region like \"ap-guangzhou\""),
            ));
        }
        let endpoint = self.cloud.endpoint_url();
        for (key, url) in [
            ("cloud.endpoint", &endpoint),
            ("cloud.metadata_endpoint", &self.cloud.metadata_endpoint),
        ] {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && reqwest::Url::parse(url).is_ok_and(|u| u.host_str().is_some());
            if !ok {
                return Err(self.invalid(key, format!("{url:?} is not an http(s) URL")));
            }
        }
        if self.cloud.timeout.get().is_zero() {
            return Err(self.invalid("cloud.timeout", "must be more than 0"));
        }
        if self.cloud.rate_limit == 0 {
            return Err(self.invalid(
                "cloud.rate_limit",
                "must be more than 0 (requests per second per action)",
            ));
        }
        match (&self.cloud.secret_id, &self.cloud.secret_key) {
            (Some(_), None) => {
                return Err(
                    self.invalid("cloud.secret_key", "missing: secret_id is set without it")
                );
            }
            (None, Some(_)) => {
                return Err(
                    self.invalid("cloud.secret_id", "missing: secret_key is set without it")
                );
            }
            (Some(id), Some(key)) if id.is_empty() || key.is_empty() => {
                return Err(self.invalid(
                    "cloud.secret_id",
                    "secret_id and secret_key must not be empty",
                ));
            }
            _ => {}
        }
        if let AutoOr::Value(id) = &self.node.instance_id {
            let ok = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(self.invalid(
                    "node.instance_id",
                    format!("{id:?} is not \"auto\" or an id like \"ins-xxxxxxxx\""),
                ));
            }
        }
        let ifname = &self.node.interface;
        if ifname.is_empty()
            || ifname.len() > 15
            || ifname.contains('/')
            || ifname.chars().any(char::is_whitespace)
        {
            return Err(self.invalid(
                "node.interface",
                format!("{ifname:?} is not a Linux interface name (1-15 characters)"),
            ));
        }
        if let Err(problem) = crate::control::check_socket_path(&self.control_socket()) {
            return Err(self.invalid("agent.control_socket", problem));
        }
        if self.agent.control_group.is_empty() {
            return Err(self.invalid("agent.control_group", "must name a group"));
        }
        if self.sentinel.addresses.is_empty() {
            return Err(self.invalid(
                "sentinel.addresses",
                "list at least one Sentinel (all of them, for the majority test)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self.sentinel.addresses.iter().enumerate() {
            let key = format!("sentinel.addresses[{i}]");
            let hp = parse_host_port(a).map_err(|p| self.invalid(&key, p))?;
            if !seen.insert(hp) {
                return Err(self.invalid(key, format!("{a:?} is listed twice")));
            }
        }
        for (key, d) in [
            ("sentinel.timeout", self.sentinel.timeout),
            ("sentinel.heartbeat", self.sentinel.heartbeat),
            ("sentinel.poll_interval", self.sentinel.poll_interval),
            ("sentinel.reconnect_max", self.sentinel.reconnect_max),
        ] {
            if d.get().is_zero() {
                return Err(self.invalid(key, "must be more than 0"));
            }
        }
        if let FenceAfter::After(d) = self.sentinel.fence_after
            && d.is_zero()
        {
            return Err(self.invalid(
                "sentinel.fence_after",
                "must be more than 0 (or \"auto\" or \"hold\")",
            ));
        }
        if let Some(tls) = &self.sentinel.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(self.invalid(
                "sentinel.tls.key_file",
                "cert_file and key_file go together",
            ));
        }
        if let Some(redis) = &self.redis {
            if let Some(a) = &redis.address {
                parse_host_port(a).map_err(|p| self.invalid("redis.address", p))?;
            }
            if redis.pause.get() < Duration::from_millis(100) {
                return Err(self.invalid("redis.pause", "must be at least 100ms"));
            }
            if redis.tls && self.sentinel.tls.is_none() {
                return Err(self.invalid("redis.tls", "needs [sentinel.tls] for the certificates"));
            }
            if redis.tls_insecure && !redis.tls {
                return Err(self.invalid(
                    "redis.tls_insecure",
                    "only means something with redis.tls = true",
                ));
            }
        }
        if self.havips.is_empty() {
            return Err(self.invalid(
                "havip",
                "no [[havip]] entries: add one per Sentinel master name",
            ));
        }
        let mut masters = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        let mut vips = std::collections::HashSet::new();
        let mut eips = std::collections::HashSet::new();
        for (i, h) in self.havips.iter().enumerate() {
            if h.master.is_empty()
                || h.master
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(self.invalid(
                    format!("havip[{i}].master"),
                    format!("{:?} is not a Sentinel master name", h.master),
                ));
            }
            if !masters.insert(&h.master) {
                return Err(self.invalid(
                    format!("havip[{i}].master"),
                    format!("{:?} has another [[havip]] already", h.master),
                ));
            }
            let id_ok = h.havip_id.starts_with("havip-")
                && h.havip_id.len() > 6
                && h.havip_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !id_ok {
                return Err(self.invalid(
                    format!("havip[{i}].havip_id"),
                    format!("{:?} is not an id like \"havip-xxxxxxxx\"", h.havip_id),
                ));
            }
            if !ids.insert(&h.havip_id) {
                return Err(self.invalid(
                    format!("havip[{i}].havip_id"),
                    format!("{:?} is used twice", h.havip_id),
                ));
            }
            if !vips.insert(h.vip.addr) {
                return Err(self.invalid(
                    format!("havip[{i}].vip"),
                    format!("{} is used twice", h.vip.addr),
                ));
            }
            if let Some(eip) = h.eip {
                if let Some(problem) = eip_problem(eip, h.vip.addr) {
                    return Err(self.invalid(
                        format!("havip[{i}].eip"),
                        format!("{problem} (havip {})", h.havip_id),
                    ));
                }
                if !eips.insert(eip) {
                    return Err(self.invalid(
                        format!("havip[{i}].eip"),
                        format!(
                            "{eip} is used twice: an EIP binds to one HAVIP only (havip {})",
                            h.havip_id
                        ),
                    ));
                }
            }
        }
        if self.claim.deadline.get().is_zero()
            || self.claim.deadline.get() > Duration::from_secs(55)
        {
            return Err(self.invalid(
                "claim.deadline",
                format!(
                    "{} must be more than 0 and at most 55s (Sentinel kills its script at 60s)",
                    self.claim.deadline
                ),
            ));
        }
        if self.announce.burst == 0 || self.announce.burst > 20 {
            return Err(self.invalid("announce.burst", "must be from 1 to 20"));
        }
        if !self.announce.refresh_interval.get().is_zero()
            && self.announce.refresh_interval.get() < Duration::from_secs(1)
        {
            return Err(self.invalid(
                "announce.refresh_interval",
                "must be \"0s\" (off) or at least 1s: the VPC rate-limits gratuitous ARP per NIC",
            ));
        }
        if self.agent.verify_interval.get() < Duration::from_secs(1) {
            return Err(self.invalid(
                "agent.verify_interval",
                "must be at least 1s (DescribeHaVips is limited to 20 requests/s)",
            ));
        }
        if self.hooks.timeout.get().is_zero() {
            return Err(self.invalid("hooks.timeout", "must be more than 0"));
        }
        for (key, hook) in [
            ("hooks.on_acquire", &self.hooks.on_acquire),
            ("hooks.on_release", &self.hooks.on_release),
        ] {
            if let Some(p) = hook
                && !p.is_absolute()
            {
                return Err(self.invalid(key, format!("{} must be an absolute path", p.display())));
            }
        }
        for (i, a) in self.alerts.iter().enumerate() {
            let url = a.url.expose();
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && reqwest::Url::parse(url).is_ok();
            if !ok {
                // The URL may carry a key: say what is wrong without printing it.
                return Err(self.invalid(format!("alert[{i}].url"), "is not an http(s) URL"));
            }
            if a.attempts == 0 || a.attempts > 20 {
                return Err(self.invalid(format!("alert[{i}].attempts"), "must be from 1 to 20"));
            }
        }
        Ok(())
    }

    /// Refuses a config that holds a secret (a key, a password, an alert URL) and is readable by group or
    /// others. Alert URLs count: WeCom and most webhooks put their key in the URL.
    fn check_file_mode(&self, path: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let secret_key = if self.cloud.secret_key.is_some() {
            Some("cloud.secret_key".to_owned())
        } else if self.sentinel.password.is_some() {
            Some("sentinel.password".to_owned())
        } else if self.redis.as_ref().is_some_and(|r| r.password.is_some()) {
            Some("redis.password".to_owned())
        } else if !self.alerts.is_empty() {
            Some("alert[0].url".to_owned())
        } else {
            None
        };
        let Some(secret_key) = secret_key else {
            return Ok(());
        };
        let mode = std::fs::metadata(path)
            .map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(self.invalid(
                secret_key,
                format!(
                    "the file holds secrets but is readable by group or others (mode {:o}): run chmod 600 {}",
                    mode & 0o777,
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[cloud]
region = "ap-guangzhou"

[node]
instance_id = "auto"
address = "auto"
interface = "eth0"

[sentinel]
addresses = ["172.16.2.4:26379", "172.16.2.2:26379", "172.16.2.15:26379"]

[[havip]]
master = "mymaster"
havip_id = "havip-xxxxxxxx"
vip = "172.16.2.250/24"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_str(text, Path::new("test.toml"))
    }

    fn err(text: &str) -> String {
        parse(text)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn minimal_config_from_the_contract_parses_with_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.cloud.endpoint, None);
        assert_eq!(
            c.cloud.endpoint_url(),
            "https://vpc.ap-guangzhou.tencentcloudapi.com"
        );
        assert_eq!(c.cloud.rate_limit, 20);
        assert_eq!(c.cloud.keep_warm.get(), Duration::from_secs(30));
        assert_eq!(c.cloud.timeout.get(), Duration::from_secs(3));
        assert_eq!(c.node.instance_id, AutoOr::Auto);
        assert_eq!(c.node.address, AutoOr::Auto);
        assert_eq!(
            c.havips[0].vip,
            VipCidr {
                addr: Ipv4Addr::new(172, 16, 2, 250),
                prefix: 24
            }
        );
        assert_eq!(c.havips[0].scope, Scope::Inclusive);
        assert_eq!(c.claim.deadline.get(), Duration::from_secs(15));
        assert_eq!(c.sentinel.fence_after, FenceAfter::Auto);
        assert_eq!(c.agent.on_shutdown, OnShutdown::Keep);
        assert!(c.redis.is_none());
        assert!(c.metrics.listen.is_none());
    }

    #[test]
    fn the_endpoint_comes_from_the_region_unless_set() {
        let fsi = parse(&MINIMAL.replace("ap-guangzhou", "ap-shanghai-fsi")).unwrap();
        assert_eq!(
            fsi.cloud.endpoint_url(),
            "https://vpc.ap-shanghai-fsi.tencentcloudapi.com"
        );
        let set = parse(&MINIMAL.replace(
            "region = \"ap-guangzhou\"",
            "region = \"ap-guangzhou\"\nendpoint = \"http://127.0.0.1:8080\"\nrate_limit = 5",
        ))
        .unwrap();
        assert_eq!(set.cloud.endpoint_url(), "http://127.0.0.1:8080");
        assert_eq!(set.cloud.rate_limit, 5);
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        let e = err(&MINIMAL.replace(
            "interface = \"eth0\"",
            "interface = \"eth0\"\nhosting_type = \"x\"",
        ));
        assert!(e.contains("hosting_type"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "vip = \"172.16.2.250/24\"",
                "vip = \"172.16.2.250\"",
                "no prefix length",
            ),
            (
                "vip = \"172.16.2.250/24\"",
                "vip = \"172.16.2.250/33\"",
                "prefix length",
            ),
            ("vip = \"172.16.2.250/24\"", "vip = \"fe80::1/64\"", "IPv4"),
            (
                "havip_id = \"havip-xxxxxxxx\"",
                "havip_id = \"vip-1\"",
                "havip[0].havip_id",
            ),
            (
                "region = \"ap-guangzhou\"",
                "region = \"AP Guangzhou\"",
                "cloud.region",
            ),
            (
                "region = \"ap-guangzhou\"",
                "region = \"ap.guangzhou/x\"",
                "cloud.region",
            ),
            (
                "region = \"ap-guangzhou\"",
                "region = \"ap-guangzhou\"\nrate_limit = 0",
                "cloud.rate_limit",
            ),
            (
                "\"172.16.2.15:26379\"",
                "\"172.16.2.15\"",
                "sentinel.addresses[2]",
            ),
            (
                "\"172.16.2.15:26379\"",
                "\"172.16.2.4:26379\"",
                "listed twice",
            ),
            ("address = \"auto\"", "address = \"not-an-ip\"", "not-an-ip"),
            (
                "interface = \"eth0\"",
                "interface = \"averyveryverylongname\"",
                "node.interface",
            ),
            (
                "[sentinel]",
                "[sentinel]\ntimeout = \"soon\"",
                "not a duration",
            ),
            (
                "[sentinel]",
                "[sentinel]\nfence_after = \"sometimes\"",
                "hold",
            ),
        ];
        for (from, to, want) in cases {
            let e = err(&MINIMAL.replace(from, to));
            assert!(
                e.contains(want),
                "replacing {from:?} with {to:?}: error {e:?} should mention {want:?}"
            );
        }
    }

    #[test]
    fn parse_errors_start_with_the_dotted_key() {
        let e = err(&format!(
            "{MINIMAL}\n[[havip]]\nmaster = \"b\"\nhavip_id = \"havip-2\"\nvip = \"1.2.3.4\"\n"
        ));
        assert!(e.contains("havip[1].vip: "), "{e}");
        let e = err(&MINIMAL.replace(
            "interface = \"eth0\"",
            "interface = \"eth0\"\nhosting_type = 1",
        ));
        assert!(e.contains("node.hosting_type: "), "{e}");
    }

    #[test]
    fn eip_is_optional_and_parsed_as_an_ipv4_address() {
        assert_eq!(parse(MINIMAL).unwrap().havips[0].eip, None);
        let c = parse(&format!("{MINIMAL}eip = \"203.0.113.10\"\n")).unwrap();
        assert_eq!(c.havips[0].eip, Some(Ipv4Addr::new(203, 0, 113, 10)));
    }

    #[test]
    fn a_bad_eip_names_the_key_and_the_havip() {
        struct Row {
            eip: &'static str,
            want: &'static str,
        }
        let rows = [
            Row {
                eip: "203.0.113",
                want: "havip[0].eip: ",
            },
            Row {
                eip: "eip-abcdefgh",
                want: "is not an IPv4 address",
            },
            Row {
                eip: "10.1.2.3",
                want: "private address",
            },
            Row {
                eip: "172.16.2.250",
                want: "the VIP itself",
            },
            Row {
                eip: "0.0.0.0",
                want: "cannot be an EIP",
            },
        ];
        for r in rows {
            let e = err(&format!("{MINIMAL}eip = \"{}\"\n", r.eip));
            assert!(e.contains("havip[0].eip"), "{}: {e}", r.eip);
            assert!(e.contains(r.want), "{}: {e}", r.eip);
        }
        // Semantic checks also name the HAVIP by id.
        let e = err(&format!("{MINIMAL}eip = \"10.1.2.3\"\n"));
        assert!(e.contains("havip-xxxxxxxx"), "{e}");
        let e = err(&format!(
            "{MINIMAL}eip = \"203.0.113.10\"\n[[havip]]\nmaster = \"b\"\nhavip_id = \"havip-yyyyyyyy\"\nvip = \"172.16.2.251/24\"\neip = \"203.0.113.10\"\n"
        ));
        assert!(
            e.contains("havip[1].eip") && e.contains("used twice") && e.contains("havip-yyyyyyyy"),
            "{e}"
        );
    }

    #[test]
    fn claim_deadline_must_stay_under_sentinels_script_kill() {
        let e = err(&format!("{MINIMAL}\n[claim]\ndeadline = \"60s\"\n"));
        assert!(e.contains("claim.deadline") && e.contains("60s"), "{e}");
    }

    #[test]
    fn secret_id_without_key_is_rejected() {
        let e = err(&MINIMAL.replace(
            "region = \"ap-guangzhou\"",
            "region = \"ap-guangzhou\"\nsecret_id = \"AKIDx\"",
        ));
        assert!(e.contains("cloud.secret_key"), "{e}");
    }

    #[test]
    fn duplicate_master_is_rejected() {
        let e = err(&format!(
            "{MINIMAL}\n[[havip]]\nmaster = \"mymaster\"\nhavip_id = \"havip-yyyyyyyy\"\nvip = \"172.16.2.251/24\"\n"
        ));
        assert!(e.contains("havip[1].master"), "{e}");
    }

    #[test]
    fn no_havip_is_rejected() {
        let text = MINIMAL.split("[[havip]]").next().unwrap();
        assert!(err(text).contains("no [[havip]]"));
    }

    #[test]
    fn secrets_in_a_group_readable_file_are_refused_and_not_printed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = MINIMAL.replace(
            "region = \"ap-guangzhou\"",
            "region = \"ap-guangzhou\"\nsecret_id = \"AKIDsecretid\"\nsecret_key = \"topsecretkey\"",
        );
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("topsecretkey"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::load(&path).unwrap();
        assert!(!format!("{c:?}").contains("topsecretkey"));
    }

    /// A malformed config whose error must name `line` and never show `MARKER`.
    struct Malformed {
        name: &'static str,
        /// Replaces `region = "ap-guangzhou"` (line 3 of `MINIMAL`), unless `tail` is set.
        cloud_lines: &'static str,
        /// Appended to `MINIMAL` instead.
        tail: &'static str,
        /// The line toml reports.
        line: usize,
    }

    const MARKER: &str = "Zq9MarkerSecret7731";

    // Regression: toml's `Display` quotes the offending source line, so an unterminated `secret_key` went
    // into the journal and `check` output whole.
    #[test]
    fn parse_errors_name_the_line_and_never_quote_a_secret() {
        let rows = [
            Malformed {
                name: "unterminated secret_key",
                cloud_lines: "region = \"ap-guangzhou\"\nsecret_id = \"AKIDx\"\nsecret_key = \"Zq9MarkerSecret7731",
                tail: "",
                line: 5,
            },
            Malformed {
                name: "bare secret_key",
                cloud_lines: "region = \"ap-guangzhou\"\nsecret_key = Zq9MarkerSecret7731",
                tail: "",
                line: 4,
            },
            Malformed {
                name: "secret_key of the wrong type",
                cloud_lines: "region = \"ap-guangzhou\"\nsecret_key = [\"Zq9MarkerSecret7731\", 1]",
                tail: "",
                line: 4,
            },
            Malformed {
                name: "secret_id as a number",
                cloud_lines: "region = \"ap-guangzhou\"\nsecret_id = 9977313112\nsecret_key = \"Zq9MarkerSecret7731\"",
                tail: "",
                line: 4,
            },
            Malformed {
                name: "unterminated multi-line secret_key",
                cloud_lines: "region = \"ap-guangzhou\"\nsecret_key = \"\"\"Zq9MarkerSecret7731",
                tail: "",
                // toml finds the string unterminated at the end of the file.
                line: 18,
            },
            Malformed {
                name: "a pasted secret on a line of its own",
                cloud_lines: "region = \"ap-guangzhou\"\nZq9MarkerSecret7731",
                tail: "",
                line: 4,
            },
            Malformed {
                name: "unterminated alert url",
                cloud_lines: "",
                tail: "\n[[alert]]\nurl = \"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=Zq9MarkerSecret7731\n",
                line: 19,
            },
            // Found by the config fuzz target: a malformed table header was quoted as the key.
            Malformed {
                name: "a secret inside a malformed table header",
                cloud_lines: "",
                tail: "\n[cloud.secret_key = \"Zq9MarkerSecret7731\"]\n",
                line: 18,
            },
            Malformed {
                name: "a secret inside an unclosed table header",
                cloud_lines: "",
                tail: "\n[clopasswordon = \"Zq9MarkerSecret7731ap-gua[cloudpo]\n",
                line: 18,
            },
            Malformed {
                name: "a secret before the equals sign",
                cloud_lines: "",
                tail: "\n[cloud]\nsecret_key \"Zq9MarkerSecret7731\" = 1\n",
                line: 19,
            },
            Malformed {
                name: "redis password of the wrong type",
                cloud_lines: "",
                tail: "\n[redis]\npassword = { a = \"Zq9MarkerSecret7731\" }\n",
                line: 19,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, row) in rows.iter().enumerate() {
            let text = if row.tail.is_empty() {
                MINIMAL.replace("region = \"ap-guangzhou\"", row.cloud_lines)
            } else {
                format!("{MINIMAL}{}", row.tail)
            };
            let path = dir.path().join(format!("malformed-{i}.toml"));
            std::fs::write(&path, &text).unwrap();
            let e = Config::load(&path).expect_err(row.name);
            let shown = format!("{e} / {e:?}");
            assert!(
                !shown.contains(MARKER),
                "{}: the secret leaked: {shown}",
                row.name
            );
            assert!(
                shown.contains(&format!("line {}", row.line)),
                "{}: no line {} in {shown}",
                row.name,
                row.line
            );
            assert!(
                matches!(e, ConfigError::Parse { line: Some(l), .. } if l == row.line),
                "{}: {e:?}",
                row.name
            );
        }
    }

    #[test]
    fn a_malformed_secret_key_is_named_in_the_error() {
        let e = err(&MINIMAL.replace(
            "region = \"ap-guangzhou\"",
            "region = \"ap-guangzhou\"\nsecret_key = 12345",
        ));
        assert!(e.contains("cloud.secret_key: "), "{e}");
        assert!(!e.contains("12345"), "{e}");
    }

    #[test]
    fn non_secret_values_are_still_quoted_to_help() {
        let e = err(&MINIMAL.replace("vip = \"172.16.2.250/24\"", "vip = \"172.16.2.250\""));
        assert!(
            e.contains("havip[0].vip: \"172.16.2.250\" has no prefix length"),
            "{e}"
        );
        assert!(e.contains("(line 16, column 7)"), "{e}");
    }

    // Regression: `Instant + 100000000000d` panics at run time; absurd durations must fail at load.
    #[test]
    fn absurd_durations_are_refused_at_load_naming_the_key() {
        for (table, line, key) in [
            ("[cloud]", "timeout = \"100000000000d\"", "cloud.timeout"),
            ("[cloud]", "keep_warm = \"25h\"", "cloud.keep_warm"),
            (
                "[sentinel]",
                "fence_after = \"100000000000d\"",
                "sentinel.fence_after",
            ),
            (
                "[sentinel]",
                "heartbeat = \"18446744073709551615s\"",
                "sentinel.heartbeat",
            ),
            (
                "[sentinel]",
                "fence_after = \"1e30s\"",
                "sentinel.fence_after",
            ),
        ] {
            let text = MINIMAL.replacen(table, &format!("{table}\n{line}"), 1);
            let e = err(&text);
            assert!(e.contains(&format!("{key}: ")), "{line}: {e}");
        }
        let e = err(&MINIMAL.replacen("[sentinel]", "[sentinel]\nfence_after = \"2days\"", 1));
        assert!(e.contains("longest accepted duration, 1day"), "{e}");
        let c = parse(&MINIMAL.replacen("[sentinel]", "[sentinel]\nfence_after = \"1day\"", 1));
        assert_eq!(
            c.unwrap().sentinel.fence_after,
            FenceAfter::After(MAX_DURATION)
        );
    }

    // Regression: alert URLs carry keys (WeCom `?key=`) but were exempt from the 0600 rule.
    #[test]
    fn an_alert_url_in_a_group_readable_file_is_refused_without_printing_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = format!(
            "{MINIMAL}\n[[alert]]\nurl = \"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={MARKER}\"\n"
        );
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("alert[0].url: "), "{e}");
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains(MARKER), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Config::load(&path).unwrap().alerts.len(), 1);
    }

    #[test]
    fn path_resolution_prefers_flag_then_env_then_default() {
        assert_eq!(
            resolve_path(Some(Path::new("/a")), Some("/b")),
            PathBuf::from("/a")
        );
        assert_eq!(resolve_path(None, Some("/b")), PathBuf::from("/b"));
        assert_eq!(
            resolve_path(None, Some("")),
            PathBuf::from(DEFAULT_CONFIG_PATH)
        );
        assert_eq!(resolve_path(None, None), PathBuf::from(DEFAULT_CONFIG_PATH));
    }
}

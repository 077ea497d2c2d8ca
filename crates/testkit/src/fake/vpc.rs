//! The fake Tencent Cloud VPC API: a wiremock server whose single responder holds the HAVIP state.
//!
//! Owns: HAVIPs (drift range, holder, `FlushedTime`), the instances and their ENIs (a primary ENI each, and
//! secondary ENIs with their own MACs), the region the HAVIPs live in (`X-TC-Region`), the actions
//! `DescribeHaVips`, `AssociateHaVipInstance`, `DisassociateHaVipInstance` and `DescribeVpcTaskResult`, the
//! envelope and error codes of the real API, signature checking on every request (via [`super::verify`]),
//! fault injection, the request log and the holder move a GARP causes. The holder is reported as the real
//! API does: `InstanceId` = the CVM, `NetworkInterfaceId` = the ENI whose MAC sent the GARP. It does not watch the network (see
//! `garp_watch`) and does not serve metadata (see `metadata`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use wiremock::matchers::any;
use wiremock::{Match, Mock, MockServer, Request, Respond, ResponseTemplate};

use super::moves::{Accepted, MoveHost, MoveTiming, Mover, PendingMove};
use super::verify::{self, KeyRecord, SignedRequest};
use havip_agent::clock::{SharedClock, unix_seconds};
use havip_agent::secret::Secret;

// The EIP actions live in their own file but work on this module's private state.
#[path = "eip.rs"]
mod eip;
pub use eip::DEFAULT_EIP_TASK_DURATION;

/// The VPC API version the fake serves (`X-TC-Version`).
pub const API_VERSION: &str = "2017-03-12";
/// The service name in the TC3 credential scope.
pub const SERVICE: &str = "vpc";
/// `FlushedTime` of a HAVIP that never moved, as the API reports it.
pub const NEVER_FLUSHED: &str = "0000-00-00 00:00:00";
/// Most items `AssociateHaVipInstance`/`DisassociateHaVipInstance` accept in one call.
pub const MAX_ASSOCIATION_ITEMS: usize = 10;
/// The region a new fake serves (`X-TC-Region`); see [`FakeCloud::set_region`].
pub const DEFAULT_REGION: &str = "ap-guangzhou";
/// The error code for an `X-TC-Region` that is not a region at all. The Java SDK issue
/// tencentcloud/tencentcloud-sdk-java#220 quotes the message ("A value specified in X-TC-Region is not
/// valid, is unsupported, or cannot be used."); the code name here is our choice in the API's
/// `InvalidParameterValue.*` style, not a confirmed one.
pub const INVALID_REGION_CODE: &str = "InvalidParameterValue.Region";
/// The error code for `AssociateHaVipInstance` with a primary ENI. The HAVIP console guide (215/36694) says
/// primary ENIs cannot be bound ("主网卡暂不支持绑定"); the code name is ours, in the API's
/// `UnsupportedOperation.*` style.
pub const PRIMARY_ENI_CODE: &str = "UnsupportedOperation.PrimaryEni";

/// The regions the fake knows (public and financial regions of the VPC product): any other `X-TC-Region`
/// is an error; a known region other than the fake's own holds no HAVIPs.
pub const KNOWN_REGIONS: &[&str] = &[
    "ap-guangzhou",
    "ap-shanghai",
    "ap-nanjing",
    "ap-beijing",
    "ap-chengdu",
    "ap-chongqing",
    "ap-hongkong",
    "ap-singapore",
    "ap-jakarta",
    "ap-seoul",
    "ap-tokyo",
    "ap-bangkok",
    "ap-mumbai",
    "ap-shanghai-fsi",
    "ap-shenzhen-fsi",
    "na-siliconvalley",
    "na-ashburn",
    "na-toronto",
    "eu-frankfurt",
    "sa-saopaulo",
];

/// What a drift-range entry names: a CVM instance or an elastic network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstanceType {
    /// `CVM`: covers every ENI of the instance.
    Cvm,
    /// `ENI`: one network interface.
    Eni,
}

impl InstanceType {
    /// The API spelling: `CVM` or `ENI`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceType::Cvm => "CVM",
            InstanceType::Eni => "ENI",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "CVM" => Some(InstanceType::Cvm),
            "ENI" => Some(InstanceType::Eni),
            _ => None,
        }
    }
}

impl fmt::Display for InstanceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a HAVIP's drift range (`HaVipAssociationSet`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Association {
    /// `ins-...` for CVM entries, `eni-...` for ENI entries.
    pub instance_id: String,
    /// CVM or ENI.
    pub instance_type: InstanceType,
}

impl Association {
    /// A CVM entry.
    pub fn cvm(instance_id: impl Into<String>) -> Self {
        Self {
            instance_id: instance_id.into(),
            instance_type: InstanceType::Cvm,
        }
    }

    /// An ENI entry.
    pub fn eni(eni_id: impl Into<String>) -> Self {
        Self {
            instance_id: eni_id.into(),
            instance_type: InstanceType::Eni,
        }
    }
}

/// A HAVIP to create in the fake.
#[derive(Debug, Clone)]
pub struct HavipSpec {
    /// `havip-...`.
    pub havip_id: String,
    /// The virtual IP.
    pub vip: Ipv4Addr,
    /// `HaVipName`.
    pub name: String,
    /// `VpcId`.
    pub vpc_id: String,
    /// `SubnetId`.
    pub subnet_id: String,
    /// Drift-range limiting. Off unless asked, as `CreateHaVip` does ("默认不开启"); only the console turns it
    /// on, and it cannot be changed later.
    pub check_associate: bool,
    /// The initial drift range.
    pub associations: Vec<Association>,
    /// The instance that holds the VIP at start, if any.
    pub holder: Option<String>,
    /// The ENI that holds the VIP at start, if any (overrides `holder`).
    pub holder_eni: Option<String>,
}

impl HavipSpec {
    /// A HAVIP as `CreateHaVip` makes it: `CheckAssociate` off, an empty range and no holder. Say
    /// `.check_associate(true)` for one made in the console.
    pub fn new(havip_id: impl Into<String>, vip: Ipv4Addr) -> Self {
        Self {
            havip_id: havip_id.into(),
            vip,
            name: "redis-vip".into(),
            vpc_id: "vpc-fake0001".into(),
            subnet_id: "subnet-fake0001".into(),
            check_associate: false,
            associations: Vec::new(),
            holder: None,
            holder_eni: None,
        }
    }

    /// Sets `CheckAssociate`.
    pub fn check_associate(mut self, on: bool) -> Self {
        self.check_associate = on;
        self
    }

    /// Adds a CVM to the drift range.
    pub fn associate(mut self, instance_id: impl Into<String>) -> Self {
        self.associations.push(Association::cvm(instance_id));
        self
    }

    /// Adds an ENI to the drift range.
    pub fn associate_eni(mut self, eni_id: impl Into<String>) -> Self {
        self.associations.push(Association::eni(eni_id));
        self
    }

    /// Sets the initial holder (the instance; its ENI is the primary ENI unless [`HavipSpec::holder_eni`]).
    pub fn holder(mut self, instance_id: impl Into<String>) -> Self {
        self.holder = Some(instance_id.into());
        self
    }

    /// Sets the initial holder to `eni_id`, an ENI registered with [`FakeCloud::add_eni`] (or a primary
    /// ENI): its instance becomes `InstanceId`, the ENI `NetworkInterfaceId`.
    pub fn holder_eni(mut self, eni_id: impl Into<String>) -> Self {
        self.holder_eni = Some(eni_id.into());
        self
    }
}

/// A HAVIP as the fake holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HavipSnapshot {
    /// `HaVipId`.
    pub havip_id: String,
    /// `Vip`.
    pub vip: Ipv4Addr,
    /// The holder instance (`InstanceId`), `None` when unbound.
    pub instance_id: Option<String>,
    /// The holder's ENI (`NetworkInterfaceId`).
    pub network_interface_id: Option<String>,
    /// `State`: `AVAILABLE` when held, `UNBIND` otherwise.
    pub state: String,
    /// `CheckAssociate`.
    pub check_associate: bool,
    /// `HaVipAssociationSet`, sorted.
    pub associations: Vec<Association>,
    /// `FlushedTime` of the last move, `None` if it never moved.
    pub flushed_time: Option<String>,
}

impl HavipSnapshot {
    /// Whether the node known as `id` in mode `ty` holds the VIP, by the agent's own holder rule
    /// ([`havip_agent::cloud::HaVip::held_by`]).
    pub fn held_by(&self, ty: havip_agent::config::InstanceType, id: &str) -> bool {
        self.holder(ty) == Some(id)
    }

    /// The holder as a node in mode `ty` names itself: the CVM, or in ENI mode the ENI.
    pub fn holder(&self, ty: havip_agent::config::InstanceType) -> Option<&str> {
        havip_agent::cloud::holder_id(
            ty,
            self.instance_id.as_deref(),
            self.network_interface_id.as_deref(),
        )
    }

    /// Whether `instance_id` (or its primary ENI [`eni_id_for`]) is in the drift range, or the range is not
    /// enforced.
    pub fn in_range(&self, instance_id: &str) -> bool {
        !self.check_associate || in_range(&self.associations, instance_id, &eni_id_for(instance_id))
    }
}

/// What [`FakeCloud::garp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GarpOutcome {
    /// The holder changed.
    Moved {
        /// The HAVIP that moved.
        havip_id: String,
        /// The previous holder.
        from: Option<String>,
        /// The new holder.
        to: String,
    },
    /// The announcing instance already held the VIP: nothing changed.
    AlreadyHolder {
        /// The HAVIP.
        havip_id: String,
        /// Its holder.
        instance_id: String,
    },
    /// `CheckAssociate` is on and the announcing instance is not in the drift range: ignored, like the VPC.
    NotInRange {
        /// The HAVIP.
        havip_id: String,
        /// The instance that announced.
        instance_id: String,
    },
    /// The MAC belongs to no instance known to the fake.
    UnknownMac,
    /// No HAVIP has this address.
    UnknownVip,
    /// Accepted; with a move delay set ([`FakeCloud::set_move_delay`]) the platform moves the HAVIP at
    /// `due`. It replaced a pending move to another instance, if there was one.
    MoveScheduled {
        /// The HAVIP.
        havip_id: String,
        /// The holder now.
        from: Option<String>,
        /// The instance that announced.
        to: String,
        /// When the move will be applied (wall clock).
        due: SystemTime,
    },
    /// A move of this HAVIP to the announcing instance is already pending: its timer is not restarted.
    MovePending {
        /// The HAVIP.
        havip_id: String,
        /// The instance that announced.
        to: String,
        /// When the pending move will be applied (wall clock).
        due: SystemTime,
    },
    /// Past the per-NIC GARP rate limit ([`FakeCloud::set_garp_rate_limit`]): dropped, never looked at.
    RateLimited,
}

impl GarpOutcome {
    /// Whether the holder changed.
    pub fn moved(&self) -> bool {
        matches!(self, GarpOutcome::Moved { .. })
    }
}

/// A recorded holder change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderMove {
    /// Real wall-clock time of the move.
    pub at: SystemTime,
    /// The HAVIP.
    pub havip_id: String,
    /// The previous holder.
    pub from: Option<String>,
    /// The new holder.
    pub to: String,
}

/// A fault to inject into the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this error code and message (HTTP 200, error envelope). The request has no effect.
    ApiError {
        /// E.g. `InternalError`.
        code: String,
        /// The message.
        message: String,
    },
    /// Answer `RequestLimitExceeded` (HTTP 200). The request has no effect.
    Throttle,
    /// Answer with this HTTP status and a non-JSON body, like a gateway would. The request has no effect.
    Http(u16),
    /// Process the request normally (its effect happens at once) but hold the response back this long,
    /// so a client timeout leaves it unsure whether the write happened.
    Delay(Duration),
    /// Close the connection after reading the request, without any response bytes: the client sees a
    /// transport error ("connection closed before message completed"), not a timeout. The request has
    /// no effect. (Done by returning an error from the wiremock responder, which makes hyper drop the
    /// connection.)
    DropConnection,
    /// Accept the request and never answer it within anything a client waits for (the response is held
    /// back [`HANG_FOR`], then an empty body): a hanging connection. The request has no effect.
    Hang,
}

/// How long a [`FaultKind::Hang`] holds its answer back: far past the agent's `cloud.timeout` and
/// `claim.deadline`, short enough that the fake's shutdown is not held up for long by one.
pub const HANG_FOR: Duration = Duration::from_secs(60);

/// A fault rule: which requests it hits and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Only requests with this `X-TC-Action`; `None` = every request.
    pub action: Option<String>,
    /// Only requests whose body names this HAVIP id (anywhere, e.g. in `HaVipIds` or
    /// `HaVipAssociationSet`); `None` = requests for any HAVIP.
    pub havip_id: Option<String>,
    /// What happens.
    pub kind: FaultKind,
    /// How many requests it hits; `None` = until [`FakeCloud::clear_faults`].
    pub times: Option<u32>,
}

impl Fault {
    /// A fault on every action, until cleared.
    pub fn always(kind: FaultKind) -> Self {
        Self {
            action: None,
            havip_id: None,
            kind,
            times: None,
        }
    }

    /// A fault on one action, until cleared.
    pub fn on(action: impl Into<String>, kind: FaultKind) -> Self {
        Self {
            action: Some(action.into()),
            havip_id: None,
            kind,
            times: None,
        }
    }

    /// Limits the fault to the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// `ServiceUnavailable` on one action, until cleared (a documented transient server-side code).
    pub fn service_unavailable(action: impl Into<String>) -> Self {
        Self::on(
            action,
            FaultKind::ApiError {
                code: "ServiceUnavailable".into(),
                message: "The service is temporarily unavailable, please try again later.".into(),
            },
        )
    }

    /// `ActionLocked` on one action, until cleared: "the resource is being operated on, wait for the last
    /// operation to end".
    pub fn action_locked(action: impl Into<String>) -> Self {
        Self::on(
            action,
            FaultKind::ApiError {
                code: "ActionLocked".into(),
                message: "The resource is locked by another operation; retry when it ends.".into(),
            },
        )
    }

    /// Limits the fault to requests naming `havip_id` (one HAVIP slow or failing, the others not).
    pub fn for_havip(mut self, havip_id: impl Into<String>) -> Self {
        self.havip_id = Some(havip_id.into());
        self
    }

    fn hits(&self, action: &str, body: &Value) -> bool {
        self.action.as_deref().is_none_or(|a| a == action)
            && self
                .havip_id
                .as_deref()
                .is_none_or(|id| names_string(body, id))
    }
}

/// The fake's notion of "now", used for `X-TC-Timestamp` checks, the `Date` header and `FlushedTime`.
#[derive(Debug, Clone)]
pub enum ServerTime {
    /// The system clock.
    System,
    /// Always this instant (e.g. a worked vector's timestamp).
    Fixed(SystemTime),
    /// The system clock shifted by this many seconds (negative = behind).
    OffsetSeconds(i64),
    /// Any clock. Note: the fake answers on wiremock's own thread and runtime, so a
    /// `havip_agent::clock::TokioClock` read there follows real time, not a paused test clock; with paused time,
    /// move the fake's clock explicitly with [`ServerTime::Fixed`] instead.
    Clock(SharedClock),
}

impl ServerTime {
    fn now(&self) -> SystemTime {
        match self {
            ServerTime::System => SystemTime::now(),
            ServerTime::Fixed(t) => *t,
            ServerTime::OffsetSeconds(s) => {
                let now = SystemTime::now();
                let d = Duration::from_secs(s.unsigned_abs());
                if *s >= 0 { now + d } else { now - d }
            }
            ServerTime::Clock(c) => c.now(),
        }
    }
}

/// One request the fake received.
#[derive(Clone)]
pub struct RecordedRequest {
    /// Real wall-clock time it arrived.
    pub at: SystemTime,
    /// `X-TC-Action` (empty if missing).
    pub action: String,
    /// The body as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
    /// Every header as received (names lowercase). `X-TC-Token` is masked in `Debug`.
    pub headers: Vec<(String, String)>,
    /// Whether the TC3 signature (and token) checked out.
    pub signature_valid: bool,
    /// Why the signature was refused, when it was (`Code: message`).
    pub signature_error: Option<String>,
    /// The SecretId from the credential scope, if it parsed.
    pub secret_id: Option<String>,
    /// The error code the fake answered with; `None` for success, an HTTP fault or a dropped connection.
    pub error_code: Option<String>,
    /// The HTTP status answered (0 for a dropped connection).
    pub http_status: u16,
    /// The injected fault that hit this request, if any.
    pub fault: Option<FaultKind>,
    /// The `RequestId` answered (empty for HTTP faults and dropped connections).
    pub request_id: String,
}

impl RecordedRequest {
    /// The first value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        verify::header(&self.headers, name)
    }
}

impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential; everything else here is safe to print.
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                if n.eq_ignore_ascii_case("x-tc-token") {
                    (n.as_str(), "***")
                } else {
                    (n.as_str(), v.as_str())
                }
            })
            .collect();
        f.debug_struct("RecordedRequest")
            .field("at", &self.at)
            .field("action", &self.action)
            .field("body", &self.body)
            .field("headers", &headers)
            .field("signature_valid", &self.signature_valid)
            .field("signature_error", &self.signature_error)
            .field("secret_id", &self.secret_id)
            .field("error_code", &self.error_code)
            .field("http_status", &self.http_status)
            .field("fault", &self.fault)
            .field("request_id", &self.request_id)
            .finish()
    }
}

#[derive(Debug, Clone)]
struct Instance {
    /// The primary ENI.
    eni_id: String,
}

/// An ENI attached to an instance.
#[derive(Debug, Clone)]
struct Eni {
    instance_id: String,
    mac: [u8; 6],
    primary: bool,
}

#[derive(Debug, Clone)]
struct Havip {
    spec: HavipSpec,
    holder: Option<String>,
    eni: Option<String>,
    flushed_time: Option<String>,
    created_time: String,
    /// `AddressIp`: the EIP bound to the HAVIP (see `eip`).
    address_ip: Option<Ipv4Addr>,
}

impl Havip {
    fn snapshot(&self) -> HavipSnapshot {
        let mut associations = self.spec.associations.clone();
        associations.sort();
        HavipSnapshot {
            havip_id: self.spec.havip_id.clone(),
            vip: self.spec.vip,
            instance_id: self.holder.clone(),
            network_interface_id: self.eni.clone(),
            state: if self.holder.is_some() {
                "AVAILABLE".into()
            } else {
                "UNBIND".into()
            },
            check_associate: self.spec.check_associate,
            associations,
            flushed_time: self.flushed_time.clone(),
        }
    }

    fn to_json(&self) -> Value {
        let s = self.snapshot();
        json!({
            "HaVipId": s.havip_id,
            "HaVipName": self.spec.name,
            "Vip": s.vip.to_string(),
            "VpcId": self.spec.vpc_id,
            "SubnetId": self.spec.subnet_id,
            "NetworkInterfaceId": s.network_interface_id.unwrap_or_default(),
            "InstanceId": s.instance_id.unwrap_or_default(),
            "AddressIp": self.address_ip.map(|a| a.to_string()).unwrap_or_default(),
            "State": s.state,
            "CreatedTime": self.created_time,
            "Business": "",
            "HaVipAssociationSet": s.associations.iter().map(|a| json!({
                "HaVipId": s.havip_id,
                "InstanceId": a.instance_id,
                "InstanceType": a.instance_type.as_str(),
            })).collect::<Vec<_>>(),
            "CheckAssociate": s.check_associate,
            "FlushedTime": s.flushed_time.as_deref().unwrap_or(NEVER_FLUSHED),
            "CdcId": "",
            "TagSet": [],
            // Not a real field: the real API adds fields over time, and clients must ignore them.
            "FakeFutureField": {"Note": "unknown fields must be ignored"},
        })
    }
}

/// Whether a GARP from `eni_id` of `instance_id` is in the range: a CVM entry covers every ENI of the
/// instance, an ENI entry only that ENI (the one that sent the GARP).
fn in_range(associations: &[Association], instance_id: &str, eni_id: &str) -> bool {
    associations.iter().any(|a| match a.instance_type {
        InstanceType::Cvm => a.instance_id == instance_id,
        InstanceType::Eni => a.instance_id == eni_id,
    })
}

/// The fake ENI id of an instance: stable, derived from the instance id (`eni-` + 8 hex digits).
pub fn eni_id_for(instance_id: &str) -> String {
    let digest = Sha256::digest(instance_id.as_bytes());
    format!("eni-{}", &hex::encode(digest)[..8])
}

struct State {
    keys: HashMap<String, KeyRecord>,
    instances: BTreeMap<String, Instance>,
    enis: BTreeMap<String, Eni>,
    region: String,
    havips: BTreeMap<String, Havip>,
    faults: Vec<Fault>,
    server_time: ServerTime,
    requests: Vec<RecordedRequest>,
    moves: Vec<HolderMove>,
    tasks: HashMap<String, String>,
    eip: eip::EipState,
    /// The per-action rate limit (on at 20/s unless changed).
    limits: super::limits::RateLimits,
    /// Keep-warm probes answered (bare `GET /`, not API requests).
    probes: usize,
    timing: MoveTiming,
}

impl State {
    fn now(&self) -> SystemTime {
        self.server_time.now()
    }

    /// Consumes one hit of the first fault rule matching `action`, if `pick` accepts its kind.
    fn take_fault(
        &mut self,
        action: &str,
        body: &Value,
        pick: impl Fn(&FaultKind) -> bool,
    ) -> Option<FaultKind> {
        let i = self.faults.iter().position(|f| f.hits(action, body))?;
        if !pick(&self.faults[i].kind) {
            return None;
        }
        let kind = self.faults[i].kind.clone();
        if let Some(n) = self.faults[i].times.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.faults.remove(i);
            }
        }
        Some(kind)
    }

    fn garp(&mut self, mac: [u8; 6], ip: Ipv4Addr) -> GarpOutcome {
        // The platform rate-limits GARP per NIC: frames past the limit are never looked at.
        if !self.timing.admit_garp(mac, tokio::time::Instant::now()) {
            return GarpOutcome::RateLimited;
        }
        let Some(havip) = self.havips.values_mut().find(|h| h.spec.vip == ip) else {
            return GarpOutcome::UnknownVip;
        };
        // The sender is the ENI that owns the MAC (primary or secondary), and its instance.
        let Some((eni_id, Eni { instance_id, .. })) = self.enis.iter().find(|(_, e)| e.mac == mac)
        else {
            return GarpOutcome::UnknownMac;
        };
        let havip_id = havip.spec.havip_id.clone();
        if havip.holder.as_deref() == Some(instance_id.as_str())
            && havip.eni.as_deref() == Some(eni_id.as_str())
        {
            // The last accepted GARP wins: the holder's own replaces a pending move away from it.
            if let Some(p) = self.timing.holder_announced(&havip_id) {
                tracing::info!(havip = %havip_id, holder = %instance_id, cancelled_to = %p.to, "fake cloud dropped a pending havip move: the holder announced");
            }
            return GarpOutcome::AlreadyHolder {
                havip_id,
                instance_id: instance_id.clone(),
            };
        }
        if havip.spec.check_associate && !in_range(&havip.spec.associations, instance_id, eni_id) {
            return GarpOutcome::NotInRange {
                havip_id,
                instance_id: instance_id.clone(),
            };
        }
        let from = havip.holder.clone();
        let to = instance_id.clone();
        match self
            .timing
            .accept(&havip_id, &to, eni_id, std::time::Instant::now())
        {
            Accepted::Now(mv) => self.apply_move(mv),
            Accepted::Scheduled { due } => {
                tracing::info!(havip = %havip_id, from = ?from, to = %to, delay = ?self.timing.delay(), "fake cloud scheduled a havip move");
                GarpOutcome::MoveScheduled {
                    havip_id,
                    from,
                    to,
                    due,
                }
            }
            Accepted::AlreadyPending { due } => GarpOutcome::MovePending { havip_id, to, due },
        }
    }

    /// Moves the holder (at once, or when a scheduled move is due) and records the move.
    fn apply_move(&mut self, mv: PendingMove) -> GarpOutcome {
        let now = self.now();
        let Some(havip) = self.havips.get_mut(&mv.havip_id) else {
            // Deleted while the move was pending: nothing to move.
            return GarpOutcome::UnknownVip;
        };
        let from = havip.holder.replace(mv.to.clone());
        havip.eni = Some(mv.eni);
        havip.flushed_time = Some(cloud_time(now));
        let record = HolderMove {
            at: SystemTime::now(),
            havip_id: mv.havip_id.clone(),
            from: from.clone(),
            to: mv.to.clone(),
        };
        self.timing.moved(&record);
        self.moves.push(record);
        tracing::info!(havip = %mv.havip_id, from = ?from, to = %mv.to, "fake cloud moved havip holder");
        GarpOutcome::Moved {
            havip_id: mv.havip_id,
            from,
            to: mv.to,
        }
    }
}

impl MoveHost for State {
    fn timing(&mut self) -> &mut MoveTiming {
        &mut self.timing
    }

    fn apply(&mut self, mv: PendingMove) {
        self.apply_move(mv);
    }
}

/// Times the API prints (`CreatedTime`, `FlushedTime`): `YYYY-MM-DD HH:MM:SS` in China Standard Time
/// (UTC+8), as the console and API show them.
fn cloud_time(t: SystemTime) -> String {
    match chrono::FixedOffset::east_opt(8 * 3600) {
        Some(cst) => chrono::DateTime::<chrono::Utc>::from(t)
            .with_timezone(&cst)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => NEVER_FLUSHED.to_owned(),
    }
}

/// An HTTP `Date` header value (IMF-fixdate), so clients can correct their clock on SignatureExpire.
pub fn http_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format(havip_agent::cloud::HTTP_DATE)
        .to_string()
}

fn request_id() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A handle on a running fake VPC API. Clones share the server and its state; the server stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct FakeCloud {
    server: Arc<MockServer>,
    state: Arc<Mutex<State>>,
    mover: Arc<Mover<State>>,
}

impl fmt::Debug for FakeCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeCloud")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in one test request must not poison the fake for the rest of the test.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeCloud {
    /// Starts a fake on 127.0.0.1 with a free port.
    pub async fn start() -> FakeCloud {
        Self::serve(
            MockServer::builder()
                .disable_request_recording()
                .start()
                .await,
        )
        .await
    }

    /// Starts a fake on an already bound listener (the lab binds one inside a namespace).
    pub async fn start_on(listener: std::net::TcpListener) -> FakeCloud {
        Self::serve(
            MockServer::builder()
                .listener(listener)
                .disable_request_recording()
                .start()
                .await,
        )
        .await
    }

    async fn serve(server: MockServer) -> FakeCloud {
        let state = Arc::new(Mutex::new(State {
            keys: HashMap::new(),
            instances: BTreeMap::new(),
            enis: BTreeMap::new(),
            region: DEFAULT_REGION.to_owned(),
            havips: BTreeMap::new(),
            faults: Vec::new(),
            server_time: ServerTime::System,
            requests: Vec::new(),
            moves: Vec::new(),
            tasks: HashMap::new(),
            eip: eip::EipState::default(),
            limits: super::limits::RateLimits::default(),
            probes: 0,
            timing: MoveTiming::default(),
        }));
        Mock::given(DropConnectionRule {
            state: state.clone(),
        })
        .respond_with_err(|_: &Request| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "fault injected: drop connection",
            )
        })
        .with_priority(1)
        .named("fault: drop connection")
        .mount(&server)
        .await;
        Mock::given(wiremock::matchers::method("GET"))
            .and(wiremock::matchers::path("/"))
            .and(|r: &Request| !r.headers.contains_key("x-tc-action"))
            .respond_with(Probe {
                state: state.clone(),
            })
            .with_priority(2)
            .named("keep-warm probe")
            .mount(&server)
            .await;
        Mock::given(any())
            .respond_with(Api {
                state: state.clone(),
            })
            .with_priority(5)
            .named("fake vpc api")
            .mount(&server)
            .await;
        FakeCloud {
            server: Arc::new(server),
            mover: Arc::new(Mover::new(state.clone())),
            state,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        self.server.uri()
    }

    /// The socket address the fake listens on.
    pub fn address(&self) -> std::net::SocketAddr {
        *self.server.address()
    }

    /// Accepts a long-term key pair (no token).
    pub fn add_key(&self, secret_id: &str, secret_key: &str) {
        self.lock().keys.insert(
            secret_id.to_owned(),
            KeyRecord {
                secret_key: Secret::new(secret_key),
                token: None,
            },
        );
    }

    /// Accepts a temporary key pair: requests must carry `X-TC-Token: <token>`.
    pub fn add_temporary_key(&self, secret_id: &str, secret_key: &str, token: &str) {
        self.lock().keys.insert(
            secret_id.to_owned(),
            KeyRecord {
                secret_key: Secret::new(secret_key),
                token: Some(Secret::new(token)),
            },
        );
    }

    /// Forgets a key (e.g. an expired role credential).
    pub fn remove_key(&self, secret_id: &str) {
        self.lock().keys.remove(secret_id);
    }

    /// Registers a CVM instance and the MAC of its primary ENI, so [`FakeCloud::garp`] can tell who
    /// announced. Its primary ENI id is [`eni_id_for`]`(instance_id)`.
    pub fn add_instance(&self, instance_id: &str, mac: [u8; 6]) {
        let mut st = self.lock();
        let eni_id = eni_id_for(instance_id);
        st.enis.insert(
            eni_id.clone(),
            Eni {
                instance_id: instance_id.to_owned(),
                mac,
                primary: true,
            },
        );
        st.instances
            .insert(instance_id.to_owned(), Instance { eni_id });
    }

    /// Attaches a secondary ENI `eni_id` with its own `mac` to `instance_id` (registered first with
    /// [`FakeCloud::add_instance`]). A GARP from `mac` moves a HAVIP to (that instance, that ENI), and the ENI
    /// may join drift ranges. Returns false when the instance is unknown.
    pub fn add_eni(&self, instance_id: &str, eni_id: &str, mac: [u8; 6]) -> bool {
        let mut st = self.lock();
        if !st.instances.contains_key(instance_id) {
            return false;
        }
        st.enis.insert(
            eni_id.to_owned(),
            Eni {
                instance_id: instance_id.to_owned(),
                mac,
                primary: false,
            },
        );
        true
    }

    /// Sets the region the fake's HAVIPs live in (default [`DEFAULT_REGION`]). Requests with another known
    /// region see no HAVIPs; unknown regions are refused with [`INVALID_REGION_CODE`].
    pub fn set_region(&self, region: &str) {
        self.lock().region = region.to_owned();
    }

    /// The region the fake's HAVIPs live in.
    pub fn region(&self) -> String {
        self.lock().region.clone()
    }

    /// Creates (or replaces) a HAVIP.
    pub fn add_havip(&self, spec: HavipSpec) {
        let mut st = self.lock();
        let now = st.now();
        let (holder, eni) = match (&spec.holder_eni, &spec.holder) {
            (Some(e), _) => (
                st.enis
                    .get(e)
                    .map(|x| x.instance_id.clone())
                    .or(spec.holder.clone()),
                Some(e.clone()),
            ),
            (None, Some(h)) => (
                Some(h.clone()),
                Some(
                    st.instances
                        .get(h)
                        .map(|i| i.eni_id.clone())
                        .unwrap_or_else(|| eni_id_for(h)),
                ),
            ),
            (None, None) => (None, None),
        };
        let havip = Havip {
            holder,
            eni,
            flushed_time: None,
            created_time: cloud_time(now),
            address_ip: None,
            spec,
        };
        st.havips.insert(havip.spec.havip_id.clone(), havip);
    }

    /// Turns drift-range limiting on or off for a HAVIP. Returns false if the HAVIP does not exist.
    pub fn set_check_associate(&self, havip_id: &str, on: bool) -> bool {
        match self.lock().havips.get_mut(havip_id) {
            Some(h) => {
                h.spec.check_associate = on;
                true
            }
            None => false,
        }
    }

    /// The HAVIP's current state.
    pub fn havip(&self, id: &str) -> Option<HavipSnapshot> {
        self.lock().havips.get(id).map(Havip::snapshot)
    }

    /// Acts as the VPC does on a gratuitous ARP for `ip` from `sender_mac`: moves the holder to the
    /// instance owning the MAC if it is in the drift range (or `CheckAssociate` is off), at once or after
    /// the move delay ([`FakeCloud::set_move_delay`]). Frames past the per-NIC rate limit are dropped
    /// ([`FakeCloud::set_garp_rate_limit`]). Subscribers ([`FakeCloud::on_move`]) hear of a move made at
    /// once before this returns.
    pub fn garp(&self, sender_mac: [u8; 6], ip: Ipv4Addr) -> GarpOutcome {
        let outcome = self.lock().garp(sender_mac, ip);
        if matches!(outcome, GarpOutcome::MoveScheduled { .. }) {
            self.mover.wake();
        }
        self.mover.deliver();
        outcome
    }

    /// Sets how long the platform takes to move a HAVIP after an accepted GARP (default zero: at once, as
    /// before). With a delay, an accepted GARP schedules the move to the sender at now + `delay`; a later
    /// accepted GARP from another instance replaces the pending move, a repeat from the same sender does not
    /// restart its timer, and `DescribeHaVips` shows the old holder until the move is applied by a
    /// background thread (on the real clock). Moves already pending keep their time.
    ///
    /// Errors only when that thread cannot be started.
    pub fn set_move_delay(&self, delay: Duration) -> std::io::Result<()> {
        if !delay.is_zero() {
            self.mover.ensure_thread()?;
        }
        self.lock().timing.set_delay(delay);
        self.mover.wake();
        Ok(())
    }

    /// Sets the per-NIC GARP rate limit: at most `limit` frames per second per sender MAC are looked at,
    /// the rest are dropped and counted ([`FakeCloud::garps_rate_limited`]). `None` turns it off. The
    /// default is [`super::moves::DEFAULT_GARP_RATE_LIMIT`].
    pub fn set_garp_rate_limit(&self, limit: Option<u32>) {
        self.lock().timing.set_rate_limit(limit);
    }

    /// GARP frames dropped by the rate limit so far.
    pub fn garps_rate_limited(&self) -> u64 {
        self.lock().timing.dropped()
    }

    /// Calls `callback` with every holder move from now on, in the order the moves were applied, on the
    /// thread that applied it (the caller of [`FakeCloud::garp`], or the fake's move thread), outside the
    /// fake's lock. Keep it short, and do not call [`FakeCloud::garp`] from it.
    pub fn on_move(&self, callback: impl Fn(&HolderMove) + Send + Sync + 'static) {
        self.lock().timing.subscribe(Arc::new(callback));
    }

    /// Every holder change so far, oldest first.
    pub fn moves(&self) -> Vec<HolderMove> {
        self.lock().moves.clone()
    }

    /// Adds a fault rule. Rules are tried in the order added; the first one matching the action applies.
    pub fn inject(&self, fault: Fault) {
        tracing::info!(action = ?fault.action, kind = ?fault.kind, times = ?fault.times, "fake cloud fault injected");
        self.lock().faults.push(fault);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Sets the fake's clock (for `SignatureExpire` tests and worked vectors).
    pub fn set_server_time(&self, time: ServerTime) {
        self.lock().server_time = time;
    }

    /// The fake's current time.
    pub fn server_now(&self) -> SystemTime {
        self.lock().now()
    }

    /// Sets the per-action rate limit: `RequestLimitExceeded` once an action was answered this many times
    /// in the last second; `None` turns it off. On at 20/s by default, as the API documents.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.lock().limits.set_limit(per_second);
    }

    /// How many keep-warm probes (a bare `GET /`, see `VpcClient::spawn_keep_warm`) were answered. They are
    /// not API requests: [`FakeCloud::requests`] does not list them.
    pub fn probes(&self) -> usize {
        self.lock().probes
    }

    /// Sets what `DescribeVpcTaskResult` answers for a task id (`SUCCESS`, `FAILED`, `RUNNING`).
    pub fn set_task(&self, task_id: &str, status: &str) {
        self.lock()
            .tasks
            .insert(task_id.to_owned(), status.to_owned());
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The `AssociateHaVipInstance` and `DisassociateHaVipInstance` requests so far.
    pub fn write_requests(&self) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| {
                matches!(
                    r.action.as_str(),
                    "AssociateHaVipInstance" | "DisassociateHaVipInstance"
                )
            })
            .cloned()
            .collect()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }
}

/// What the fake makes of a request before deciding the answer.
struct Inspected {
    action: String,
    body: Value,
    headers: Vec<(String, String)>,
    auth: Result<verify::Verified, verify::VerifyError>,
    secret_id: Option<String>,
}

fn inspect(st: &State, req: &Request) -> Inspected {
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let action = verify::header(&headers, "x-tc-action")
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let signed = SignedRequest {
        method: req.method.as_str(),
        path: req.url.path(),
        query: req.url.query().unwrap_or(""),
        headers: &headers,
        body: &req.body,
    };
    let now = unix_seconds(st.now());
    let auth = verify::verify(&signed, SERVICE, now, &|id| st.keys.get(id).cloned());
    let secret_id = verify::header(&headers, "authorization")
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').next())
        .map(str::to_owned);
    Inspected {
        action,
        body,
        headers,
        auth,
        secret_id,
    }
}

fn record(st: &mut State, i: Inspected, answer: &Answer) {
    let (signature_valid, signature_error) = match &i.auth {
        Ok(_) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    };
    let rec = RecordedRequest {
        at: SystemTime::now(),
        action: i.action,
        body: i.body,
        headers: i.headers,
        signature_valid,
        signature_error,
        secret_id: i.secret_id,
        error_code: answer.error_code.clone(),
        http_status: answer.status,
        fault: answer.fault.clone(),
        request_id: answer.request_id.clone(),
    };
    tracing::debug!(
        action = %rec.action,
        signature_valid = rec.signature_valid,
        error_code = ?rec.error_code,
        status = rec.http_status,
        "fake cloud request"
    );
    st.requests.push(rec);
}

/// Whether `v` holds the string `needle` anywhere (as a value, not a key).
fn names_string(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s == needle,
        Value::Array(items) => items.iter().any(|i| names_string(i, needle)),
        Value::Object(map) => map.values().any(|i| names_string(i, needle)),
        _ => false,
    }
}

/// Matches (and so drops) a request when the first fault rule for its action is `DropConnection`.
struct DropConnectionRule {
    state: Arc<Mutex<State>>,
}

impl Match for DropConnectionRule {
    fn matches(&self, request: &Request) -> bool {
        let mut st = lock(&self.state);
        let inspected = inspect(&st, request);
        if st
            .take_fault(&inspected.action, &inspected.body, |k| {
                *k == FaultKind::DropConnection
            })
            .is_none()
        {
            return false;
        }
        let answer = Answer {
            status: 0,
            error_code: None,
            fault: Some(FaultKind::DropConnection),
            request_id: String::new(),
            body: Value::Null,
            delay: None,
        };
        record(&mut st, inspected, &answer);
        true
    }
}

/// Answers a keep-warm probe (a bare `GET /` without `X-TC-Action`; a GET that names an action is an API
/// request and goes to [`Api`]) as the API answers a request without an action, and counts it.
struct Probe {
    state: Arc<Mutex<State>>,
}

impl Respond for Probe {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut st = lock(&self.state);
        st.probes += 1;
        let (body, _) = envelope(
            Err(ApiError::new(
                "MissingParameter",
                "the X-TC-Action header is missing",
            )),
            &request_id(),
        );
        ResponseTemplate::new(200).set_body_json(body)
    }
}

/// The answer the fake decided on.
struct Answer {
    status: u16,
    error_code: Option<String>,
    fault: Option<FaultKind>,
    request_id: String,
    body: Value,
    delay: Option<Duration>,
}

/// An API error: code and message.
struct ApiError {
    code: String,
    message: String,
}

impl ApiError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

type ApiResult = Result<Map<String, Value>, ApiError>;

fn envelope(result: ApiResult, request_id: &str) -> (Value, Option<String>) {
    match result {
        Ok(mut fields) => {
            fields.insert("RequestId".into(), Value::String(request_id.to_owned()));
            (json!({ "Response": fields }), None)
        }
        Err(e) => (
            json!({"Response": {"Error": {"Code": e.code, "Message": e.message}, "RequestId": request_id}}),
            Some(e.code),
        ),
    }
}

/// The wiremock responder that serves every API request.
struct Api {
    state: Arc<Mutex<State>>,
}

impl Respond for Api {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut st = lock(&self.state);
        let now = st.now();
        let inspected = inspect(&st, request);
        let request_id = request_id();
        let fault = st.take_fault(&inspected.action, &inspected.body, |k| {
            *k != FaultKind::DropConnection
        });
        let answer = match &fault {
            Some(FaultKind::Http(status)) => Answer {
                status: *status,
                error_code: None,
                fault: fault.clone(),
                request_id: String::new(),
                body: Value::String(format!("<html><body>{status} fault injected</body></html>")),
                delay: None,
            },
            Some(kind @ (FaultKind::ApiError { .. } | FaultKind::Throttle)) => {
                let err = match kind {
                    FaultKind::ApiError { code, message } => ApiError::new(code, message.clone()),
                    _ => ApiError::new(
                        "RequestLimitExceeded",
                        "Your current request times equals to `21` in a second, which exceeds the \
                         frequency limit `20` for a second. Please reduce the frequency of calls.",
                    ),
                };
                let (body, code) = envelope(Err(err), &request_id);
                Answer {
                    status: 200,
                    error_code: code,
                    fault: fault.clone(),
                    request_id: request_id.clone(),
                    body,
                    delay: None,
                }
            }
            Some(FaultKind::Delay(d)) => {
                let (body, code) = envelope(
                    handle(&mut st, request, &inspected, &request_id),
                    &request_id,
                );
                Answer {
                    status: 200,
                    error_code: code,
                    fault: fault.clone(),
                    request_id: request_id.clone(),
                    body,
                    delay: Some(*d),
                }
            }
            Some(FaultKind::Hang) => Answer {
                status: 200,
                error_code: None,
                fault: fault.clone(),
                request_id: String::new(),
                body: Value::String(String::new()),
                delay: Some(HANG_FOR),
            },
            Some(FaultKind::DropConnection) | None => {
                let (body, code) = envelope(
                    handle(&mut st, request, &inspected, &request_id),
                    &request_id,
                );
                Answer {
                    status: 200,
                    error_code: code,
                    fault: None,
                    request_id: request_id.clone(),
                    body,
                    delay: None,
                }
            }
        };
        let mut template =
            ResponseTemplate::new(answer.status).insert_header("Date", http_date(now).as_str());
        template = match &answer.body {
            Value::String(text) if answer.status != 200 => {
                template.set_body_raw(text.clone().into_bytes(), "text/html")
            }
            body => template.set_body_raw(
                serde_json::to_vec(body).unwrap_or_default(),
                "application/json",
            ),
        };
        if let Some(d) = answer.delay {
            template = template.set_delay(d);
        }
        record(&mut st, inspected, &answer);
        template
    }
}

/// Checks the request as the API front end would, then runs the action.
fn handle(st: &mut State, req: &Request, inspected: &Inspected, request_id: &str) -> ApiResult {
    if inspected.action.is_empty() {
        return Err(ApiError::new(
            "MissingParameter",
            "the X-TC-Action header is missing",
        ));
    }
    if let Err(e) = &inspected.auth {
        return Err(ApiError::new(e.code, e.message.clone()));
    }
    // The limit is per account and action, so only authenticated requests count.
    if let Err(message) = st
        .limits
        .admit(&inspected.action, std::time::Instant::now())
    {
        return Err(ApiError::new("RequestLimitExceeded", message));
    }
    match verify::header(&inspected.headers, "x-tc-version") {
        None => {
            return Err(ApiError::new(
                "MissingParameter",
                "the X-TC-Version header is missing",
            ));
        }
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(ApiError::new(
                "NoSuchVersion",
                format!("The API version `{other}` does not exist for vpc; use `{API_VERSION}`"),
            ));
        }
    }
    let region = verify::header(&inspected.headers, "x-tc-region").unwrap_or_default();
    if region.is_empty() {
        return Err(ApiError::new(
            "MissingParameter",
            "the X-TC-Region header is missing",
        ));
    }
    if !KNOWN_REGIONS.contains(&region) {
        return Err(ApiError::new(
            INVALID_REGION_CODE,
            format!(
                "A value specified in X-TC-Region is not valid, is unsupported, or cannot be used: `{region}`"
            ),
        ));
    }
    // A HAVIP lives in one region: a request for another (valid) region sees none of them.
    let here = region == st.region;
    if req.method.as_str() != "POST" {
        return Err(ApiError::new(
            "UnsupportedProtocol",
            format!("the fake accepts POST only, got {}", req.method),
        ));
    }
    let ct = verify::header(&inspected.headers, "content-type").unwrap_or_default();
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::new(
            "InvalidParameter",
            format!("Content-Type must be application/json, got `{ct}`"),
        ));
    }
    let Value::Object(params) = &inspected.body else {
        return Err(ApiError::new(
            "InvalidParameter",
            "the request body is not a JSON object",
        ));
    };
    eip::settle(st);
    let result = match inspected.action.as_str() {
        "DescribeHaVips" => describe_havips(st, params, here),
        "AssociateHaVipInstance" => change_associations(st, params, true, here),
        "DisassociateHaVipInstance" => change_associations(st, params, false, here),
        "HaVipAssociateAddressIp" => eip::associate(st, params, request_id),
        "HaVipDisassociateAddressIp" => eip::disassociate(st, params, request_id),
        "DescribeVpcTaskResult" => {
            eip::describe_task(st, params).unwrap_or_else(|| describe_task(st, params))
        }
        other => {
            return Err(ApiError::new(
                "InvalidAction",
                format!("The action `{other}` does not exist for vpc {API_VERSION}"),
            ));
        }
    };
    if result.is_ok() && inspected.action.ends_with("HaVipInstance") {
        // Synchronous actions, but a client may still poll their RequestId as a task.
        st.tasks.insert(request_id.to_owned(), "SUCCESS".into());
    }
    result
}

fn only_known(params: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::new(
            "UnknownParameter",
            format!("The parameter `{k}` is not recognized"),
        )),
        None => Ok(()),
    }
}

fn string_list(v: &Value, what: &str) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::new(
            "InvalidParameter",
            format!("`{what}` must be a list of strings"),
        )
    };
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|x| x.as_str().map(str::to_owned).ok_or_else(bad))
        .collect()
}

fn integer(
    params: &Map<String, Value>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => {
            let n = v.as_u64().ok_or_else(|| {
                ApiError::new(
                    "InvalidParameter",
                    format!("`{name}` must be a non-negative integer"),
                )
            })?;
            if n > max {
                return Err(ApiError::new(
                    "InvalidParameterValue.Range",
                    format!("`{name}` = {n} is out of range [0, {max}]"),
                ));
            }
            Ok(n)
        }
    }
}

fn describe_havips(st: &State, params: &Map<String, Value>, here: bool) -> ApiResult {
    only_known(params, &["HaVipIds", "Filters", "Offset", "Limit"])?;
    if params.contains_key("HaVipIds") && params.contains_key("Filters") {
        return Err(ApiError::new(
            "InvalidParameter.Coexist",
            "HaVipIds and Filters cannot be given together",
        ));
    }
    let offset = integer(params, "Offset", 0, u64::from(u32::MAX))? as usize;
    let limit = integer(params, "Limit", 20, 100)? as usize;
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(ids) = params.get("HaVipIds") {
        let ids = string_list(ids, "HaVipIds")?;
        if let Some(bad) = ids.iter().find(|id| !id.starts_with("havip-")) {
            return Err(ApiError::new(
                "InvalidParameterValue.Malformed",
                format!("HaVipIds: `{bad}` is not a HAVIP id"),
            ));
        }
        filters.push(("havip-id".into(), ids));
    }
    if let Some(list) = params.get("Filters") {
        let list = list
            .as_array()
            .ok_or_else(|| ApiError::new("InvalidParameter", "`Filters` must be a list"))?;
        for f in list {
            let f = f.as_object().ok_or_else(|| {
                ApiError::new(
                    "InvalidParameter.FilterNotDict",
                    "each filter must be an object",
                )
            })?;
            only_known(f, &["Name", "Values"])?;
            let name = f
                .get("Name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::new("MissingParameter", "a filter has no `Name`"))?;
            let values = f
                .get("Values")
                .filter(|v| v.is_array())
                .ok_or_else(|| {
                    ApiError::new(
                        "InvalidParameter.FilterValuesNotList",
                        format!("filter `{name}`: `Values` must be a list"),
                    )
                })
                .and_then(|v| string_list(v, "Values"))?;
            const NAMES: &[&str] = &[
                "havip-id",
                "havip-name",
                "vpc-id",
                "subnet-id",
                "vip",
                "address-ip",
                "havip-association.instance-id",
                "havip-association.instance-type",
                "check-associate",
            ];
            if !NAMES.contains(&name) {
                return Err(ApiError::new(
                    "InvalidParameter.FilterInvalidKey",
                    format!("the filter `{name}` does not exist"),
                ));
            }
            filters.push((name.to_owned(), values));
        }
    }
    let matching: Vec<&Havip> = st
        .havips
        .values()
        .filter(|_| here)
        .filter(|h| {
            filters
                .iter()
                .all(|(name, values)| filter_matches(h, name, values))
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|h| h.to_json())
        .collect();
    let mut out = Map::new();
    out.insert("TotalCount".into(), json!(matching.len()));
    out.insert("HaVipSet".into(), Value::Array(page));
    Ok(out)
}

fn filter_matches(h: &Havip, name: &str, values: &[String]) -> bool {
    let any = |f: &dyn Fn(&str) -> bool| values.iter().any(|v| f(v));
    match name {
        "havip-id" => any(&|v| v == h.spec.havip_id),
        "havip-name" => any(&|v| v == h.spec.name),
        "vpc-id" => any(&|v| v == h.spec.vpc_id),
        "subnet-id" => any(&|v| v == h.spec.subnet_id),
        "vip" => any(&|v| v == h.spec.vip.to_string()),
        "address-ip" => any(&|v| h.address_ip.is_some_and(|a| a.to_string() == v)),
        "havip-association.instance-id" => {
            any(&|v| h.spec.associations.iter().any(|a| a.instance_id == v))
        }
        "havip-association.instance-type" => any(&|v| {
            h.spec
                .associations
                .iter()
                .any(|a| a.instance_type.as_str() == v)
        }),
        "check-associate" => any(&|v| v.eq_ignore_ascii_case(&h.spec.check_associate.to_string())),
        _ => false,
    }
}

fn change_associations(
    st: &mut State,
    params: &Map<String, Value>,
    add: bool,
    here: bool,
) -> ApiResult {
    only_known(params, &["HaVipAssociationSet"])?;
    let set = params
        .get("HaVipAssociationSet")
        .ok_or_else(|| ApiError::new("MissingParameter", "`HaVipAssociationSet` is required"))?
        .as_array()
        .ok_or_else(|| ApiError::new("InvalidParameter", "`HaVipAssociationSet` must be a list"))?;
    if set.is_empty() {
        return Err(ApiError::new(
            "InvalidParameterValue.Empty",
            "`HaVipAssociationSet` must not be empty",
        ));
    }
    if set.len() > MAX_ASSOCIATION_ITEMS {
        return Err(ApiError::new(
            "InvalidParameterValue.LimitExceeded",
            format!(
                "`HaVipAssociationSet` has {} items; at most {MAX_ASSOCIATION_ITEMS} are allowed",
                set.len()
            ),
        ));
    }
    let mut items: Vec<(String, Association)> = Vec::new();
    for (n, item) in set.iter().enumerate() {
        let item = item.as_object().ok_or_else(|| {
            ApiError::new(
                "InvalidParameter",
                format!("HaVipAssociationSet.{n} must be an object"),
            )
        })?;
        only_known(item, &["HaVipId", "InstanceId", "InstanceType"])?;
        let field = |name: &str| {
            item.get(name).and_then(Value::as_str).ok_or_else(|| {
                ApiError::new(
                    "MissingParameter",
                    format!("HaVipAssociationSet.{n}.{name} is required"),
                )
            })
        };
        let havip_id = field("HaVipId")?;
        let instance_id = field("InstanceId")?;
        let ty = match item.get("InstanceType") {
            None => InstanceType::Cvm,
            Some(v) => v.as_str().and_then(InstanceType::parse).ok_or_else(|| {
                ApiError::new(
                    "InvalidParameterValue",
                    format!("HaVipAssociationSet.{n}.InstanceType must be `CVM` or `ENI`, got {v}"),
                )
            })?,
        };
        if !havip_id.starts_with("havip-") {
            return Err(ApiError::new(
                "InvalidParameterValue.Malformed",
                format!("HaVipAssociationSet.{n}.HaVipId `{havip_id}` is not a HAVIP id"),
            ));
        }
        let prefix = match ty {
            InstanceType::Cvm => "ins-",
            InstanceType::Eni => "eni-",
        };
        if !instance_id.starts_with(prefix) {
            return Err(ApiError::new(
                "InvalidParameterValue.Malformed",
                format!("HaVipAssociationSet.{n}.InstanceId `{instance_id}` is not a {ty} id"),
            ));
        }
        if !here || !st.havips.contains_key(havip_id) {
            return Err(ApiError::new(
                "ResourceNotFound",
                format!("The HAVIP `{havip_id}` does not exist"),
            ));
        }
        let assoc = Association {
            instance_id: instance_id.to_owned(),
            instance_type: ty,
        };
        if items.iter().any(|(h, a)| h == havip_id && *a == assoc) {
            return Err(ApiError::new(
                "InvalidParameterValue.Duplicate",
                format!("HaVipAssociationSet lists `{havip_id}`/`{instance_id}` twice"),
            ));
        }
        items.push((havip_id.to_owned(), assoc));
    }
    // Validate every item before changing anything: the call is all or nothing.
    for (havip_id, assoc) in &items {
        let havip = &st.havips[havip_id];
        let present = havip.spec.associations.contains(assoc);
        if add {
            if present {
                return Err(ApiError::new(
                    "InvalidParameterValue.DuplicatedHaVipAssociations",
                    format!(
                        "The HAVIP `{havip_id}` is already associated with {} `{}`",
                        assoc.instance_type, assoc.instance_id
                    ),
                ));
            }
            let mixed = havip
                .spec
                .associations
                .iter()
                .chain(items.iter().filter(|(h, _)| h == havip_id).map(|(_, a)| a))
                .any(|a| a.instance_type != assoc.instance_type);
            if mixed {
                return Err(ApiError::new(
                    "InvalidParameterValue",
                    format!(
                        "The HAVIP `{havip_id}` cannot be associated with both CVM and ENI instances"
                    ),
                ));
            }
            if assoc.instance_type == InstanceType::Eni {
                // An ENI must be attached to a CVM to be listed, and primary ENIs cannot be bound
                // ("主网卡暂不支持绑定", HAVIP console guide 215/36694).
                match st.enis.get(&assoc.instance_id) {
                    None => {
                        return Err(ApiError::new(
                            "ResourceNotFound",
                            format!(
                                "The ENI `{}` does not exist or is not attached to an instance",
                                assoc.instance_id
                            ),
                        ));
                    }
                    Some(e) if e.primary => {
                        return Err(ApiError::new(
                            PRIMARY_ENI_CODE,
                            format!(
                                "The ENI `{}` is the primary ENI of `{}`: a primary ENI cannot be \
                                 associated with a HAVIP; use a secondary ENI",
                                assoc.instance_id, e.instance_id
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        } else if !present {
            return Err(ApiError::new(
                "ResourceNotFound",
                format!(
                    "The HAVIP `{havip_id}` is not associated with {} `{}`",
                    assoc.instance_type, assoc.instance_id
                ),
            ));
        }
    }
    for (havip_id, assoc) in items {
        let havip = st.havips.get_mut(&havip_id).expect("validated above");
        if add {
            havip.spec.associations.push(assoc);
        } else {
            havip.spec.associations.retain(|a| *a != assoc);
        }
    }
    Ok(Map::new())
}

fn describe_task(st: &State, params: &Map<String, Value>) -> ApiResult {
    only_known(params, &["TaskId"])?;
    let task_id = match params.get("TaskId") {
        None => return Err(ApiError::new("MissingParameter", "`TaskId` is required")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(ApiError::new(
                "InvalidParameter",
                "`TaskId` must be a string",
            ));
        }
    };
    let status = st.tasks.get(&task_id).ok_or_else(|| {
        ApiError::new(
            "ResourceNotFound",
            format!("The task `{task_id}` does not exist"),
        )
    })?;
    let mut out = Map::new();
    out.insert("Status".into(), Value::String(status.clone()));
    out.insert("Output".into(), Value::String(String::new()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_is_imf_fixdate() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(http_date(t), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn cloud_time_is_china_standard_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(cloud_time(t), "2023-11-15 06:13:20");
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
    }

    #[test]
    fn eni_ids_are_stable_per_instance() {
        assert_eq!(eni_id_for("ins-a"), eni_id_for("ins-a"));
        assert_ne!(eni_id_for("ins-a"), eni_id_for("ins-b"));
        assert!(eni_id_for("ins-a").starts_with("eni-"));
    }
}

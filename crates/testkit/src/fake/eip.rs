//! The fake's EIP actions: registered EIPs, `HaVipAssociateAddressIp` / `HaVipDisassociateAddressIp` with the
//! real API's rules and codes, and their asynchronous tasks (`DescribeVpcTaskResult`).
//!
//! A child module of `vpc` (declared there with `#[path]`), so it works on the fake's private state without
//! widening it. A task is `RUNNING` for [`FakeCloud::set_eip_task_duration`] (300 ms by default), then
//! `SUCCESS` (and only then does `DescribeHaVips` show `AddressIp`) or, when a fault asked for it, `FAILED`
//! with an `Output`. Task ids are the call's `RequestId`. Time is real time: the fake answers on wiremock's
//! own runtime. It does not own the HAVIPs themselves or the other actions (see `vpc`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::{ApiError, ApiResult, FakeCloud, State, only_known};

/// How long an EIP task runs unless told otherwise.
pub const DEFAULT_EIP_TASK_DURATION: Duration = Duration::from_millis(300);

/// The EIP part of the fake's state.
#[derive(Debug)]
pub(super) struct EipState {
    /// EIPs that exist in the account (`add_eip`).
    eips: BTreeSet<Ipv4Addr>,
    /// Every EIP task so far, by task id.
    tasks: HashMap<String, Task>,
    /// How long a new task runs.
    duration: Duration,
    /// Outputs of the next tasks that will end `FAILED`, in order.
    fail_next: VecDeque<String>,
}

impl Default for EipState {
    fn default() -> Self {
        Self {
            eips: BTreeSet::new(),
            tasks: HashMap::new(),
            duration: DEFAULT_EIP_TASK_DURATION,
            fail_next: VecDeque::new(),
        }
    }
}

#[derive(Debug)]
struct Task {
    havip_id: String,
    /// `Some` for a bind, `None` for an unbind.
    bind: Option<Ipv4Addr>,
    /// The EIP an unbind releases (for the mutex rule).
    eip: Ipv4Addr,
    done_at: Instant,
    fail: Option<String>,
    status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Running,
    Success,
    Failed(String),
}

/// Ends every task whose time has come, applying a successful one's effect. Called before every request
/// is handled, so a bind shows in `DescribeHaVips` exactly when its task reads `SUCCESS`.
pub(super) fn settle(st: &mut State) {
    let now = Instant::now();
    let mut due: Vec<&mut Task> = st
        .eip
        .tasks
        .values_mut()
        .filter(|t| t.status == Status::Running && t.done_at <= now)
        .collect();
    // Oldest first: two tasks on one HAVIP cannot overlap (mutex rule), so order only matters for logs.
    due.sort_by_key(|t| t.done_at);
    for t in due {
        if let Some(output) = t.fail.take() {
            tracing::info!(havip = %t.havip_id, output, "fake cloud eip task failed");
            t.status = Status::Failed(output);
            continue;
        }
        t.status = Status::Success;
        if let Some(h) = st.havips.get_mut(&t.havip_id) {
            h.address_ip = t.bind;
        }
        tracing::info!(havip = %t.havip_id, eip = ?t.bind, "fake cloud eip task succeeded");
    }
}

fn havip_param(params: &Map<String, Value>) -> Result<&str, ApiError> {
    let id = params
        .get("HaVipId")
        .ok_or_else(|| ApiError::new("MissingParameter", "`HaVipId` is required"))?
        .as_str()
        .ok_or_else(|| ApiError::new("InvalidParameter", "`HaVipId` must be a string"))?;
    if !id.starts_with("havip-") {
        return Err(ApiError::new(
            "InvalidParameterValue.Malformed",
            format!("HaVipId `{id}` is not a HAVIP id"),
        ));
    }
    Ok(id)
}

/// `UnsupportedOperation.MutexOperationTaskRunning` while a task on this HAVIP or this EIP runs.
fn mutex(st: &State, havip_id: &str, eip: Option<Ipv4Addr>) -> Result<(), ApiError> {
    let busy = st
        .eip
        .tasks
        .values()
        .any(|t| t.status == Status::Running && (t.havip_id == havip_id || Some(t.eip) == eip));
    if busy {
        return Err(ApiError::new(
            "UnsupportedOperation.MutexOperationTaskRunning",
            format!(
                "another operation on `{havip_id}` is still running; try again when it is done"
            ),
        ));
    }
    Ok(())
}

fn start_task(
    st: &mut State,
    request_id: &str,
    havip_id: &str,
    bind: Option<Ipv4Addr>,
    eip: Ipv4Addr,
) {
    let fail = st.eip.fail_next.pop_front();
    st.eip.tasks.insert(
        request_id.to_owned(),
        Task {
            havip_id: havip_id.to_owned(),
            bind,
            eip,
            done_at: Instant::now() + st.eip.duration,
            fail,
            status: Status::Running,
        },
    );
}

/// `HaVipAssociateAddressIp{HaVipId, AddressIp}`: the EIP must exist and be on nothing, the HAVIP must have
/// no EIP, and nothing else may run on either.
pub(super) fn associate(
    st: &mut State,
    params: &Map<String, Value>,
    request_id: &str,
) -> ApiResult {
    only_known(params, &["HaVipId", "AddressIp"])?;
    let havip_id = havip_param(params)?;
    let text = params
        .get("AddressIp")
        .ok_or_else(|| ApiError::new("MissingParameter", "`AddressIp` is required"))?
        .as_str()
        .ok_or_else(|| ApiError::new("InvalidParameter", "`AddressIp` must be a string"))?;
    let eip: Ipv4Addr = text.parse().map_err(|_| {
        ApiError::new(
            "InvalidParameterValue.Malformed",
            format!("AddressIp `{text}` is not an IPv4 address"),
        )
    })?;
    let Some(havip) = st.havips.get(havip_id) else {
        return Err(ApiError::new(
            "ResourceNotFound",
            format!("The HAVIP `{havip_id}` does not exist"),
        ));
    };
    if !st.eip.eips.contains(&eip) {
        return Err(ApiError::new(
            "InvalidParameterValue.AddressIpNotFound",
            format!("The EIP `{eip}` does not exist"),
        ));
    }
    mutex(st, havip_id, Some(eip))?;
    if let Some(have) = havip.address_ip {
        return Err(ApiError::new(
            "UnsupportedOperation.BindEIP",
            format!("The HAVIP `{havip_id}` is already bound to the EIP `{have}`"),
        ));
    }
    if let Some(other) = st.havips.values().find(|h| h.address_ip == Some(eip)) {
        return Err(ApiError::new(
            "UnsupportedOperation.BindEIP",
            format!(
                "The EIP `{eip}` is already bound to `{}`",
                other.spec.havip_id
            ),
        ));
    }
    start_task(st, request_id, havip_id, Some(eip), eip);
    Ok(Map::new())
}

/// `HaVipDisassociateAddressIp{HaVipId}`: the HAVIP must have an EIP and nothing may run on it.
pub(super) fn disassociate(
    st: &mut State,
    params: &Map<String, Value>,
    request_id: &str,
) -> ApiResult {
    only_known(params, &["HaVipId"])?;
    let havip_id = havip_param(params)?;
    let Some(havip) = st.havips.get(havip_id) else {
        return Err(ApiError::new(
            "ResourceNotFound",
            format!("The HAVIP `{havip_id}` does not exist"),
        ));
    };
    let have = havip.address_ip;
    mutex(st, havip_id, have)?;
    let Some(eip) = have else {
        return Err(ApiError::new(
            "UnsupportedOperation.UnbindEIP",
            format!("The HAVIP `{havip_id}` has no EIP to unbind"),
        ));
    };
    start_task(st, request_id, havip_id, None, eip);
    Ok(Map::new())
}

/// `DescribeVpcTaskResult` for an EIP task; `None` when `TaskId` names no EIP task (the caller answers then,
/// an error for ids that never existed).
pub(super) fn describe_task(st: &State, params: &Map<String, Value>) -> Option<ApiResult> {
    let id = match params.get("TaskId")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let task = st.eip.tasks.get(&id)?;
    let (status, output) = match &task.status {
        Status::Running => ("RUNNING", String::new()),
        Status::Success => ("SUCCESS", String::new()),
        Status::Failed(o) => ("FAILED", o.clone()),
    };
    let mut out = Map::new();
    out.insert("Status".into(), Value::String(status.into()));
    out.insert("Output".into(), Value::String(output));
    Some(Ok(out))
}

impl FakeCloud {
    /// Registers an EIP in the account, unbound, so `HaVipAssociateAddressIp` can bind it.
    pub fn add_eip(&self, eip: Ipv4Addr) {
        self.lock().eip.eips.insert(eip);
    }

    /// Puts `eip` on the HAVIP at once (no task), registering it: a HAVIP that already has an EIP, as an
    /// operator or an earlier run left it. Returns false if the HAVIP does not exist.
    pub fn set_havip_eip(&self, havip_id: &str, eip: Ipv4Addr) -> bool {
        let mut st = self.lock();
        st.eip.eips.insert(eip);
        match st.havips.get_mut(havip_id) {
            Some(h) => {
                h.address_ip = Some(eip);
                true
            }
            None => false,
        }
    }

    /// The EIP `DescribeHaVips` reports on the HAVIP now (`AddressIp`), after ending every task whose time
    /// has come.
    pub fn havip_eip(&self, havip_id: &str) -> Option<Ipv4Addr> {
        let mut st = self.lock();
        settle(&mut st);
        st.havips.get(havip_id).and_then(|h| h.address_ip)
    }

    /// How long EIP tasks started from now on stay `RUNNING` (default 300 ms).
    pub fn set_eip_task_duration(&self, d: Duration) {
        self.lock().eip.duration = d;
    }

    /// Makes the next `times` EIP tasks end `FAILED` with `output` (and change nothing).
    pub fn fail_next_eip_tasks(&self, times: u32, output: &str) {
        let mut st = self.lock();
        for _ in 0..times {
            st.eip.fail_next.push_back(output.to_owned());
        }
    }
}

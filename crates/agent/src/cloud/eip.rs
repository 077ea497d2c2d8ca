//! An EIP on a HAVIP: `HaVipAssociateAddressIp` / `HaVipDisassociateAddressIp` and the asynchronous task
//! each one starts (`DescribeVpcTaskResult`, task id = the call's `RequestId`).
//!
//! Owns the two actions, the task poll, the "is it already done?" re-read, the error kinds of an EIP bind
//! and the pure comparison of a HAVIP's `AddressIp` with the configured EIP ([`eip_state`]). It does not
//! decide when to bind (the daemon does, once at start and never on failover: the EIP follows the HAVIP),
//! and it never replaces an EIP that is already on the HAVIP.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::client::VpcClient;
use super::error::CloudError;
use super::types::{HaVip, TaskStatus};

/// The HAVIP already has an EIP, or the EIP is bound to something else.
const BIND_EIP: &str = "UnsupportedOperation.BindEIP";
/// Another asynchronous operation on the HAVIP (or the EIP) is still running.
const MUTEX_TASK: &str = "UnsupportedOperation.MutexOperationTaskRunning";
/// The first wait before asking about a task; doubled after every `RUNNING` up to [`TASK_POLL_CAP`].
const TASK_POLL_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two task polls.
const TASK_POLL_CAP: Duration = Duration::from_secs(2);

/// How the EIP the cloud reports on a HAVIP (`AddressIp`) compares with the configured one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EipState {
    /// The configured EIP is bound to the HAVIP.
    Bound,
    /// The HAVIP has no EIP.
    Missing,
    /// The HAVIP has another EIP (as the API spells it).
    Other(String),
}

/// Compares `havip`'s `AddressIp` with the configured `want`. Pure: `check`, `status` and the daemon all
/// read a HAVIP's EIP through it.
pub fn eip_state(want: Ipv4Addr, havip: &HaVip) -> EipState {
    match havip.address_ip.as_deref().map(str::trim) {
        None | Some("") => EipState::Missing,
        Some(ip) if ip.parse::<Ipv4Addr>().ok() == Some(want) => EipState::Bound,
        Some(ip) => EipState::Other(ip.to_owned()),
    }
}

/// How an EIP came to be on the HAVIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EipBound {
    /// This call bound it: its task (the call's `RequestId`) ended `SUCCESS`.
    Bound {
        /// The task id.
        task_id: String,
    },
    /// It was already bound (by another node, an earlier run or an operator): nothing was changed.
    AlreadyBound,
}

/// Why an EIP operation did not end with the EIP where it was asked to be.
#[derive(Debug, thiserror::Error)]
pub enum EipError {
    /// The API call (or a task poll) failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// The task ended `FAILED`.
    #[error("{action} of {havip_id}: task {task_id} FAILED{}", output.as_deref().map(|o| format!(": {o}")).unwrap_or_else(|| " (no Output)".into()))]
    TaskFailed {
        /// The action that started the task.
        action: &'static str,
        /// The HAVIP.
        havip_id: String,
        /// The task id (the call's `RequestId`).
        task_id: String,
        /// The task's `Output`, when it has one.
        output: Option<String>,
    },
    /// The deadline came while the task was still running; it may still end either way.
    #[error("{action} of {havip_id}: task {task_id} still {status} at the deadline")]
    TaskUnfinished {
        /// The action that started the task.
        action: &'static str,
        /// The HAVIP.
        havip_id: String,
        /// The task id.
        task_id: String,
        /// The last status seen (`RUNNING`, or an unknown status as sent).
        status: String,
    },
    /// The HAVIP already has another EIP. The agent never replaces it.
    #[error(
        "{havip_id} has EIP {bound}, not the configured {wanted}: the agent never replaces an EIP; unbind {bound} (console, or HaVipDisassociateAddressIp) or set havip.eip = \"{bound}\""
    )]
    OtherEip {
        /// The HAVIP.
        havip_id: String,
        /// The configured EIP.
        wanted: Ipv4Addr,
        /// The EIP the HAVIP has.
        bound: String,
    },
    /// The cloud refused the bind although the HAVIP has no EIP: the EIP is bound to something else (another
    /// HAVIP, a CVM, a NAT gateway) or cannot be bound.
    #[error(
        "{havip_id}: EIP {eip} cannot be bound to the HAVIP: {source} (is the EIP bound to something else? unbind it there first)"
    )]
    Refused {
        /// The HAVIP.
        havip_id: String,
        /// The EIP.
        eip: Ipv4Addr,
        /// The API's answer.
        source: CloudError,
    },
}

impl EipError {
    /// Whether trying again later may help: a transient API error, a task that failed or did not finish.
    /// An EIP that is somewhere else needs an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            EipError::Cloud(e) => e.is_retryable(),
            EipError::TaskFailed { .. } | EipError::TaskUnfinished { .. } => true,
            EipError::OtherEip { .. } | EipError::Refused { .. } => false,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AssociateAddressIpRequest<'a> {
    ha_vip_id: &'a str,
    address_ip: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DisassociateAddressIpRequest<'a> {
    ha_vip_id: &'a str,
}

/// The answer of an asynchronous action: only its `RequestId` matters, it is the task id.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TaskStarted {
    #[serde(default)]
    pub(crate) request_id: String,
}

impl VpcClient {
    /// Binds `eip` to the HAVIP unless it is already there: reads the HAVIP, then calls
    /// [`VpcClient::associate_address_ip`] only when it has no EIP. Another EIP on it is
    /// [`EipError::OtherEip`]: nothing is changed.
    pub async fn ensure_address_ip(
        &self,
        havip_id: &str,
        eip: Ipv4Addr,
        deadline: Instant,
    ) -> Result<EipBound, EipError> {
        let havip = self.describe_havip(havip_id, deadline).await?;
        match eip_state(eip, &havip) {
            EipState::Bound => Ok(EipBound::AlreadyBound),
            EipState::Other(bound) => Err(EipError::OtherEip {
                havip_id: havip_id.to_owned(),
                wanted: eip,
                bound,
            }),
            EipState::Missing => self.associate_address_ip(havip_id, eip, deadline).await,
        }
    }

    /// `HaVipAssociateAddressIp`, then polls its task until `SUCCESS`, `FAILED` or `deadline`. Transient
    /// errors are retried by the client until the deadline; `UnsupportedOperation.MutexOperationTaskRunning`
    /// (another node's bind still running) and `UnsupportedOperation.BindEIP` count as done when a re-read
    /// shows `eip` on the HAVIP.
    pub async fn associate_address_ip(
        &self,
        havip_id: &str,
        eip: Ipv4Addr,
        deadline: Instant,
    ) -> Result<EipBound, EipError> {
        let action = "HaVipAssociateAddressIp";
        let request = AssociateAddressIpRequest {
            ha_vip_id: havip_id,
            address_ip: eip.to_string(),
        };
        match self
            .call::<_, TaskStarted>(action, &request, deadline)
            .await
        {
            Ok(started) => {
                self.wait_task(action, havip_id, &started.request_id, deadline)
                    .await?;
                tracing::info!(havip = havip_id, eip = %eip, task = %started.request_id, "eip bound to the havip");
                Ok(EipBound::Bound {
                    task_id: started.request_id,
                })
            }
            Err(e) if matches!(e.code(), Some(BIND_EIP | MUTEX_TASK)) => {
                // Someone else may have bound it first (any node may try): only a re-read can tell.
                let havip = self.describe_havip(havip_id, deadline).await?;
                match eip_state(eip, &havip) {
                    EipState::Bound => {
                        tracing::info!(havip = havip_id, eip = %eip, code = e.code(), "eip already bound to the havip");
                        Ok(EipBound::AlreadyBound)
                    }
                    EipState::Other(bound) => Err(EipError::OtherEip {
                        havip_id: havip_id.to_owned(),
                        wanted: eip,
                        bound,
                    }),
                    EipState::Missing if e.code() == Some(MUTEX_TASK) => Err(e.into()),
                    EipState::Missing => Err(EipError::Refused {
                        havip_id: havip_id.to_owned(),
                        eip,
                        source: e,
                    }),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `HaVipDisassociateAddressIp`, then polls its task. The agent never calls this (the EIP follows the
    /// HAVIP on failover); it is here for operators' tools and tests.
    pub async fn disassociate_address_ip(
        &self,
        havip_id: &str,
        deadline: Instant,
    ) -> Result<String, EipError> {
        let action = "HaVipDisassociateAddressIp";
        let request = DisassociateAddressIpRequest {
            ha_vip_id: havip_id,
        };
        let started: TaskStarted = self.call(action, &request, deadline).await?;
        self.wait_task(action, havip_id, &started.request_id, deadline)
            .await?;
        Ok(started.request_id)
    }

    /// Polls `DescribeVpcTaskResult` for `task_id` with a doubling wait until `SUCCESS` (`Ok`), `FAILED`
    /// ([`EipError::TaskFailed`] with the task's `Output`) or the deadline ([`EipError::TaskUnfinished`]).
    /// An unknown status is treated as still running.
    async fn wait_task(
        &self,
        action: &'static str,
        havip_id: &str,
        task_id: &str,
        deadline: Instant,
    ) -> Result<(), EipError> {
        if task_id.is_empty() {
            return Err(CloudError::Decode {
                action: action.into(),
                detail: "the answer has no RequestId to poll the task with".into(),
            }
            .into());
        }
        let mut wait = TASK_POLL_FIRST;
        loop {
            let unfinished = |status: String| EipError::TaskUnfinished {
                action,
                havip_id: havip_id.to_owned(),
                task_id: task_id.to_owned(),
                status,
            };
            // The task has only just started: asking at once would only cost a request.
            if Instant::now() + wait >= deadline {
                return Err(unfinished("RUNNING".into()));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(TASK_POLL_CAP);
            match self.describe_task_result(task_id, deadline).await? {
                TaskStatus::Success => return Ok(()),
                TaskStatus::Failed { output } => {
                    return Err(EipError::TaskFailed {
                        action,
                        havip_id: havip_id.to_owned(),
                        task_id: task_id.to_owned(),
                        output,
                    });
                }
                TaskStatus::Running => {
                    if Instant::now() + wait >= deadline {
                        return Err(unfinished("RUNNING".into()));
                    }
                }
                TaskStatus::Other(status) => {
                    tracing::debug!(task = task_id, status, "unknown task status, still waiting");
                    if Instant::now() + wait >= deadline {
                        return Err(unfinished(status));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn havip(address_ip: Option<&str>) -> HaVip {
        HaVip {
            address_ip: address_ip.map(str::to_owned),
            ..HaVip::unbound("havip-1", "10.0.0.9")
        }
    }

    #[test]
    fn eip_state_compares_address_ip_with_the_configured_eip() {
        struct Row {
            name: &'static str,
            address_ip: Option<&'static str>,
            want: EipState,
        }
        let eip: Ipv4Addr = "203.0.113.10".parse().unwrap();
        let rows = [
            Row {
                name: "none",
                address_ip: None,
                want: EipState::Missing,
            },
            Row {
                name: "blank",
                address_ip: Some(" "),
                want: EipState::Missing,
            },
            Row {
                name: "ours",
                address_ip: Some("203.0.113.10"),
                want: EipState::Bound,
            },
            Row {
                name: "ours with blanks",
                address_ip: Some(" 203.0.113.10 "),
                want: EipState::Bound,
            },
            Row {
                name: "another",
                address_ip: Some("203.0.113.99"),
                want: EipState::Other("203.0.113.99".into()),
            },
            Row {
                name: "not an address",
                address_ip: Some("eip-xyz"),
                want: EipState::Other("eip-xyz".into()),
            },
        ];
        for r in rows {
            assert_eq!(eip_state(eip, &havip(r.address_ip)), r.want, "{}", r.name);
        }
    }

    #[test]
    fn only_errors_an_operator_must_fix_are_permanent() {
        let task = |failed: bool| {
            if failed {
                EipError::TaskFailed {
                    action: "HaVipAssociateAddressIp",
                    havip_id: "havip-1".into(),
                    task_id: "t-1".into(),
                    output: Some("boom".into()),
                }
            } else {
                EipError::TaskUnfinished {
                    action: "HaVipAssociateAddressIp",
                    havip_id: "havip-1".into(),
                    task_id: "t-1".into(),
                    status: "RUNNING".into(),
                }
            }
        };
        assert!(task(true).is_retryable() && task(false).is_retryable());
        assert_eq!(
            task(true).to_string(),
            "HaVipAssociateAddressIp of havip-1: task t-1 FAILED: boom"
        );
        let other = EipError::OtherEip {
            havip_id: "havip-1".into(),
            wanted: "203.0.113.10".parse().unwrap(),
            bound: "203.0.113.99".into(),
        };
        assert!(!other.is_retryable());
        assert!(other.to_string().contains("never replaces"), "{other}");
    }
}

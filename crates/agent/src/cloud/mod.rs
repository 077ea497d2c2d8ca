//! The Tencent Cloud VPC API client: signed requests for the HAVIP actions, typed answers, typed errors and
//! retries bounded by the caller's deadline.
//!
//! Owns the request envelope (`X-TC-*` headers, TC3 signature over the exact bytes sent), the response
//! envelope (`Response.Error` means failure), the retry classes, the clock-skew correction, the per-action
//! rate limit (`limit`), the batching of concurrent calls (`batch`), the warm connection, and the typed
//! `HaVip`. It does not compute signatures itself (see `tc3`), find credentials (see `credentials`), or
//! decide what to associate when (the claim and reconcile logic does).

mod batch;
mod client;
mod eip;
mod error;
mod limit;
mod types;

use std::time::Duration;

pub use client::{API_VERSION, HTTP_DATE, KeepWarm, RetryPolicy, SERVICE, VpcClient};
// For the fuzz targets (`crate::fuzzing`): the answer-reading code of the client.
pub(crate) use client::{decode_body, decode_typed, havip_page, task_status};
pub(crate) use eip::TaskStarted;
pub use eip::{EipBound, EipError, EipState, eip_state};
pub use error::{CloudError, is_retryable_code};
pub(crate) use types::{DescribeHaVipsResponse, DescribeVpcTaskResultResponse};
pub use types::{HaVip, HaVipAssociation, HaVipState, InstanceType, TaskStatus, holder_id};

/// Told about every HTTP attempt the client makes (for metrics). Called once per attempt, retries included,
/// after the answer (or the failure) is in.
pub trait ApiObserver: Send + Sync {
    /// `action` is the API action; `elapsed` the time from sending to having the whole answer; `error_code`
    /// is `None` on success, the API's `Code` for an API error, or `"http_<status>"`, `"transport"`,
    /// `"timeout"` or `"decode"` for failures without one.
    fn observe(&self, action: &str, elapsed: Duration, error_code: Option<&str>);
}

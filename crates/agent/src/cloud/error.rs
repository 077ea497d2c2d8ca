//! Why a VPC API call failed, and whether trying again may help.
//!
//! No variant ever carries a credential: requests and their headers are never copied into errors.

use std::time::Duration;

use crate::credentials::CredentialError;

/// Longest excerpt of a non-JSON or non-200 body kept in an error.
const BODY_EXCERPT: usize = 200;

/// A failed VPC API call. `Clone` so that one batched request's failure can be handed to every caller in
/// the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    /// The API answered with `Response.Error` (HTTP 200).
    #[error("{code}: {message} (RequestId {request_id})")]
    Api {
        /// The action called.
        action: String,
        /// `Error.Code`, e.g. `AuthFailure.SignatureFailure`.
        code: String,
        /// `Error.Message`.
        message: String,
        /// `RequestId`, for Tencent support.
        request_id: String,
    },
    /// An HTTP status other than 200.
    #[error("{action}: HTTP {status} from {endpoint}{}", excerpt_suffix(body))]
    Http {
        /// The action called.
        action: String,
        /// The status code.
        status: u16,
        /// The endpoint.
        endpoint: String,
        /// The start of the body.
        body: String,
    },
    /// The request could not be sent or the answer not received (refused, reset, TLS, DNS).
    #[error("{action}: cannot reach {endpoint}: {detail}")]
    Transport {
        /// The action called.
        action: String,
        /// The endpoint.
        endpoint: String,
        /// The transport error with its causes.
        detail: String,
    },
    /// No whole answer within the per-request timeout (the configured timeout, or less when the caller's
    /// deadline was nearer).
    #[error("{action}: no answer from {endpoint} within {after:?}")]
    Timeout {
        /// The action called.
        action: String,
        /// The endpoint.
        endpoint: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The caller's deadline had passed before a request could be sent.
    #[error("{action}: deadline passed before the request could be sent")]
    DeadlineExceeded {
        /// The action called.
        action: String,
    },
    /// The answer is not the envelope the API documents.
    #[error("{action}: cannot decode the answer: {detail}")]
    Decode {
        /// The action called.
        action: String,
        /// What is wrong.
        detail: String,
    },
    /// No credentials to sign with.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// `DescribeHaVips` does not know the HAVIP.
    #[error("HAVIP {havip_id} not found in region {region}{}", request_id.as_ref().map(|r| format!(" (RequestId {r})")).unwrap_or_default())]
    NotFound {
        /// The HAVIP asked for.
        havip_id: String,
        /// The region asked.
        region: String,
        /// The request that said so, when it was an API error.
        request_id: Option<String>,
    },
    /// The client cannot be built from the settings, or a credential cannot be put in a header.
    #[error("{key}: {problem}")]
    Config {
        /// The setting, e.g. `cloud.endpoint`.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn excerpt_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// The start of a body, for messages: at most [`BODY_EXCERPT`] characters, on one line.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(BODY_EXCERPT) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

/// Whether an API error `Code` is worth retrying: throttling, internal errors, a conflicting task in
/// progress, and the VPC's documented transient server-side codes (`ServiceUnavailable`, `ActionLocked`:
/// "the resource is being operated on, wait for the last operation to end", `ResourceUnavailable`), each
/// with its `.*` sub-codes. Every other code (authentication, parameters, missing resources, quotas,
/// unknown codes) would fail the same way again.
pub fn is_retryable_code(code: &str) -> bool {
    const FAMILIES: [&str; 5] = [
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "ActionLocked",
        "ResourceUnavailable",
    ];
    FAMILIES.iter().any(|family| {
        code.strip_prefix(family)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    }) || code == "UnsupportedOperation.MutexOperationTaskRunning"
}

/// Whether a `DisassociateHaVipInstance` error means the pair is already gone, so the disassociation the
/// caller wants is done: `ResourceNotFound*` (the pair, or the HAVIP, does not exist) and
/// `InvalidParameterValue.*NotAssociated*`-like codes. Only for disassociate: for any other action these
/// codes are real failures.
pub(crate) fn means_already_disassociated(code: &str) -> bool {
    code == "ResourceNotFound"
        || code.starts_with("ResourceNotFound.")
        || (code.starts_with("InvalidParameterValue.")
            && code.to_ascii_lowercase().contains("notassociated"))
}

impl CloudError {
    /// Whether the same call may succeed later: transport errors, timeouts, HTTP 5xx, the retryable API
    /// codes ([`is_retryable_code`]) and transient credential lookups. `AuthFailure.SignatureExpire` is not:
    /// the client corrects its clock and retries it once by itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            CloudError::Api { code, .. } => is_retryable_code(code),
            CloudError::Http { status, .. } => *status >= 500,
            CloudError::Transport { .. }
            | CloudError::Timeout { .. }
            | CloudError::DeadlineExceeded { .. } => true,
            CloudError::Credentials(e) => e.is_retryable(),
            CloudError::Decode { .. } | CloudError::NotFound { .. } | CloudError::Config { .. } => {
                false
            }
        }
    }

    /// Whether the keys or their permissions are the problem (`AuthFailure.*`, `UnauthorizedOperation*`,
    /// or no credentials at all): an operator must act.
    pub fn is_auth(&self) -> bool {
        match self {
            CloudError::Api { code, .. } => {
                code.starts_with("AuthFailure") || code.starts_with("UnauthorizedOperation")
            }
            CloudError::Credentials(_) => true,
            _ => false,
        }
    }

    /// The API's `Error.Code`, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The `RequestId` of the request that failed, when the API answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            CloudError::Api { request_id, .. } => Some(request_id),
            CloudError::NotFound { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// A short label for metrics: the API code, `http_<status>`, `transport`, `timeout`, `decode`,
    /// `deadline`, `credentials`, `not_found` or `config`.
    pub fn label(&self) -> String {
        match self {
            CloudError::Api { code, .. } => code.clone(),
            CloudError::Http { status, .. } => format!("http_{status}"),
            CloudError::Transport { .. } => "transport".into(),
            CloudError::Timeout { .. } => "timeout".into(),
            CloudError::DeadlineExceeded { .. } => "deadline".into(),
            CloudError::Decode { .. } => "decode".into(),
            CloudError::Credentials(_) => "credentials".into(),
            CloudError::NotFound { .. } => "not_found".into(),
            CloudError::Config { .. } => "config".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_display_is_code_message_request_id() {
        let e = CloudError::Api {
            action: "DescribeHaVips".into(),
            code: "AuthFailure.SignatureFailure".into(),
            message: "The provided credentials could not be validated.".into(),
            request_id: "req-1".into(),
        };
        assert_eq!(
            e.to_string(),
            "AuthFailure.SignatureFailure: The provided credentials could not be validated. (RequestId req-1)"
        );
        assert!(e.is_auth());
        assert!(!e.is_retryable());
        assert_eq!(e.code(), Some("AuthFailure.SignatureFailure"));
        assert_eq!(e.request_id(), Some("req-1"));
    }

    #[test]
    fn transient_server_codes_are_retryable_with_their_sub_codes() {
        for code in [
            "ServiceUnavailable",
            "ServiceUnavailable.Busy",
            "ActionLocked",
            "ResourceUnavailable",
            "ResourceUnavailable.HaVip",
            "InternalError",
            "InternalError.ServerError",
            "RequestLimitExceeded",
            "RequestLimitExceeded.UinLimitExceeded",
            "UnsupportedOperation.MutexOperationTaskRunning",
        ] {
            assert!(is_retryable_code(code), "{code} should be retried");
        }
        for code in [
            "ServiceUnavailableX",
            "ActionLockedForever",
            "ResourceNotFound",
            "UnsupportedOperation",
            "AuthFailure.TokenFailure",
        ] {
            assert!(!is_retryable_code(code), "{code} should not be retried");
        }
    }

    #[test]
    fn only_missing_pairs_count_as_already_disassociated() {
        for code in [
            "ResourceNotFound",
            "ResourceNotFound.HaVipAssociation",
            "InvalidParameterValue.HaVipNotAssociated",
        ] {
            assert!(means_already_disassociated(code), "{code}");
        }
        for code in ["InvalidParameterValue", "InternalError", "ResourceInUse"] {
            assert!(!means_already_disassociated(code), "{code}");
        }
    }

    #[test]
    fn excerpt_is_bounded_and_on_one_line() {
        assert_eq!(excerpt(b"a\n  b"), "a b");
        let long = "x".repeat(500);
        assert_eq!(excerpt(long.as_bytes()).len(), BODY_EXCERPT + 3);
    }
}

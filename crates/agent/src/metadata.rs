//! The CVM instance metadata service (`http://metadata.tencentyun.com/latest/meta-data/`).
//!
//! Owns the HTTP reads of this instance's identity (`instance-id`, `local-ipv4`, `mac`, `placement/region`)
//! and of the CAM role credentials (`cam/security-credentials/...`), with short timeouts and errors that say
//! what went wrong and where. It does not decide when role credentials are refreshed or whether they are
//! acceptable (see `credentials`), and it does not resolve `"auto"` config values itself (callers do).

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;

use crate::logging::error_chain;
use crate::secret::Secret;

/// A sensible per-request timeout for the metadata service: it answers in milliseconds on a CVM, and off a
/// CVM the address does not answer at all, which should fail fast.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a metadata read failed. Messages name the URL; none ever contains a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The configured base URL is not usable.
    #[error("invalid metadata endpoint {url:?}: {problem}")]
    InvalidEndpoint {
        /// The configured value.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No connection could be made (refused, no route, DNS failure, reset).
    #[error("metadata service unreachable at {url}: is this a CVM? ({detail})")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The transport error, with its causes.
        detail: String,
    },
    /// No answer within the timeout.
    #[error("metadata service unreachable at {url}: no answer within {after:?}: is this a CVM?")]
    Timeout {
        /// The URL requested.
        url: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// An HTTP status other than 200 and 404.
    #[error("metadata service at {url} answered HTTP {status}")]
    Http {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
    },
    /// A path the typed readers need answered 404.
    #[error("metadata {url} is missing (HTTP 404)")]
    Missing {
        /// The URL requested.
        url: String,
    },
    /// The value is not what the path should hold.
    #[error("metadata {url} returned {value:?}: {problem}")]
    Invalid {
        /// The URL requested.
        url: String,
        /// The value returned (never used for credential paths).
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The CAM role credentials document could not be decoded. The detail gives the position only, never
    /// the text, because the document holds secrets.
    #[error("metadata {url} is not a valid CAM role credentials document: {detail}")]
    BadCredentials {
        /// The URL requested.
        url: String,
        /// Where decoding failed.
        detail: String,
    },
}

impl MetadataError {
    /// Whether trying again later may help (transport faults, timeouts, HTTP 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            MetadataError::Unreachable { .. } | MetadataError::Timeout { .. } => true,
            MetadataError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// A CAM role's temporary credentials, as `cam/security-credentials/<role>` returns them.
#[derive(Clone, Deserialize)]
pub struct RoleCredentials {
    /// `TmpSecretId`.
    #[serde(rename = "TmpSecretId")]
    pub tmp_secret_id: Secret,
    /// `TmpSecretKey`.
    #[serde(rename = "TmpSecretKey")]
    pub tmp_secret_key: Secret,
    /// `Token`, sent as `X-TC-Token`.
    #[serde(rename = "Token")]
    pub token: Secret,
    /// `ExpiredTime`: Unix seconds.
    #[serde(rename = "ExpiredTime")]
    pub expired_time: i64,
    /// `Expiration`: the same instant as RFC 3339 text, informational.
    #[serde(rename = "Expiration", default)]
    pub expiration: Option<String>,
    /// `Code`: `"Success"` when the credentials are usable.
    #[serde(rename = "Code", default)]
    pub code: String,
}

impl fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secret already masks; spelled out so a field added later cannot leak by derive.
        f.debug_struct("RoleCredentials")
            .field("tmp_secret_id", &self.tmp_secret_id)
            .field("tmp_secret_key", &self.tmp_secret_key)
            .field("token", &self.token)
            .field("expired_time", &self.expired_time)
            .field("expiration", &self.expiration)
            .field("code", &self.code)
            .finish()
    }
}

/// A client of the metadata service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    http: reqwest::Client,
    base: reqwest::Url,
    timeout: Duration,
}

impl MetadataClient {
    /// A client for `base_url` (e.g. `http://metadata.tencentyun.com/latest/meta-data/`); every request,
    /// connecting included, gives up after `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, MetadataError> {
        let invalid = |problem: String| MetadataError::InvalidEndpoint {
            url: base_url.to_owned(),
            problem,
        };
        let mut base = reqwest::Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("must not have a query or fragment".into()));
        }
        // Paths are joined below the base, so the base must end in '/'.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if timeout.is_zero() {
            return Err(invalid("the timeout must be more than zero".into()));
        }
        crate::tls::install_provider();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tls::client_config())
            .timeout(timeout)
            .connect_timeout(timeout)
            // The metadata service is only reachable directly from the CVM: a proxy would break it.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("havip-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("cannot build an HTTP client: {}", error_chain(&e))))?;
        Ok(Self {
            http,
            base,
            timeout,
        })
    }

    /// The base URL, ending in `/`.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The full URL of a metadata path.
    pub fn url(&self, path: &str) -> String {
        self.join(path)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| format!("{}{path}", self.base))
    }

    fn join(&self, path: &str) -> Result<reqwest::Url, MetadataError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| MetadataError::InvalidEndpoint {
                url: format!("{}{path}", self.base),
                problem: e.to_string(),
            })
    }

    /// Reads a path below the base. `Ok(None)` when the service answers 404 (unknown path, or no role
    /// bound for `cam/security-credentials/`).
    pub async fn get(&self, path: &str) -> Result<Option<String>, MetadataError> {
        let url = self.join(path)?;
        let shown = url.to_string();
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.transport_error(&shown, e))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            return Err(MetadataError::Http { url: shown, status });
        }
        let text = response
            .text()
            .await
            .map_err(|e| self.transport_error(&shown, e))?;
        Ok(Some(text))
    }

    fn transport_error(&self, url: &str, e: reqwest::Error) -> MetadataError {
        if e.is_timeout() {
            MetadataError::Timeout {
                url: url.to_owned(),
                after: self.timeout,
            }
        } else {
            MetadataError::Unreachable {
                url: url.to_owned(),
                // The URL is already in the message.
                detail: error_chain(&e.without_url()),
            }
        }
    }

    /// Reads a path that must exist and hold a non-empty value; returns it trimmed.
    async fn required(&self, path: &str) -> Result<String, MetadataError> {
        let value = self
            .get(path)
            .await?
            .ok_or_else(|| MetadataError::Missing {
                url: self.url(path),
            })?;
        let value = value.trim();
        if value.is_empty() {
            return Err(MetadataError::Invalid {
                url: self.url(path),
                value: String::new(),
                problem: "the value is empty".into(),
            });
        }
        Ok(value.to_owned())
    }

    /// This instance's id (`instance-id`), e.g. `ins-nkgrfbic`.
    pub async fn instance_id(&self) -> Result<String, MetadataError> {
        let id = self.required("instance-id").await?;
        if id.chars().any(char::is_whitespace) {
            return Err(MetadataError::Invalid {
                url: self.url("instance-id"),
                value: id,
                problem: "an instance id has no whitespace".into(),
            });
        }
        Ok(id)
    }

    /// The primary private IPv4 address of eth0 (`local-ipv4`).
    pub async fn local_ipv4(&self) -> Result<Ipv4Addr, MetadataError> {
        let value = self.required("local-ipv4").await?;
        value.parse().map_err(|_| MetadataError::Invalid {
            url: self.url("local-ipv4"),
            value,
            problem: "not an IPv4 address".into(),
        })
    }

    /// The MAC address of eth0 (`mac`), normalised to uppercase `AA:BB:CC:DD:EE:FF`.
    pub async fn mac(&self) -> Result<String, MetadataError> {
        let value = self.required("mac").await?;
        match parse_mac(&value) {
            Some(bytes) => Ok(format_mac(bytes)),
            None => Err(MetadataError::Invalid {
                url: self.url("mac"),
                value,
                problem: "not a MAC address like 52:54:00:AB:CD:EF".into(),
            }),
        }
    }

    /// The region this instance runs in (`placement/region`), e.g. `ap-guangzhou`.
    pub async fn region(&self) -> Result<String, MetadataError> {
        self.required("placement/region").await
    }

    /// The CAM role bound to this instance (`cam/security-credentials/`); `None` when no role is bound (404).
    pub async fn role_name(&self) -> Result<Option<String>, MetadataError> {
        let path = "cam/security-credentials/";
        let Some(text) = self.get(path).await? else {
            return Ok(None);
        };
        parse_role_listing(&self.url(path), text).map(Some)
    }

    /// The temporary credentials of `role` (`cam/security-credentials/<role>`); `None` on 404. The `Code`
    /// is returned as is: checking it is the caller's job.
    pub async fn role_credentials(
        &self,
        role: &str,
    ) -> Result<Option<RoleCredentials>, MetadataError> {
        if role.is_empty() || role.contains('/') || role.contains("..") {
            return Err(MetadataError::Invalid {
                url: self.url("cam/security-credentials/"),
                value: role.to_owned(),
                problem: "not a CAM role name".into(),
            });
        }
        let path = format!("cam/security-credentials/{role}");
        let Some(text) = self.get(&path).await? else {
            return Ok(None);
        };
        parse_role_credentials(&self.url(&path), &text).map(Some)
    }
}

/// The role named by a `cam/security-credentials/` listing (`url` is for the message): one role per line,
/// a CVM has at most one.
pub(crate) fn parse_role_listing(url: &str, text: String) -> Result<String, MetadataError> {
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(role) => Ok(role.to_owned()),
        None => Err(MetadataError::Invalid {
            url: url.to_owned(),
            value: text,
            problem: "the role listing is empty".into(),
        }),
    }
}

/// Parses a `cam/security-credentials/<role>` answer (`url` is for the message). The error never quotes
/// the text: it holds secrets.
pub(crate) fn parse_role_credentials(
    url: &str,
    text: &str,
) -> Result<RoleCredentials, MetadataError> {
    serde_json::from_str::<RoleCredentials>(text).map_err(|e| MetadataError::BadCredentials {
        url: url.to_owned(),
        // serde_json's message can quote the offending value; give only its kind and position.
        detail: format!(
            "{} error at line {} column {}",
            match e.classify() {
                serde_json::error::Category::Io => "I/O",
                serde_json::error::Category::Syntax => "JSON syntax",
                serde_json::error::Category::Data => "missing or mistyped field",
                serde_json::error::Category::Eof => "truncated JSON",
            },
            e.line(),
            e.column()
        ),
    })
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case, `:` or `-` separated).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let s = s.trim();
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return None;
        }
        *slot = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

/// Formats a MAC as uppercase `AA:BB:CC:DD:EE:FF`, the metadata service's spelling.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing_accepts_both_cases_and_rejects_junk() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert_eq!(
            parse_mac("52-54-00-AB-CD-EF\n"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:eg"), None);
        assert_eq!(parse_mac("525:4:00:ab:cd:ef"), None);
        assert_eq!(
            format_mac([0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            "52:54:00:AB:CD:EF"
        );
    }

    #[test]
    fn base_url_gets_a_trailing_slash_and_bad_ones_are_refused() {
        let c = MetadataClient::new(
            "http://127.0.0.1:9/latest/meta-data",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:9/latest/meta-data/");
        assert_eq!(
            c.url("instance-id"),
            "http://127.0.0.1:9/latest/meta-data/instance-id"
        );
        let err = MetadataClient::new("ftp://x/", Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("ftp://x/"), "{err}");
        assert!(MetadataClient::new("not a url", Duration::from_secs(1)).is_err());
        assert!(MetadataClient::new("http://x/", Duration::ZERO).is_err());
    }
}

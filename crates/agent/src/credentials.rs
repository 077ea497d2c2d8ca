//! Where the Tencent Cloud API keys come from, and keeping temporary ones fresh.
//!
//! Owns the credential chain (environment, then the config file, then the CVM's CAM role from the metadata
//! service), the cache of role credentials and their refresh. It logs which source is used, never a value.
//! It does not sign requests (see `tc3`), send them (see `cloud`) or check the config file's permissions
//! (see `config`, which refuses a group- or world-readable file holding a key).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{SharedClock, unix_seconds};
use crate::config::CloudConfig;
use crate::metadata::{MetadataClient, MetadataError};
use crate::secret::Secret;

/// Environment variable holding the SecretId (tccli's convention).
pub const ENV_SECRET_ID: &str = "TENCENTCLOUD_SECRET_ID";
/// Environment variable holding the SecretKey.
pub const ENV_SECRET_KEY: &str = "TENCENTCLOUD_SECRET_KEY";
/// Environment variable holding a temporary credential's token, sent as `X-TC-Token`.
pub const ENV_TOKEN: &str = "TENCENTCLOUD_TOKEN";
/// Role credentials are refreshed when this much or less of their lifetime remains (as the official SDKs do).
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// After a failed refresh, while the current role credentials are still valid, wait this long before the
/// next attempt so that every API call does not hit a struggling metadata service.
pub const REFRESH_RETRY_INTERVAL: Duration = Duration::from_secs(5);

const ROLE_PATH: &str = "cam/security-credentials/";

/// One set of API keys. `Debug` masks every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The SecretId (`AKID...`), named in the `Authorization` header.
    pub secret_id: Secret,
    /// The SecretKey, the HMAC key.
    pub secret_key: Secret,
    /// The token of temporary credentials, sent as `X-TC-Token`.
    pub token: Option<Secret>,
}

/// Where the credentials in use came from. `Display` is for logs: it names the source, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `TENCENTCLOUD_SECRET_ID` / `TENCENTCLOUD_SECRET_KEY` (and optionally `TENCENTCLOUD_TOKEN`).
    Environment,
    /// `cloud.secret_id` / `cloud.secret_key` in the config file.
    ConfigFile,
    /// The CAM role bound to this CVM, read from the metadata service.
    CvmRole {
        /// The role name.
        role: String,
    },
    /// Given directly by the program ([`CredentialProvider::fixed`]): tests and the demo.
    Provided,
    /// The CVM's CAM role, to be looked up on first use because the metadata service could not be reached
    /// at start ([`CredentialProvider::deferred_role`]).
    CvmRolePending,
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Environment => {
                write!(f, "environment ({ENV_SECRET_ID}/{ENV_SECRET_KEY})")
            }
            CredentialSource::ConfigFile => {
                f.write_str("config file (cloud.secret_id/cloud.secret_key)")
            }
            CredentialSource::CvmRole { role } => write!(f, "CVM role {role} (metadata service)"),
            CredentialSource::Provided => f.write_str("provided by the program"),
            CredentialSource::CvmRolePending => {
                f.write_str("CVM role (metadata service not reachable yet; looked up on first use)")
            }
        }
    }
}

/// Why no usable credentials could be had. No variant carries a credential value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// One half of a key pair is set, the other is not.
    #[error("{set} is set but {missing} is not: set both or neither")]
    Incomplete {
        /// The name that is set (an environment variable or a config key).
        set: &'static str,
        /// The name that is missing.
        missing: &'static str,
    },
    /// Neither the environment nor the config has keys, and the metadata service says no role is bound.
    #[error(
        "no Tencent Cloud credentials: {ENV_SECRET_ID}/{ENV_SECRET_KEY} are not set, the config has no \
         cloud.secret_id/cloud.secret_key, and no CAM role bound to this CVM ({url} answered 404)"
    )]
    NoRoleBound {
        /// The role listing URL.
        url: String,
    },
    /// Neither the environment nor the config has keys, and the role could not be looked up.
    #[error(
        "no Tencent Cloud credentials: {ENV_SECRET_ID}/{ENV_SECRET_KEY} are not set, the config has no \
         cloud.secret_id/cloud.secret_key, and the CVM role lookup failed: {0}"
    )]
    RoleLookup(MetadataError),
    /// The role is listed but its credentials path answered 404.
    #[error("no CAM role bound under the name {role}: {url} answered 404")]
    RoleNotFound {
        /// The role name.
        role: String,
        /// The credentials URL.
        url: String,
    },
    /// The credentials document's `Code` is not `Success`.
    #[error(
        "the metadata service refused credentials for CAM role {role}: Code {code:?}, expected \"Success\""
    )]
    RoleRejected {
        /// The role name.
        role: String,
        /// The `Code` returned.
        code: String,
    },
    /// The credentials document lacks a key, the key id or the token.
    #[error("the credentials of CAM role {role} lack {missing}")]
    RoleIncomplete {
        /// The role name.
        role: String,
        /// The missing field.
        missing: &'static str,
    },
    /// Fetching the role credentials failed.
    #[error("cannot fetch the credentials of CAM role {role}: {source}")]
    RoleFetch {
        /// The role name.
        role: String,
        /// What went wrong.
        source: MetadataError,
    },
}

impl CredentialError {
    /// Whether trying again may help: only metadata transport faults, timeouts and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            CredentialError::RoleLookup(e) | CredentialError::RoleFetch { source: e, .. } => {
                e.is_retryable()
            }
            _ => false,
        }
    }
}

/// Hands out the credentials to sign with. Cheap to clone; clones share the role credential cache.
#[derive(Debug, Clone)]
pub struct CredentialProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: CredentialSource,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Static(Credential),
    Role(Box<RoleState>),
    /// A role not looked up yet: the first `get` that reaches the metadata service fixes it.
    PendingRole(Box<PendingRole>),
}

#[derive(Debug)]
struct PendingRole {
    metadata: MetadataClient,
    clock: SharedClock,
    resolved: tokio::sync::OnceCell<RoleState>,
}

#[derive(Debug)]
struct RoleState {
    role: String,
    metadata: MetadataClient,
    clock: SharedClock,
    // A tokio mutex held across the refresh: concurrent callers wait for the one refresh in flight and
    // then find the fresh credentials, instead of each asking the metadata service.
    cache: tokio::sync::Mutex<Cached>,
}

#[derive(Debug)]
struct Cached {
    credential: Credential,
    /// `ExpiredTime`, Unix seconds.
    expires_at: i64,
    /// When the last refresh failed, to space out retries while the current credentials still work.
    failed_at: Option<tokio::time::Instant>,
    /// When the server last made us fetch again ([`CredentialProvider::refresh_rejected`]).
    forced_at: Option<tokio::time::Instant>,
}

impl Cached {
    fn new(fetched: Fetched) -> Self {
        Self {
            credential: fetched.credential,
            expires_at: fetched.expires_at,
            failed_at: None,
            forced_at: None,
        }
    }
}

impl CredentialProvider {
    /// Walks the chain: the environment (`env` looks a variable up, so tests need not touch the process
    /// environment), then `cloud.secret_id`/`cloud.secret_key`, then the CVM's CAM role. Role credentials
    /// are fetched once here, so a broken role fails at start-up. Logs which source is used.
    ///
    /// The environment is read before this returns; the future does not borrow `env` and is `Send`.
    pub fn resolve(
        env: &dyn Fn(&str) -> Option<String>,
        cloud: &CloudConfig,
        metadata: &MetadataClient,
        clock: SharedClock,
    ) -> impl Future<Output = Result<Self, CredentialError>> + Send + 'static {
        let from_env = static_from_env(env);
        let from_config = static_from_config(cloud);
        let metadata = metadata.clone();
        async move {
            if let Some(credential) = from_env? {
                return Ok(Self::with_static(CredentialSource::Environment, credential));
            }
            if let Some(credential) = from_config? {
                return Ok(Self::with_static(CredentialSource::ConfigFile, credential));
            }
            let role = bound_role(&metadata).await?;
            let fetched = fetch_role(&metadata, &role, &clock).await?;
            let source = CredentialSource::CvmRole { role: role.clone() };
            tracing::info!(
                source = %source,
                expires_in_s = fetched.expires_at.saturating_sub(unix_seconds(clock.now())),
                "using tencent cloud credentials"
            );
            Ok(Self {
                inner: Arc::new(Inner {
                    source,
                    kind: Kind::Role(Box::new(RoleState {
                        role,
                        metadata,
                        clock,
                        cache: tokio::sync::Mutex::new(Cached::new(fetched)),
                    })),
                }),
            })
        }
    }

    /// The CVM role, looked up on first use. For a daemon that starts while the metadata service cannot be
    /// reached: every API call until it can fails with a retryable error (the claim still binds and
    /// announces locally), and the first one that reaches it resolves the role for good.
    pub fn deferred_role(metadata: &MetadataClient, clock: SharedClock) -> Self {
        tracing::warn!("cam role credentials deferred: the metadata service is not reachable yet");
        Self {
            inner: Arc::new(Inner {
                source: CredentialSource::CvmRolePending,
                kind: Kind::PendingRole(Box::new(PendingRole {
                    metadata: metadata.clone(),
                    clock,
                    resolved: tokio::sync::OnceCell::new(),
                })),
            }),
        }
    }

    /// Fixed credentials given by the program (tests, the demo). Source: [`CredentialSource::Provided`].
    pub fn fixed(credential: Credential) -> Self {
        Self::with_static(CredentialSource::Provided, credential)
    }

    fn with_static(source: CredentialSource, credential: Credential) -> Self {
        tracing::info!(source = %source, temporary = credential.token.is_some(), "using tencent cloud credentials");
        Self {
            inner: Arc::new(Inner {
                source,
                kind: Kind::Static(credential),
            }),
        }
    }

    /// Where the credentials come from.
    pub fn source(&self) -> &CredentialSource {
        &self.inner.source
    }

    /// The credentials to sign the next request with, by the local clock: [`CredentialProvider::get_at`]
    /// with no clock offset.
    pub async fn get(&self) -> Result<Credential, CredentialError> {
        self.get_at(0).await
    }

    /// The credentials to sign the next request with. Role credentials come from the cache and are
    /// refreshed when [`REFRESH_BEFORE_EXPIRY`] or less remain; if that refresh fails while they are still
    /// valid, they are used until they expire (and the failure is logged).
    ///
    /// `clock_offset_s` is added to the local clock to get the server's (the VPC client learns it from
    /// `AuthFailure.SignatureExpire`): `ExpiredTime` is the server's time, so a host whose clock is behind
    /// would otherwise refresh too late and sign with expired credentials.
    pub async fn get_at(&self, clock_offset_s: i64) -> Result<Credential, CredentialError> {
        let state = match self.role_state().await? {
            Err(credential) => return Ok(credential.clone()),
            Ok(state) => state,
        };
        let mut cache = state.cache.lock().await;
        // Saturating: the offset comes from a server's Date header, and neither it nor `ExpiredTime` may
        // make this wrap.
        let now = unix_seconds(state.clock.now()).saturating_add(clock_offset_s);
        let remaining = cache.expires_at.saturating_sub(now);
        if remaining > REFRESH_BEFORE_EXPIRY.as_secs() as i64 {
            return Ok(cache.credential.clone());
        }
        let still_valid = remaining > 0;
        if still_valid
            && cache
                .failed_at
                .is_some_and(|t| t.elapsed() < REFRESH_RETRY_INTERVAL)
        {
            return Ok(cache.credential.clone());
        }
        match fetch_role(&state.metadata, &state.role, &state.clock).await {
            Ok(fresh) => {
                tracing::info!(
                    role = %state.role,
                    expires_in_s = fresh.expires_at.saturating_sub(now),
                    "refreshed cam role credentials"
                );
                cache.credential = fresh.credential;
                cache.expires_at = fresh.expires_at;
                cache.failed_at = None;
                Ok(cache.credential.clone())
            }
            Err(e) if still_valid => {
                tracing::warn!(
                    role = %state.role,
                    remaining_s = remaining,
                    error = %e,
                    "cannot refresh cam role credentials, using the current ones until they expire"
                );
                cache.failed_at = Some(tokio::time::Instant::now());
                Ok(cache.credential.clone())
            }
            Err(e) => Err(e),
        }
    }

    /// The server refused `rejected` as expired or invalid (`AuthFailure.TokenFailure`): fetches the role
    /// credentials again, whatever their `ExpiredTime` says. Returns whether different credentials are now
    /// cached (so one retry may succeed). Static credentials cannot be refreshed (`false`). When another
    /// caller already replaced `rejected`, nothing is fetched; forced fetches are at least
    /// [`REFRESH_RETRY_INTERVAL`] apart, so a role the server keeps refusing does not turn every API call
    /// into a metadata request.
    pub async fn refresh_rejected(&self, rejected: &Credential) -> Result<bool, CredentialError> {
        let Ok(state) = self.role_state().await? else {
            return Ok(false);
        };
        let mut cache = state.cache.lock().await;
        if cache.credential != *rejected {
            return Ok(true);
        }
        if cache
            .forced_at
            .is_some_and(|t| t.elapsed() < REFRESH_RETRY_INTERVAL)
        {
            return Ok(false);
        }
        cache.forced_at = Some(tokio::time::Instant::now());
        let fresh = fetch_role(&state.metadata, &state.role, &state.clock).await?;
        let changed = fresh.credential != *rejected;
        tracing::warn!(
            role = %state.role,
            changed,
            "the api refused the cam role token; fetched the role credentials again"
        );
        cache.credential = fresh.credential;
        cache.expires_at = fresh.expires_at;
        cache.failed_at = None;
        Ok(changed)
    }

    /// The role's state (resolving a deferred role first), or `Err` with the static credentials.
    async fn role_state(&self) -> Result<Result<&RoleState, &Credential>, CredentialError> {
        Ok(Ok(match &self.inner.kind {
            Kind::Static(credential) => return Ok(Err(credential)),
            Kind::Role(state) => state.as_ref(),
            Kind::PendingRole(pending) => {
                let PendingRole {
                    metadata,
                    clock,
                    resolved,
                } = pending.as_ref();
                resolved
                    .get_or_try_init(|| async {
                        let role = bound_role(metadata).await?;
                        let fetched = fetch_role(metadata, &role, clock).await?;
                        tracing::info!(role = %role, "cam role found: using its credentials");
                        Ok(RoleState {
                            role,
                            metadata: metadata.clone(),
                            clock: clock.clone(),
                            cache: tokio::sync::Mutex::new(Cached::new(fetched)),
                        })
                    })
                    .await?
            }
        }))
    }
}

/// Reads the environment half of the chain. `Ok(None)` when neither key variable is set.
fn static_from_env(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credential>, CredentialError> {
    // An empty or blank variable counts as unset (a common `FOO=` in unit files).
    let var = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let token = var(ENV_TOKEN);
    match (var(ENV_SECRET_ID), var(ENV_SECRET_KEY)) {
        (Some(id), Some(key)) => Ok(Some(Credential {
            secret_id: Secret::new(id),
            secret_key: Secret::new(key),
            token: token.map(Secret::new),
        })),
        (Some(_), None) => Err(CredentialError::Incomplete {
            set: ENV_SECRET_ID,
            missing: ENV_SECRET_KEY,
        }),
        (None, Some(_)) => Err(CredentialError::Incomplete {
            set: ENV_SECRET_KEY,
            missing: ENV_SECRET_ID,
        }),
        (None, None) => {
            if token.is_some() {
                tracing::warn!(
                    "{ENV_TOKEN} is set without {ENV_SECRET_ID}/{ENV_SECRET_KEY}; ignoring it"
                );
            }
            Ok(None)
        }
    }
}

/// Reads the config half of the chain. `Ok(None)` when neither key is set.
fn static_from_config(cloud: &CloudConfig) -> Result<Option<Credential>, CredentialError> {
    let non_empty = |s: &Option<Secret>| {
        s.as_ref()
            .map(|s| s.expose().trim())
            .filter(|s| !s.is_empty())
            .map(Secret::new)
    };
    match (non_empty(&cloud.secret_id), non_empty(&cloud.secret_key)) {
        (Some(secret_id), Some(secret_key)) => Ok(Some(Credential {
            secret_id,
            secret_key,
            token: None,
        })),
        (Some(_), None) => Err(CredentialError::Incomplete {
            set: "cloud.secret_id",
            missing: "cloud.secret_key",
        }),
        (None, Some(_)) => Err(CredentialError::Incomplete {
            set: "cloud.secret_key",
            missing: "cloud.secret_id",
        }),
        (None, None) => Ok(None),
    }
}

/// Role credentials as fetched: what [`Cached`] starts from.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) credential: Credential,
    /// `ExpiredTime` clamped by [`clamp_expiry`], Unix seconds.
    pub(crate) expires_at: i64,
}

/// The longest a role credential is trusted without a refresh, whatever its `ExpiredTime` says. CAM role
/// credentials last hours; a later `ExpiredTime` (a hostile or broken metadata answer, e.g. year 99999
/// or `i64::MAX`) must not pin one credential forever, nor wrap the arithmetic below.
pub const MAX_ROLE_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// `ExpiredTime` clamped to `[0, now + MAX_ROLE_CREDENTIAL_LIFETIME]` (Unix seconds): a negative one
/// counts as expired (the credential is still used, and refreshed on the next call), a far one as
/// expiring after the maximum lifetime. Pure, for tests.
pub fn clamp_expiry(expired_time: i64, now: i64) -> i64 {
    let latest = now.saturating_add(MAX_ROLE_CREDENTIAL_LIFETIME.as_secs() as i64);
    expired_time.clamp(0, latest.max(0))
}

/// The CAM role bound to this CVM, from metadata: none bound and a failed lookup are distinct errors.
async fn bound_role(metadata: &MetadataClient) -> Result<String, CredentialError> {
    match metadata.role_name().await {
        Ok(Some(role)) => Ok(role),
        Ok(None) => Err(CredentialError::NoRoleBound {
            url: metadata.url(ROLE_PATH),
        }),
        Err(e) => Err(CredentialError::RoleLookup(e)),
    }
}

async fn fetch_role(
    metadata: &MetadataClient,
    role: &str,
    clock: &SharedClock,
) -> Result<Fetched, CredentialError> {
    let path = format!("{ROLE_PATH}{role}");
    let doc = metadata
        .role_credentials(role)
        .await
        .map_err(|source| CredentialError::RoleFetch {
            role: role.to_owned(),
            source,
        })?
        .ok_or_else(|| CredentialError::RoleNotFound {
            role: role.to_owned(),
            url: metadata.url(&path),
        })?;
    role_fetched(role, doc, unix_seconds(clock.now()))
}

/// Checks a role's credential document (`Code`, the three values) and turns it into what is cached; `now`
/// is Unix seconds. Pure, so the fuzz targets ([`crate::fuzzing`]) run it.
pub(crate) fn role_fetched(
    role: &str,
    doc: crate::metadata::RoleCredentials,
    now: i64,
) -> Result<Fetched, CredentialError> {
    if doc.code != "Success" {
        return Err(CredentialError::RoleRejected {
            role: role.to_owned(),
            code: doc.code,
        });
    }
    for (value, missing) in [
        (&doc.tmp_secret_id, "TmpSecretId"),
        (&doc.tmp_secret_key, "TmpSecretKey"),
        (&doc.token, "Token"),
    ] {
        if value.expose().trim().is_empty() {
            return Err(CredentialError::RoleIncomplete {
                role: role.to_owned(),
                missing,
            });
        }
    }
    Ok(Fetched {
        credential: Credential {
            secret_id: doc.tmp_secret_id,
            secret_key: doc.tmp_secret_key,
            token: Some(doc.token),
        },
        expires_at: clamp_expiry(doc.expired_time, now),
    })
}

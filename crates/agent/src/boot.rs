//! The one start-up path of every front door (`run`, `migrate-havip`, `check`, `status`): config →
//! metadata client → this node's identity → credentials → VPC client, with the TLS provider installed once.
//!
//! Owns the policy for a metadata service that is down, written once:
//! - *Identity*: `"auto"` values need it, so without it there is no identity: a transient failure
//!   ([`BootError::Identity`]): `run` exits for systemd to restart it, `migrate-havip` exits 1 (Sentinel
//!   retries), `check` and `status` report it. Explicit values need no metadata at all.
//! - *Credentials*: when the CAM role cannot be looked up because the metadata service does not answer, the
//!   client starts with the role *deferred* (looked up again on every API call until it answers), so the
//!   local part of a claim never waits for it. When there are no credentials at all (no environment, no
//!   config keys, no role bound), there is no client: the caller runs local-only and reports
//!   [`Cloud::problem`].
//!
//! It does not open the interface (that needs capabilities, checked by the callers that bind).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::cloud::{ApiObserver, VpcClient};
use crate::config::{Config, ConfigError};
use crate::credentials::{CredentialError, CredentialProvider};

use crate::metadata::{MetadataClient, MetadataError};
use crate::node::{Identity, IdentityError, resolve_identity};

/// How long one metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a front door could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The config file is missing or invalid (permanent).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `cloud.metadata_endpoint` is not usable (permanent).
    #[error("cloud.metadata_endpoint: {0}")]
    Metadata(MetadataError),
    /// This node's identity needs the metadata service, which did not answer (transient).
    #[error("resolving this node's identity: {0}")]
    Identity(MetadataError),
    /// `"auto"` cannot be resolved on this host (e.g. no ENI for `node.interface` in ENI mode): permanent,
    /// the message says what to write.
    #[error("{0}")]
    Node(String),
}

impl BootError {
    /// True when a retry may succeed (the metadata service was down).
    pub fn is_transient(&self) -> bool {
        matches!(self, BootError::Identity(e) if e.is_retryable())
    }
}

/// What every front door starts from.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The validated config.
    pub cfg: Arc<Config>,
    /// The metadata client (for the CAM role).
    pub metadata: MetadataClient,
    /// This node.
    pub identity: Identity,
    /// The clock the signer and the credentials use.
    pub clock: SharedClock,
}

/// The cloud side of [`Boot`].
#[derive(Debug)]
pub struct Cloud {
    /// The VPC client, or None when there are no credentials or the client cannot be built (local-only).
    pub client: Option<VpcClient>,
    /// Why there is no client, or why its credentials are deferred.
    pub problem: Option<CloudProblem>,
}

/// What is wrong with the cloud side.
#[derive(Debug, thiserror::Error)]
pub enum CloudProblem {
    /// No credentials (permanent), or the CAM role deferred because the metadata service is down
    /// (transient: the client exists and looks the role up again on every call).
    #[error("credentials: {0}")]
    Credentials(#[from] CredentialError),
    /// The client cannot be built from `[cloud]` (permanent).
    #[error(transparent)]
    Client(#[from] crate::cloud::CloudError),
}

impl CloudProblem {
    /// True when a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, CloudProblem::Credentials(e) if e.is_retryable())
    }
}

/// Loads the config at `path` and resolves this node's identity.
pub async fn boot(path: &Path) -> Result<Boot, BootError> {
    let cfg = Config::load(path)?;
    boot_with(Arc::new(cfg)).await
}

/// [`boot`] from an already loaded config.
pub async fn boot_with(cfg: Arc<Config>) -> Result<Boot, BootError> {
    crate::tls::install_provider();
    let metadata = MetadataClient::new(&cfg.cloud.metadata_endpoint, METADATA_TIMEOUT)
        .map_err(BootError::Metadata)?;
    let identity = resolve_identity(&cfg, &metadata)
        .await
        .map_err(|e| match e {
            IdentityError::Metadata(m) => BootError::Identity(m),
            IdentityError::Config(c) => BootError::Node(c),
        })?;
    Ok(Boot {
        cfg,
        metadata,
        identity,
        clock: crate::clock::system(),
    })
}

impl Boot {
    /// Resolves the credentials (`env` looks up environment variables) and builds the VPC client, following
    /// the policy in the module docs. `observer` receives every API call's latency and error code.
    pub async fn cloud(
        &self,
        env: &(dyn Fn(&str) -> Option<String> + Send + Sync),
        observer: Option<Arc<dyn ApiObserver>>,
    ) -> Cloud {
        let resolved =
            CredentialProvider::resolve(env, &self.cfg.cloud, &self.metadata, self.clock.clone())
                .await;
        let (creds, mut problem) = match resolved {
            Ok(c) => {
                tracing::info!(source = %c.source(), "cloud credentials resolved");
                (Some(c), None)
            }
            Err(e) if e.is_retryable() => (
                Some(CredentialProvider::deferred_role(
                    &self.metadata,
                    self.clock.clone(),
                )),
                Some(CloudProblem::from(e)),
            ),
            Err(e) => (None, Some(CloudProblem::from(e))),
        };
        let client = match creds.map(|c| VpcClient::new(&self.cfg.cloud, c, self.clock.clone())) {
            Some(Ok(client)) => Some(match &observer {
                Some(o) => client.with_observer(o.clone()),
                None => client,
            }),
            Some(Err(e)) => {
                problem = Some(CloudProblem::from(e));
                None
            }
            None => None,
        };
        Cloud { client, problem }
    }
}

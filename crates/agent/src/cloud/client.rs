//! `VpcClient`: signed POSTs to the VPC API with retries bounded by the caller's deadline, a per-action
//! rate limit shared by the whole process, batching of concurrent HAVIP calls, and a warm connection.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, DATE, HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::ApiObserver;
use super::batch::{Coalescer, Waiter, answer_all, answer_each, latest_deadline};
use super::error::{CloudError, excerpt, means_already_disassociated};
use super::limit::RateLimiter;
use super::types::{
    AssociationItem, AssociationRequest, DescribeHaVipsRequest, DescribeHaVipsResponse,
    DescribeVpcTaskResultRequest, DescribeVpcTaskResultResponse, HaVip, InstanceType, TaskStatus,
};
use crate::clock::{SharedClock, unix_seconds};
use crate::config::CloudConfig;
use crate::credentials::{Credential, CredentialProvider};
use crate::logging::error_chain;
use crate::tc3::{self, SigningInput};

/// The VPC API version sent as `X-TC-Version`.
pub const API_VERSION: &str = "2017-03-12";
/// The service name in the TC3 credential scope.
pub const SERVICE: &str = "vpc";
/// The Content-Type sent, and signed: exactly what the official SDKs send (no charset).
const CONTENT_TYPE_JSON: &str = "application/json";
/// `DescribeHaVips` answers at most this many items per request.
const PAGE_LIMIT: usize = 100;
/// An existing (HAVIP, instance) pair: the association the caller wants is already there.
const DUPLICATED_ASSOCIATION: &str = "InvalidParameterValue.DuplicatedHaVipAssociations";
/// The request's timestamp is more than 5 minutes off the server's clock.
const SIGNATURE_EXPIRE: &str = "AuthFailure.SignatureExpire";
/// The temporary credential's token is invalid, e.g. expired by the server's clock.
const TOKEN_FAILURE: &str = "AuthFailure.TokenFailure";
/// `AssociateHaVipInstance` / `DisassociateHaVipInstance` take at most this many items.
const MAX_ASSOCIATION_ITEMS: usize = 10;
/// Idle pooled connections are kept this long at least: longer than any keep-warm interval, so the
/// connection the keep-warm task refreshes is the one a failover's first call finds.
const MIN_POOL_IDLE: Duration = Duration::from_secs(90);
/// How long past their deadline batched callers wait for the batch's answer (see `wait_for`).
const RESULT_GRACE: Duration = Duration::from_millis(100);
/// TCP keepalive probes on pooled connections: a NAT or firewall that drops an idle flow is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Exponential backoff with full jitter: before retry `n` (0-based) the client sleeps a uniformly random
/// time in `[0, min(cap, base * 2^n)]`, and never past the caller's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first retry's upper bound.
    pub base: Duration,
    /// The largest upper bound.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the sleep before retry `retry` (0-based).
    pub fn max_delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random sleep before retry `retry`: full jitter over `[0, max_delay(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let max = self.max_delay(retry).as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rand::random_range(0..=max))
    }
}

/// A client of the VPC API. Cheap to clone; clones share the HTTP connection pool, the clock-offset
/// correction learned from `AuthFailure.SignatureExpire`, the per-action rate limiter and the batching
/// queues. Build one per process: the rate limit is only shared by clones.
#[derive(Clone)]
pub struct VpcClient {
    inner: Arc<Inner>,
    observer: Option<Arc<dyn ApiObserver>>,
    retry: RetryPolicy,
}

struct Inner {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    /// The `Host` header reqwest sends for `endpoint` (with `:port` when not the scheme's default): signed.
    host: String,
    region: String,
    timeout: Duration,
    creds: CredentialProvider,
    clock: SharedClock,
    /// Seconds to add to the local clock to get the server's, learned from a `Date` header.
    clock_offset: AtomicI64,
    /// `cloud.rate_limit` requests per second per action, for every attempt of every caller.
    limiter: RateLimiter,
    /// Concurrent `describe_havip` callers, coalesced into one `DescribeHaVips{HaVipIds}`.
    describes: Coalescer<String, Result<HaVip, CloudError>>,
    /// Concurrent `associate` callers, coalesced into one `AssociateHaVipInstance`.
    associates: Coalescer<Pair, Result<(), CloudError>>,
    /// Concurrent `disassociate` callers, coalesced into one `DisassociateHaVipInstance`.
    disassociates: Coalescer<Pair, Result<(), CloudError>>,
    /// HAVIPs whose last request failed transiently, or that were in a batch that did: their calls skip the
    /// queues and go alone, so a HAVIP the API hangs on holds up no other. A success clears the mark.
    suspects: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// One (HAVIP, instance) item of an association change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    havip_id: String,
    instance_id: String,
    ty: InstanceType,
}

/// The keep-warm task started by [`VpcClient::spawn_keep_warm`]; stops when dropped.
#[derive(Debug)]
pub struct KeepWarm(Option<tokio::task::JoinHandle<()>>);

impl Drop for KeepWarm {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for VpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VpcClient")
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("region", &self.inner.region)
            .field("timeout", &self.inner.timeout)
            .field("credentials", self.inner.creds.source())
            .field("clock_offset_s", &self.clock_offset())
            .field("retry", &self.retry)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// One attempt's failure, with the server's clock when the answer had a `Date` header.
struct AttemptError {
    error: CloudError,
    server_time: Option<i64>,
}

impl From<CloudError> for AttemptError {
    fn from(error: CloudError) -> Self {
        Self {
            error,
            server_time: None,
        }
    }
}

impl VpcClient {
    /// A client for `cloud.endpoint` in `cloud.region`, each request timing out after `cloud.timeout` (or
    /// earlier, at the caller's deadline). Honours the `HTTPS_PROXY`/`NO_PROXY` environment.
    pub fn new(
        cloud: &CloudConfig,
        creds: CredentialProvider,
        clock: SharedClock,
    ) -> Result<Self, CloudError> {
        let invalid = |key: &'static str, problem: String| CloudError::Config { key, problem };
        if cloud.endpoint.is_none() && !crate::config::is_region(cloud.region.trim()) {
            return Err(invalid(
                "cloud.region",
                format!(
                    "{:?} is not a region like \"ap-guangzhou\" (it names the default endpoint's host)",
                    cloud.region
                ),
            ));
        }
        let endpoint_text = cloud.endpoint_url();
        let endpoint = reqwest::Url::parse(&endpoint_text).map_err(|e| {
            invalid(
                "cloud.endpoint",
                format!("{endpoint_text:?} is not a URL: {e}"),
            )
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(invalid(
                "cloud.endpoint",
                format!("{endpoint_text:?} must be an http:// or https:// URL"),
            ));
        }
        // TC3 signs the canonical URI "/" and an empty query: any other path or a query would be sent but
        // not signed as sent.
        if endpoint.path() != "/" || endpoint.query().is_some() || endpoint.fragment().is_some() {
            return Err(invalid(
                "cloud.endpoint",
                format!(
                    "{endpoint_text:?} must have no path or query (like \"https://vpc.tencentcloudapi.com\")"
                ),
            ));
        }
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => {
                return Err(invalid(
                    "cloud.endpoint",
                    format!("{endpoint_text:?} has no host"),
                ));
            }
        };
        if cloud.region.trim().is_empty() {
            return Err(invalid("cloud.region", "is empty".into()));
        }
        let timeout = cloud.timeout.get();
        if timeout.is_zero() {
            return Err(invalid("cloud.timeout", "must be more than zero".into()));
        }
        if cloud.rate_limit == 0 {
            return Err(invalid("cloud.rate_limit", "must be more than zero".into()));
        }
        // An http:// endpoint is accepted (labs, the fake); `check::exposure_warnings` says so at start.
        crate::tls::install_provider();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tls::client_config())
            .connect_timeout(timeout)
            // HTTP/1.1 like the official SDKs: the signed `host` is then literally the Host header sent.
            .http1_only()
            // A redirect would re-send (or turn into a GET) a request signed for another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("havip-agent/", env!("CARGO_PKG_VERSION")))
            // The warm path: keep idle connections longer than the keep-warm interval, and probe them.
            .pool_idle_timeout(MIN_POOL_IDLE.max(cloud.keep_warm.get() * 3))
            .tcp_keepalive(TCP_KEEPALIVE)
            .build()
            .map_err(|e| {
                invalid(
                    "cloud.endpoint",
                    format!("cannot build an HTTP client: {}", error_chain(&e)),
                )
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoint,
                host,
                region: cloud.region.trim().to_owned(),
                timeout,
                creds,
                clock,
                clock_offset: AtomicI64::new(0),
                limiter: RateLimiter::new(cloud.rate_limit),
                describes: Coalescer::new(PAGE_LIMIT),
                associates: Coalescer::new(MAX_ASSOCIATION_ITEMS),
                disassociates: Coalescer::new(MAX_ASSOCIATION_ITEMS),
                suspects: Default::default(),
            }),
            observer: None,
            retry: RetryPolicy::default(),
        })
    }

    /// Reports every HTTP attempt to `obs` (metrics).
    pub fn with_observer(mut self, obs: Arc<dyn ApiObserver>) -> Self {
        self.observer = Some(obs);
        self
    }

    /// Replaces the retry backoff (tests shrink it).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        self.inner.endpoint.as_str()
    }

    /// The region sent as `X-TC-Region`.
    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// The credentials in use.
    pub fn credentials(&self) -> &CredentialProvider {
        &self.inner.creds
    }

    /// Seconds added to the local clock when signing, learned from `AuthFailure.SignatureExpire` answers.
    pub fn clock_offset(&self) -> i64 {
        self.inner.clock_offset.load(Ordering::Relaxed)
    }

    /// `DescribeHaVips` for one HAVIP. [`CloudError::NotFound`] when the API does not know it.
    ///
    /// Concurrent callers (several HAVIP tasks, several claims) share requests: while one is in flight,
    /// later callers queue, and the queue goes out as one `DescribeHaVips{HaVipIds}` when it returns.
    pub async fn describe_havip(
        &self,
        havip_id: &str,
        deadline: Instant,
    ) -> Result<HaVip, CloudError> {
        if self.is_suspect(havip_id) {
            return self.describe_one(havip_id, deadline).await;
        }
        let (rx, drive) = self.inner.describes.push(havip_id.to_owned(), deadline);
        if drive {
            let this = self.clone();
            tokio::spawn(async move {
                while let Some(batch) = this.inner.describes.next_batch() {
                    this.describe_batch(batch).await;
                }
            });
        }
        self.wait_for("DescribeHaVips", rx, deadline).await
    }

    /// Waits for a batched call's result, at most until the caller's deadline.
    async fn wait_for<T>(
        &self,
        action: &'static str,
        rx: tokio::sync::oneshot::Receiver<Result<T, CloudError>>,
        deadline: Instant,
    ) -> Result<T, CloudError> {
        let started = Instant::now();
        // The batch's own call stops at the deadline too and then reports its last real error (which
        // says more than "timeout", and decides retry or not); give it a moment to arrive.
        match tokio::time::timeout_at(deadline + RESULT_GRACE, rx).await {
            Ok(Ok(result)) => result,
            // The driver was dropped with the runtime: no answer will come.
            Ok(Err(_)) => Err(CloudError::DeadlineExceeded {
                action: action.into(),
            }),
            Err(_) => Err(CloudError::Timeout {
                action: action.into(),
                endpoint: self.endpoint().into(),
                after: started.elapsed(),
            }),
        }
    }

    /// Sends one batch of `describe_havip` callers and answers each. The batch holds the queue for one
    /// attempt at most ([`VpcClient::batch_window`]); when it fails (one hanging or refused HAVIP fails
    /// the whole request), each caller is asked again on its own ([`VpcClient::each_alone`]).
    async fn describe_batch(&self, batch: Vec<Waiter<String, Result<HaVip, CloudError>>>) {
        let mut ids: Vec<String> = batch.iter().map(|w| w.item.clone()).collect();
        ids.sort();
        ids.dedup();
        let window = self.batch_window(&batch);
        let error = if let [id] = ids.as_slice() {
            match self.describe_one(id, window).await {
                Err(e) if e.is_retryable() => e,
                out => return answer_all(batch, out),
            }
        } else {
            match self.describe_havips(&ids, window).await {
                Ok(found) => {
                    let answers: Vec<_> = batch
                        .iter()
                        .map(|w| {
                            found
                                .iter()
                                .find(|h| h.havip_id == w.item)
                                .cloned()
                                .ok_or_else(|| self.not_found(&w.item, None))
                        })
                        .collect();
                    return answer_each(batch, answers);
                }
                Err(e) => {
                    self.note_batch(ids.iter().map(String::as_str), &e);
                    e
                }
            }
        };
        tracing::debug!(ids = ids.len(), error = %error, "batched describe failed, asking each havip alone");
        self.each_alone(batch, window, error, |this, id, deadline| async move {
            this.describe_one(&id, deadline).await
        });
    }

    /// Until when a batch may hold its queue: one attempt (`cloud.timeout`), or less when every caller's
    /// deadline is nearer. A later caller waits behind a hanging request that long at most.
    fn batch_window<I, O>(&self, batch: &[Waiter<I, O>]) -> Instant {
        latest_deadline(batch).min(Instant::now() + self.inner.timeout)
    }

    fn is_suspect(&self, havip_id: &str) -> bool {
        let suspects = self
            .inner
            .suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        suspects.contains(havip_id)
    }

    /// Marks a HAVIP by the result of a request naming it alone: a transient failure makes it a suspect
    /// (asked alone from now on), anything else (an answer, even a refusal) clears it.
    fn note<T>(&self, havip_id: &str, result: &Result<T, CloudError>) {
        let mut suspects = self
            .inner
            .suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match result {
            Err(e) if e.is_retryable() => {
                if suspects.insert(havip_id.to_owned()) {
                    tracing::debug!(havip = havip_id, error = %e, "havip's requests failed: asking for it alone");
                }
            }
            _ => {
                suspects.remove(havip_id);
            }
        }
    }

    /// After a batch failed transiently, any of its HAVIPs may be the cause: each becomes a suspect until
    /// its own request succeeds.
    fn note_batch<'a>(&self, havip_ids: impl Iterator<Item = &'a str>, error: &CloudError) {
        if error.is_retryable() {
            let mut suspects = self
                .inner
                .suspects
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            suspects.extend(havip_ids.map(str::to_owned));
        }
    }

    /// Answers each caller of a batch that failed with `error` by its own call, `one`, off the driver (so
    /// the queue moves on), each answered as soon as its own call ends: a HAVIP that hangs or is refused
    /// holds up and fails no other. A caller whose deadline the batch's window already reached gets
    /// `error`. After a transient error the calls start after one backoff delay.
    fn each_alone<I, T, F, Fut>(
        &self,
        batch: Vec<Waiter<I, Result<T, CloudError>>>,
        window: Instant,
        error: CloudError,
        one: F,
    ) where
        I: Clone + Send + 'static,
        T: Send + 'static,
        F: Fn(Self, I, Instant) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<T, CloudError>> + Send + 'static,
    {
        let pause = if error.is_retryable() {
            self.retry.delay(0)
        } else {
            Duration::ZERO
        };
        for w in batch {
            if w.deadline <= window {
                w.answer(Err(error.clone()));
                continue;
            }
            let (this, one) = (self.clone(), one.clone());
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                let out = one(this, w.item.clone(), w.deadline).await;
                w.answer(out);
            });
        }
    }

    fn not_found(&self, havip_id: &str, request_id: Option<String>) -> CloudError {
        CloudError::NotFound {
            havip_id: havip_id.to_owned(),
            region: self.inner.region.clone(),
            request_id,
        }
    }

    /// `DescribeHaVips` for one HAVIP, unbatched.
    async fn describe_one(&self, havip_id: &str, deadline: Instant) -> Result<HaVip, CloudError> {
        let result = self.describe_havips(&[havip_id.to_owned()], deadline).await;
        self.note(havip_id, &result);
        let found = match result {
            Ok(found) => found,
            Err(CloudError::Api {
                code, request_id, ..
            }) if code == "ResourceNotFound" || code.starts_with("ResourceNotFound.") => {
                return Err(self.not_found(havip_id, Some(request_id)));
            }
            Err(e) => return Err(e),
        };
        found
            .into_iter()
            .find(|h| h.havip_id == havip_id)
            .ok_or_else(|| self.not_found(havip_id, None))
    }

    /// `DescribeHaVips` for the given HAVIPs (in requests of at most 100 ids); every HAVIP of the region
    /// when `ids` is empty (paged). HAVIPs the API does not know are simply absent from the result.
    pub async fn describe_havips(
        &self,
        ids: &[String],
        deadline: Instant,
    ) -> Result<Vec<HaVip>, CloudError> {
        let mut out = Vec::new();
        if ids.is_empty() {
            let mut offset = 0usize;
            loop {
                let (page, got, total) = self.describe_page(&[], offset, deadline).await?;
                out.extend(page);
                offset += got;
                // A short page is the last one, whatever TotalCount says.
                if got < PAGE_LIMIT || total.is_none_or(|t| offset as u64 >= t) {
                    break;
                }
            }
        } else {
            for chunk in ids.chunks(PAGE_LIMIT) {
                let (page, _, _) = self.describe_page(chunk, 0, deadline).await?;
                out.extend(page);
            }
        }
        Ok(out)
    }

    /// One `DescribeHaVips` request: the HAVIPs, how many items the page had, and `TotalCount`.
    async fn describe_page(
        &self,
        ids: &[String],
        offset: usize,
        deadline: Instant,
    ) -> Result<(Vec<HaVip>, usize, Option<u64>), CloudError> {
        let action = "DescribeHaVips";
        let request = DescribeHaVipsRequest {
            ha_vip_ids: ids,
            offset: offset as u64,
            limit: PAGE_LIMIT as u64,
        };
        let response: DescribeHaVipsResponse = self.call(action, &request, deadline).await?;
        Ok(havip_page(response))
    }

    /// `AssociateHaVipInstance`: adds the instance to the HAVIP's drift range. Already being there
    /// (`InvalidParameterValue.DuplicatedHaVipAssociations`) counts as success. Concurrent callers are
    /// batched (at most 10 items per request, see [`VpcClient::describe_havip`]).
    pub async fn associate(
        &self,
        havip_id: &str,
        instance_id: &str,
        ty: InstanceType,
        deadline: Instant,
    ) -> Result<(), CloudError> {
        self.change(true, havip_id, instance_id, ty, deadline).await
    }

    /// `DisassociateHaVipInstance`: removes the instance from the HAVIP's drift range. A pair that is
    /// already gone counts as success. Concurrent callers are batched like [`VpcClient::associate`].
    pub async fn disassociate(
        &self,
        havip_id: &str,
        instance_id: &str,
        ty: InstanceType,
        deadline: Instant,
    ) -> Result<(), CloudError> {
        self.change(false, havip_id, instance_id, ty, deadline)
            .await
    }

    async fn change(
        &self,
        add: bool,
        havip_id: &str,
        instance_id: &str,
        ty: InstanceType,
        deadline: Instant,
    ) -> Result<(), CloudError> {
        let pair = Pair {
            havip_id: havip_id.to_owned(),
            instance_id: instance_id.to_owned(),
            ty,
        };
        let (action, queue) = if add {
            ("AssociateHaVipInstance", &self.inner.associates)
        } else {
            ("DisassociateHaVipInstance", &self.inner.disassociates)
        };
        if self.is_suspect(havip_id) {
            return self.change_alone(action, add, pair, deadline).await;
        }
        let (rx, drive) = queue.push(pair, deadline);
        if drive {
            let this = self.clone();
            tokio::spawn(async move {
                let queue = if add {
                    &this.inner.associates
                } else {
                    &this.inner.disassociates
                };
                while let Some(batch) = queue.next_batch() {
                    this.change_batch(action, add, batch).await;
                }
            });
        }
        self.wait_for(action, rx, deadline).await
    }

    /// Sends one batch of association changes and answers each caller. The API is all or nothing: when
    /// a batch fails (one pair already there, one HAVIP gone or hanging), each item is sent on its own
    /// ([`VpcClient::each_alone`]) so that one item's error does not fail the others. Like a describe batch,
    /// it holds the queue for one attempt at most.
    async fn change_batch(
        &self,
        action: &'static str,
        add: bool,
        batch: Vec<Waiter<Pair, Result<(), CloudError>>>,
    ) {
        let mut pairs: Vec<Pair> = Vec::new();
        for w in &batch {
            if !pairs.contains(&w.item) {
                pairs.push(w.item.clone());
            }
        }
        let window = self.batch_window(&batch);
        let result = self.association(action, &pairs, window).await;
        if let Err(e) = &result {
            self.note_batch(pairs.iter().map(|p| p.havip_id.as_str()), e);
        }
        let error = match result {
            Ok(()) => return answer_all(batch, Ok(())),
            Err(e) if pairs.len() > 1 || e.is_retryable() => e,
            Err(e) => return answer_all(batch, settle(add, &pairs[0], Err(e))),
        };
        tracing::debug!(action, items = pairs.len(), error = %error, "batched association change failed, sending each item alone");
        self.each_alone(
            batch,
            window,
            error,
            move |this, pair, deadline| async move {
                this.change_alone(action, add, pair, deadline).await
            },
        );
    }

    /// One association change on its own, unbatched, with "already as wanted" settled as success.
    async fn change_alone(
        &self,
        action: &'static str,
        add: bool,
        pair: Pair,
        deadline: Instant,
    ) -> Result<(), CloudError> {
        let result = self
            .association(action, std::slice::from_ref(&pair), deadline)
            .await;
        self.note(&pair.havip_id, &result);
        settle(add, &pair, result)
    }

    async fn association(
        &self,
        action: &'static str,
        pairs: &[Pair],
        deadline: Instant,
    ) -> Result<(), CloudError> {
        let items: Vec<AssociationItem<'_>> = pairs
            .iter()
            .map(|p| AssociationItem {
                ha_vip_id: &p.havip_id,
                instance_id: &p.instance_id,
                instance_type: p.ty.as_api_str(),
            })
            .collect();
        let request = AssociationRequest {
            ha_vip_association_set: &items,
        };
        let _: serde::de::IgnoredAny = self.call(action, &request, deadline).await?;
        Ok(())
    }

    /// Starts a task that touches the endpoint every `interval` (none when `interval` is zero), so that
    /// the pooled connection stays open through hours without API calls and a failover's first call does
    /// not pay for DNS, TCP and TLS. Stops when the returned guard is dropped.
    ///
    /// The touch is a bare `GET /` of the endpoint: the API answers it at once with an error envelope
    /// (no action). It is unsigned and names no action, so it needs no credentials and cannot count
    /// against the per-action rate limit (which the API keeps per account and action); it is not an API
    /// call, so it is not reported to the observer either.
    pub fn spawn_keep_warm(&self, interval: Duration) -> KeepWarm {
        if interval.is_zero() {
            return KeepWarm(None);
        }
        let this = self.clone();
        KeepWarm(Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.touch().await;
            }
        })))
    }

    /// One keep-warm touch (see [`VpcClient::spawn_keep_warm`]).
    pub async fn touch(&self) {
        let inner = &*self.inner;
        let result = inner
            .http
            .get(inner.endpoint.clone())
            .timeout(inner.timeout)
            .send()
            .await;
        match result {
            // Read the body so the connection goes back to the pool.
            Ok(response) => {
                let _ = response.bytes().await;
            }
            Err(e) => {
                tracing::debug!(error = %error_chain(&e.without_url()), "keep-warm touch of the vpc endpoint failed")
            }
        }
    }

    /// `DescribeVpcTaskResult`: the status of an asynchronous action (its `RequestId` is the task id).
    pub async fn describe_task_result(
        &self,
        task_id: &str,
        deadline: Instant,
    ) -> Result<TaskStatus, CloudError> {
        let action = "DescribeVpcTaskResult";
        let response: DescribeVpcTaskResultResponse = self
            .call(action, &DescribeVpcTaskResultRequest { task_id }, deadline)
            .await?;
        task_status(response)
    }

    /// One action, retried per the retry classes until `deadline`. Every attempt first waits for a slot of
    /// the per-action rate limit (within the deadline). `AuthFailure.SignatureExpire` corrects the clock
    /// and `AuthFailure.TokenFailure` refetches role credentials, each once per call, then retries.
    pub(super) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: &'static str,
        request: &Req,
        deadline: Instant,
    ) -> Result<Resp, CloudError> {
        // Serialised once: the bytes hashed are the bytes sent, on every attempt.
        let body = serde_json::to_vec(request).map_err(|e| CloudError::Decode {
            action: action.into(),
            detail: format!("cannot encode the request: {e}"),
        })?;
        let mut retries = 0u32;
        let mut skew_corrected = false;
        let mut token_refreshed = false;
        let mut last_error: Option<CloudError> = None;
        loop {
            let out_of_time = |last_error: Option<CloudError>| {
                // A backoff sleep can end a hair past the deadline: the last real error says more.
                last_error.unwrap_or_else(|| CloudError::DeadlineExceeded {
                    action: action.into(),
                })
            };
            if deadline <= Instant::now() || !self.inner.limiter.acquire(action, deadline).await {
                if last_error.is_none() {
                    tracing::debug!(
                        action,
                        "no rate-limit slot for the vpc api call before its deadline"
                    );
                }
                return Err(out_of_time(last_error));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(out_of_time(last_error));
            }
            let timeout = left.min(self.inner.timeout);
            let creds = self
                .inner
                .creds
                .get_at(self.clock_offset())
                .await
                .map_err(CloudError::Credentials);
            let attempt = match creds {
                Ok(creds) => self
                    .attempt(action, &body, timeout, &creds)
                    .await
                    .map_err(|e| (e, Some(creds))),
                Err(e) => Err((AttemptError::from(e), None)),
            };
            let (failure, used) = match attempt {
                Ok(value) => return decode_typed(action, value),
                Err(failure) => failure,
            };
            let error = failure.error;
            if timeout < self.inner.timeout && matches!(error, CloudError::Timeout { .. }) {
                // The attempt ran out of the caller's time, not of `cloud.timeout`: an answer before it
                // (an API code, an HTTP status) says more about what is wrong and whether to retry.
                return Err(last_error.unwrap_or(error));
            }
            if error.code() == Some(TOKEN_FAILURE) && !token_refreshed {
                // The token expired by the server's clock (or was revoked): fetch the role credentials
                // once more and retry once. Static credentials cannot be refreshed: returned as is.
                token_refreshed = true;
                if let Some(used) = &used {
                    match self.inner.creds.refresh_rejected(used).await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(action, error = %e, "cannot refetch the cam role credentials after a token failure")
                        }
                    }
                }
                return Err(error);
            }
            if error.code() == Some(SIGNATURE_EXPIRE) && !skew_corrected {
                // Retry once with the server's clock; a second SignatureExpire is returned as is.
                if let Some(server) = failure.server_time {
                    skew_corrected = true;
                    self.correct_clock(server);
                    continue;
                }
                tracing::warn!(
                    action,
                    "signature expired but the answer has no usable Date header"
                );
                return Err(error);
            }
            if !error.is_retryable() {
                return Err(error);
            }
            let delay = self.retry.delay(retries);
            retries += 1;
            if Instant::now() + delay >= deadline {
                tracing::debug!(action, retries, error = %error, "vpc api call out of time");
                return Err(error);
            }
            tracing::debug!(
                action,
                retry = retries,
                delay_ms = delay.as_millis() as u64,
                error = %error,
                "retrying vpc api call"
            );
            tokio::time::sleep(delay).await;
            last_error = Some(error);
        }
    }

    fn correct_clock(&self, server: i64) {
        let local = unix_seconds(self.inner.clock.now());
        let offset = server - local;
        let previous = self.inner.clock_offset.swap(offset, Ordering::Relaxed);
        tracing::warn!(
            offset_s = offset,
            previous_offset_s = previous,
            "local clock is off the tencent cloud clock, signing with the server's time"
        );
    }

    /// One signed HTTP attempt. Returns `Response` (without `Error`) on success.
    async fn attempt(
        &self,
        action: &'static str,
        body: &[u8],
        timeout: Duration,
        creds: &Credential,
    ) -> Result<serde_json::Value, AttemptError> {
        let inner = &*self.inner;
        let timestamp =
            unix_seconds(inner.clock.now()) + inner.clock_offset.load(Ordering::Relaxed);
        let signature = tc3::sign(
            &SigningInput {
                method: "POST",
                host: &inner.host,
                content_type: CONTENT_TYPE_JSON,
                payload: body,
                service: SERVICE,
                action,
                timestamp,
                sign_action: false,
            },
            creds.secret_id.expose(),
            &creds.secret_key,
        );
        let headers = self.headers(action, timestamp, &signature.authorization, creds)?;

        let started = Instant::now();
        let result = self.send(action, headers, body.to_vec(), timeout).await;
        let elapsed = started.elapsed();
        let label = result.as_ref().err().map(|e| e.error.label());
        if let Some(obs) = &self.observer {
            obs.observe(action, elapsed, label.as_deref());
        }
        match &result {
            Ok(_) => tracing::debug!(
                action,
                elapsed_ms = elapsed.as_millis() as u64,
                "vpc api call ok"
            ),
            Err(e) => tracing::debug!(
                action,
                elapsed_ms = elapsed.as_millis() as u64,
                error = %e.error,
                "vpc api call failed"
            ),
        }
        result
    }

    fn headers(
        &self,
        action: &'static str,
        timestamp: i64,
        authorization: &str,
        creds: &crate::credentials::Credential,
    ) -> Result<HeaderMap, CloudError> {
        // Never echo a value here: it may hold the SecretId or the token.
        let value = |v: &str, what: &'static str| {
            HeaderValue::from_str(v).map_err(|_| CloudError::Config {
                key: what,
                problem: "contains characters that cannot be sent in an HTTP header".into(),
            })
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            value(authorization, "credentials (SecretId)")?,
        );
        // The Content-Type sent is exactly the one signed.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
        headers.insert("X-TC-Action", HeaderValue::from_static(action));
        headers.insert("X-TC-Timestamp", HeaderValue::from(timestamp));
        headers.insert("X-TC-Version", HeaderValue::from_static(API_VERSION));
        headers.insert("X-TC-Region", value(&self.inner.region, "cloud.region")?);
        if let Some(token) = &creds.token {
            let mut v = value(token.expose(), "credentials (token)")?;
            v.set_sensitive(true);
            headers.insert("X-TC-Token", v);
        }
        if let Some(auth) = headers.get_mut(AUTHORIZATION) {
            auth.set_sensitive(true);
        }
        Ok(headers)
    }

    async fn send(
        &self,
        action: &'static str,
        headers: HeaderMap,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<serde_json::Value, AttemptError> {
        let inner = &*self.inner;
        let endpoint = inner.endpoint.as_str();
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                CloudError::Timeout {
                    action: action.into(),
                    endpoint: endpoint.into(),
                    after: timeout,
                }
            } else {
                CloudError::Transport {
                    action: action.into(),
                    endpoint: endpoint.into(),
                    detail: error_chain(&e.without_url()),
                }
            }
        };
        let response = inner
            .http
            .post(inner.endpoint.clone())
            .headers(headers)
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let server_time = response
            .headers()
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        let bytes = response.bytes().await.map_err(transport)?;
        decode_body(action, endpoint, status, &bytes)
            .map_err(|error| AttemptError { error, server_time })
    }
}

/// One `DescribeHaVips` page: the HAVIPs, the number of items (with those skipped for lack of a
/// `HaVipId`) and `TotalCount`.
pub(crate) fn havip_page(response: DescribeHaVipsResponse) -> (Vec<HaVip>, usize, Option<u64>) {
    let items = response.ha_vip_set.unwrap_or_default();
    let count = items.len();
    let havips: Vec<HaVip> = items.into_iter().filter_map(|w| w.into_havip()).collect();
    if havips.len() != count {
        tracing::warn!(
            action = "DescribeHaVips",
            skipped = count - havips.len(),
            "ignoring havip items without a HaVipId"
        );
    }
    (havips, count, response.total_count)
}

/// A `DescribeVpcTaskResult` answer's status; an answer without `Status` is an error.
pub(crate) fn task_status(
    response: DescribeVpcTaskResultResponse,
) -> Result<TaskStatus, CloudError> {
    let status = response.status.ok_or_else(|| CloudError::Decode {
        action: "DescribeVpcTaskResult".into(),
        detail: "the answer has no Status".into(),
    })?;
    Ok(TaskStatus::from_wire(&status, response.output))
}

/// `Response` (already checked by [`decode_body`]) as an action's typed answer.
pub(crate) fn decode_typed<Resp: DeserializeOwned>(
    action: &str,
    value: serde_json::Value,
) -> Result<Resp, CloudError> {
    serde_json::from_value(value).map_err(|e| CloudError::Decode {
        action: action.into(),
        detail: e.to_string(),
    })
}

/// Reads one answer of the VPC API: HTTP status and body to `Response` (without `Error`), or the error it
/// means. Failure exactly when the status is not 200 or `Response.Error` is present. Pure, so the fuzz
/// targets ([`crate::fuzzing`]) run the same code.
pub(crate) fn decode_body(
    action: &str,
    endpoint: &str,
    status: u16,
    bytes: &[u8],
) -> Result<serde_json::Value, CloudError> {
    if status != 200 {
        return Err(CloudError::Http {
            action: action.into(),
            status,
            endpoint: endpoint.into(),
            body: excerpt(bytes),
        });
    }
    let decode = |detail: String| CloudError::Decode {
        action: action.into(),
        detail,
    };
    let mut envelope: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| decode(format!("not JSON ({e}): {}", excerpt(bytes))))?;
    let Some(response) = envelope.get_mut("Response").map(serde_json::Value::take) else {
        return Err(decode(format!(
            "no \"Response\" object: {}",
            excerpt(bytes)
        )));
    };
    if !response.is_object() {
        return Err(decode("\"Response\" is not an object".into()));
    }
    // Failure exactly when Response.Error is present.
    if let Some(error) = response.get("Error").filter(|e| !e.is_null()) {
        let text = |v: Option<&serde_json::Value>| {
            v.and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let code = text(error.get("Code"));
        if code.is_empty() {
            return Err(decode(format!(
                "Response.Error has no Code: {}",
                excerpt(bytes)
            )));
        }
        return Err(CloudError::Api {
            action: action.into(),
            code,
            message: text(error.get("Message")),
            request_id: text(response.get("RequestId")),
        });
    }
    Ok(response)
}

/// One item's result of an association change, with the answers that mean "already as wanted" turned
/// into success.
fn settle(add: bool, pair: &Pair, result: Result<(), CloudError>) -> Result<(), CloudError> {
    match result {
        Err(CloudError::Api {
            code, request_id, ..
        }) if add && code == DUPLICATED_ASSOCIATION => {
            tracing::info!(
                havip = %pair.havip_id,
                instance = %pair.instance_id,
                request_id,
                "instance already in the havip drift range"
            );
            Ok(())
        }
        // Only for disassociate: the pair (or the HAVIP) is already gone, which is what was wanted. For
        // associate a missing HAVIP is a real failure.
        Err(CloudError::Api {
            code, request_id, ..
        }) if !add && means_already_disassociated(&code) => {
            tracing::info!(
                havip = %pair.havip_id,
                instance = %pair.instance_id,
                request_id,
                code,
                "instance already out of the havip drift range"
            );
            Ok(())
        }
        other => other,
    }
}

/// RFC 9110's IMF-fixdate as a chrono format (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub const HTTP_DATE: &str = "%a, %d %b %Y %H:%M:%S GMT";

/// Parses an HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110's IMF-fixdate) to Unix seconds.
pub(crate) fn parse_http_date(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s.trim(), HTTP_DATE) {
        return Some(t.and_utc().timestamp());
    }
    chrono::DateTime::parse_from_rfc2822(s.trim())
        .ok()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_parsed() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Mon, 25 Feb 2019 16:44:25 GMT"),
            Some(1_551_113_065)
        );
        assert_eq!(
            parse_http_date("Mon, 25 Feb 2019 16:44:25 +0000"),
            Some(1_551_113_065)
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn backoff_grows_exponentially_to_the_cap_with_full_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_delay(0), Duration::from_millis(50));
        assert_eq!(p.max_delay(1), Duration::from_millis(100));
        assert_eq!(p.max_delay(4), Duration::from_millis(800));
        assert_eq!(p.max_delay(5), Duration::from_secs(1));
        assert_eq!(p.max_delay(u32::MAX), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..200).map(|_| p.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(
            delays.iter().any(|d| *d < Duration::from_millis(200))
                && delays.iter().any(|d| *d > Duration::from_millis(200)),
            "delays are spread over the whole range"
        );
    }
}

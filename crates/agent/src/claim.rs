//! Claim and release: the one step that moves a HAVIP to this node or away from it.
//!
//! Shared by `migrate-havip` (one shot) and the daemon (on every decision), so both behave the same. Owns the
//! order of the claim steps, the confirm loop, the cloud fallback, the exclusive-scope narrowing and the
//! per-HAVIP lock. It does not decide *whether* to claim (see `reconcile`), nor how bytes reach the cloud
//! (`cloud`) or the kernel (`net`).
//!
//! Claim, per `reference/tencentcloud.md` ("a HAVIP moves by GARP; the API sets where it may go"):
//! 1. bind the VIP on the interface (netlink) — local, instant, and harmless before the cloud agrees;
//! 2. make sure this instance is in the drift range (`DescribeHaVips`, then `AssociateHaVipInstance` only if
//!    it is missing) — skipped when the caller already knows it is in range, so the first GARP is not delayed
//!    by an API round trip, and given at most a second otherwise (an API outage must not hold the GARP back);
//! 3. announce with gratuitous ARP, first round at once, the rest spread over `announce.spread`;
//! 4. confirm with `DescribeHaVips` that the holder is this node (`InstanceId` in CVM mode,
//!    `NetworkInterfaceId` in ENI mode: [`HaVip::held_by`]), re-announcing with backoff until the
//!    deadline;
//! 5. with `scope = "exclusive"`, remove the other instances from the drift range once confirmed.
//!
//! If the cloud cannot be reached or refuses, steps 1 and 3 still happen (the local bind is what clients on
//! the same L2 segment need), and the outcome says the move was not confirmed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{info, warn};

use crate::cloud::{CloudError, HaVip, VpcClient};
use crate::config::{AnnounceConfig, HavipConfig, InstanceType, Scope};
use crate::net::{Change, LocalNet, NetError, announce_burst_with};

/// One step of a claim, reported as it happens (for logs, metrics and the demo's timeline).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The VIP is bound on the interface (`already` if it was bound before).
    Bound {
        /// It was bound before this claim.
        already: bool,
    },
    /// This instance was already in the drift range (or drift-range limiting is off).
    InRange,
    /// `AssociateHaVipInstance` added this instance to the drift range.
    Associated,
    /// A round of gratuitous ARP went out.
    Announced {
        /// Frames sent by this claim so far.
        frames: u32,
    },
    /// `DescribeHaVips` shows this instance as the holder.
    Confirmed,
    /// The cloud could not be used; the local bind and announce still happened.
    CloudFailed {
        /// The error, as text.
        error: String,
    },
    /// Exclusive scope: these instances were removed from the drift range.
    Narrowed {
        /// The removed instance ids.
        removed: Vec<String>,
    },
}

/// A step with the time it happened.
#[derive(Debug, Clone)]
pub struct StepEvent {
    /// The HAVIP.
    pub havip_id: String,
    /// Monotonic time.
    pub at: Instant,
    /// Wall-clock time.
    pub wall: SystemTime,
    /// What happened.
    pub step: Step,
}

/// Receives claim steps. Must not block.
pub type Progress = Arc<dyn Fn(&StepEvent) + Send + Sync>;

/// How a claim ended. Local failures are errors ([`ClaimError`]); cloud failures are reported here because
/// the local part still succeeded.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    /// The VIP was already bound before the claim.
    pub already_bound: bool,
    /// Nothing had to change: bound, in range and the cloud already named this instance.
    pub already_held: bool,
    /// `AssociateHaVipInstance` was called and succeeded.
    pub associated: bool,
    /// Gratuitous ARP frames sent.
    pub frames: u32,
    /// The cloud confirmed this instance as the holder.
    pub confirmed: bool,
    /// Instances removed from the drift range (exclusive scope).
    pub narrowed: Vec<String>,
    /// The last cloud error, if the cloud part did not fully succeed.
    pub cloud_error: Option<CloudError>,
}

/// A claim that could not do its local part.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Binding or announcing failed.
    #[error("{havip}: {source}")]
    Net {
        /// The HAVIP.
        havip: String,
        /// The netlink or packet-socket error.
        #[source]
        source: NetError,
    },
    /// The per-HAVIP lock could not be taken (in time). Retrying later may work.
    #[error("{havip}: {message}")]
    Lock {
        /// The HAVIP.
        havip: String,
        /// What went wrong.
        message: String,
    },
    /// The lock directory or file cannot be created or opened (`claim.lock_dir` missing, not writable):
    /// a deployment problem that retrying does not fix.
    #[error("{havip}: {message}")]
    LockSetup {
        /// The HAVIP.
        havip: String,
        /// What went wrong, naming the path and `claim.lock_dir`.
        message: String,
    },
}

impl ClaimError {
    /// True when retrying cannot help: a missing capability or interface, or an unusable lock directory.
    pub fn is_permanent(&self) -> bool {
        match self {
            ClaimError::Net { source, .. } => source.is_permanent(),
            ClaimError::Lock { .. } => false,
            ClaimError::LockSetup { .. } => true,
        }
    }
}

/// What a claim does when the lock directory cannot be used at all ([`ClaimError::LockSetup`]: missing and
/// not creatable, not writable, immutable). A lock held by someone else is always waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPolicy {
    /// Fail the claim (`migrate-havip`: exit 2 tells the operator, and Sentinel does not retry in vain).
    Required,
    /// Claim without the lock, with a warning (the daemon): the lock only keeps this host's own claims and
    /// releases apart, and `migrate-havip` cannot act while the directory is unusable, so nothing can
    /// interleave; a failover must not wait for a directory on tmpfs.
    BestEffort,
}

/// Options of one claim.
#[derive(Clone)]
pub struct ClaimOptions {
    /// Stop confirming at this time.
    pub deadline: Instant,
    /// The caller knows this instance is in the drift range (skip the check before the first GARP).
    pub known_in_range: bool,
    /// Where steps are reported.
    pub progress: Option<Progress>,
}

/// Carries out claims and releases for this node.
#[derive(Clone)]
pub struct Claimer {
    cloud: Option<VpcClient>,
    net: Arc<dyn LocalNet>,
    instance_id: String,
    instance_type: InstanceType,
    announce: AnnounceConfig,
    cloud_timeout: Duration,
    locks: Option<(PathBuf, LockPolicy)>,
}

impl std::fmt::Debug for Claimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimer")
            .field("net", &self.net)
            .field("instance_id", &self.instance_id)
            .field("cloud", &self.cloud.is_some())
            .finish()
    }
}

/// The first confirm check comes this long after the first GARP: the VPC needs a moment to see it.
const FIRST_CONFIRM_AFTER: Duration = Duration::from_millis(100);
/// The drift-range check before the first GARP may take at most this long (never more than
/// `cloud.timeout`). When the API is slow or unreachable the claim announces anyway rather than hold the
/// GARP back for the whole timeout: a GARP from an instance outside the range is ignored by the VPC, and the
/// confirm loop then associates and announces again.
const PRE_ANNOUNCE_CHECK: Duration = Duration::from_millis(300);
/// How long a release waits for the per-HAVIP lock before it goes ahead without it.
pub const RELEASE_LOCK_WAIT: Duration = Duration::from_millis(500);
/// The confirm backoff doubles up to this.
const MAX_CONFIRM_BACKOFF: Duration = Duration::from_secs(2);

impl Claimer {
    /// A claimer for this node. `cloud` is None when no API is to be used at all.
    pub fn new(
        cloud: Option<VpcClient>,
        net: Arc<dyn LocalNet>,
        instance_id: impl Into<String>,
        instance_type: InstanceType,
        announce: AnnounceConfig,
        cloud_timeout: Duration,
    ) -> Self {
        Self {
            cloud,
            net,
            instance_id: instance_id.into(),
            instance_type,
            announce,
            cloud_timeout,
            locks: None,
        }
    }

    /// Takes the per-HAVIP lock in `dir` (`claim.lock_dir`) inside every claim and release, so that
    /// `migrate-havip` calls and the daemon on one host never interleave. Without it (tests), no lock.
    /// `policy` says what a claim does when the directory itself is unusable.
    pub fn with_locks(mut self, dir: impl Into<PathBuf>, policy: LockPolicy) -> Self {
        self.locks = Some((dir.into(), policy));
        self
    }

    async fn lock(&self, havip_id: &str, until: Instant) -> Result<Option<HavipLock>, ClaimError> {
        let Some((dir, policy)) = &self.locks else {
            return Ok(None);
        };
        match HavipLock::acquire(dir, havip_id, until).await {
            Ok(lock) => Ok(Some(lock)),
            Err(e @ ClaimError::LockSetup { .. }) if *policy == LockPolicy::BestEffort => {
                warn!(havip = %havip_id, error = %e, "claiming without the lock: the lock directory is unusable (fix claim.lock_dir; migrate-havip cannot act until then)");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The local network this claimer binds on.
    pub fn net(&self) -> &Arc<dyn LocalNet> {
        &self.net
    }

    /// The cloud client, if any.
    pub fn cloud(&self) -> Option<&VpcClient> {
        self.cloud.as_ref()
    }

    /// This node's instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// This node's kind of drift-range entry (`node.instance_type`).
    pub fn instance_type(&self) -> InstanceType {
        self.instance_type
    }

    /// Whether the cloud names this node as the holder, by the one holder rule ([`HaVip::held_by`]): the
    /// CVM in CVM mode, the ENI in ENI mode.
    pub fn holds(&self, h: &HaVip) -> bool {
        h.held_by(self.instance_type, &self.instance_id)
    }

    /// Whether this instance may move the HAVIP by GARP (in range, or drift-range limiting off).
    pub fn may_move(&self, h: &HaVip) -> bool {
        h.accepts_garp_from(&self.instance_id)
    }

    /// A short deadline for one API step that must not hold up the local part for long.
    fn step_deadline(&self, overall: Instant) -> Instant {
        overall.min(Instant::now() + self.cloud_timeout)
    }

    fn emit(&self, opts: &ClaimOptions, havip: &HavipConfig, step: Step) {
        if let Some(p) = &opts.progress {
            p(&StepEvent {
                havip_id: havip.havip_id.clone(),
                at: Instant::now(),
                wall: SystemTime::now(),
                step,
            });
        }
    }

    /// Makes this node the holder of `havip`. See the module docs for the steps.
    pub async fn claim(
        &self,
        havip: &HavipConfig,
        opts: ClaimOptions,
    ) -> Result<ClaimOutcome, ClaimError> {
        let id = havip.havip_id.as_str();
        let net_err = |source| ClaimError::Net {
            havip: id.to_owned(),
            source,
        };
        let mut out = ClaimOutcome::default();
        let _lock = self.lock(id, opts.deadline).await?;

        // Step 1: bind. Local and instant; the address does nothing on the VPC until the GARP counts.
        let change = self.net.bind(havip.vip).await.map_err(net_err)?;
        out.already_bound = change == Change::AlreadyDone;
        self.emit(
            &opts,
            havip,
            Step::Bound {
                already: out.already_bound,
            },
        );

        // Step 2: the drift range. A repeated claim (already bound) asks first, so it can be a true no-op.
        if let Some(cloud) = &self.cloud
            && (!opts.known_in_range || out.already_bound)
        {
            let check_deadline = self
                .step_deadline(opts.deadline)
                .min(Instant::now() + PRE_ANNOUNCE_CHECK);
            match cloud.describe_havip(id, check_deadline).await {
                Ok(h) => {
                    let may_move = self.may_move(&h);
                    let holder_is_me = self.holds(&h);
                    if may_move && out.already_bound && holder_is_me {
                        self.emit(&opts, havip, Step::InRange);
                        out.already_held = true;
                        out.confirmed = true;
                        self.narrow_if_exclusive(havip, &h, &opts, &mut out).await;
                        return Ok(out);
                    }
                    if may_move {
                        self.emit(&opts, havip, Step::InRange);
                    } else {
                        self.associate(havip, &opts, &mut out).await;
                    }
                }
                Err(e) => self.cloud_failed(havip, &opts, &mut out, e),
            }
        }

        // Step 3: announce. The burst runs beside the confirm loop, inside this future (never a detached
        // task): when the claim is aborted, its announcements stop with it.
        let sent = AtomicU32::new(0);
        let burst_done = AtomicBool::new(false);
        let burst = async {
            let r = self.announce_burst(havip, &opts, &sent).await;
            burst_done.store(true, Ordering::Relaxed);
            r
        };
        let Some(cloud) = &self.cloud else {
            burst.await.map_err(net_err)?;
            out.frames = sent.load(Ordering::Relaxed);
            return Ok(out);
        };

        // Step 4: confirm, re-announcing with backoff until the cloud names this instance.
        let (confirmed_view, burst_result) = {
            let confirm = self.confirm(cloud, havip, &opts, &sent, &burst_done, &mut out);
            tokio::pin!(burst, confirm);
            let mut burst_result = None;
            let view = loop {
                tokio::select! {
                    r = &mut burst, if burst_result.is_none() => burst_result = Some(r),
                    view = &mut confirm => break view,
                }
            };
            if burst_result.is_none() && matches!(view, Ok(None)) {
                // Not confirmed: the burst's remaining rounds still go out (they may yet move it).
                burst_result = Some(burst.await);
            }
            // Confirmed with the burst still running: its remaining rounds are dropped with it here.
            (view, burst_result)
        };
        let confirmed_view = confirmed_view.map_err(net_err)?;
        if let Some(r) = burst_result {
            r.map_err(net_err)?;
        }
        out.frames = sent.load(Ordering::Relaxed);
        if let Some(h) = &confirmed_view {
            self.narrow_if_exclusive(havip, h, &opts, &mut out).await;
        }
        Ok(out)
    }

    /// Step 4: asks the cloud with backoff until it names this instance (returns that view) or the deadline
    /// passes (None). Once the initial burst is over, each unconfirmed answer is followed by another round.
    async fn confirm(
        &self,
        cloud: &VpcClient,
        havip: &HavipConfig,
        opts: &ClaimOptions,
        sent: &AtomicU32,
        burst_done: &AtomicBool,
        out: &mut ClaimOutcome,
    ) -> Result<Option<HaVip>, NetError> {
        let id = havip.havip_id.as_str();
        let mut backoff = FIRST_CONFIRM_AFTER;
        loop {
            let now = Instant::now();
            if now >= opts.deadline {
                return Ok(None);
            }
            tokio::time::sleep(backoff.min(opts.deadline - now)).await;
            if Instant::now() >= opts.deadline {
                // No time left for a request: asking now would only replace the last real cloud error
                // (the one the operator needs) with "deadline passed".
                return Ok(None);
            }
            backoff = (backoff * 2).min(MAX_CONFIRM_BACKOFF);
            match cloud
                .describe_havip(id, self.step_deadline(opts.deadline))
                .await
            {
                Ok(h) => {
                    out.cloud_error = None;
                    if self.holds(&h) {
                        out.confirmed = true;
                        self.emit(opts, havip, Step::Confirmed);
                        return Ok(Some(h));
                    }
                    if !self.may_move(&h) {
                        // Someone narrowed the range, or the first attempt failed: add this instance (again).
                        self.associate(havip, opts, out).await;
                    }
                }
                Err(e) => {
                    let permanent = !e.is_retryable();
                    self.cloud_failed(havip, opts, out, e);
                    if permanent {
                        return Ok(None);
                    }
                }
            }
            // Not confirmed yet: once the initial burst is over, announce again.
            if burst_done.load(Ordering::Relaxed) {
                let frames = self.net.announce_round(havip.vip.addr).await?;
                let total = sent.fetch_add(frames, Ordering::Relaxed) + frames;
                self.emit(opts, havip, Step::Announced { frames: total });
            }
        }
    }

    /// The initial GARP burst, counting frames into `sent` and reporting each round.
    async fn announce_burst(
        &self,
        havip: &HavipConfig,
        opts: &ClaimOptions,
        sent: &AtomicU32,
    ) -> Result<u32, NetError> {
        let in_burst = AtomicU32::new(0);
        let report = |burst_total: u32| {
            let delta = burst_total - in_burst.swap(burst_total, Ordering::Relaxed);
            let total = sent.fetch_add(delta, Ordering::Relaxed) + delta;
            self.emit(opts, havip, Step::Announced { frames: total });
        };
        announce_burst_with(
            self.net.as_ref(),
            havip.vip.addr,
            self.announce.burst,
            self.announce.spread.get(),
            &report,
        )
        .await
    }

    async fn associate(
        &self,
        havip: &HavipConfig,
        opts: &ClaimOptions,
        out: &mut ClaimOutcome,
    ) -> bool {
        let Some(cloud) = &self.cloud else {
            return false;
        };
        let deadline = self.step_deadline(opts.deadline);
        match cloud
            .associate(
                &havip.havip_id,
                &self.instance_id,
                self.instance_type,
                deadline,
            )
            .await
        {
            Ok(()) => {
                info!(havip = %havip.havip_id, instance = %self.instance_id, "added this instance to the drift range");
                out.associated = true;
                self.emit(opts, havip, Step::Associated);
                true
            }
            Err(e) => {
                self.cloud_failed(havip, opts, out, e);
                false
            }
        }
    }

    fn cloud_failed(
        &self,
        havip: &HavipConfig,
        opts: &ClaimOptions,
        out: &mut ClaimOutcome,
        e: CloudError,
    ) {
        warn!(
            havip = %havip.havip_id,
            error = %e,
            "cloud api failed: the vip is bound and announced locally, but the drift range and the move are not confirmed"
        );
        self.emit(
            opts,
            havip,
            Step::CloudFailed {
                error: e.to_string(),
            },
        );
        // Keep the cause: a request that never left because time ran out says less than the error before it.
        if !(matches!(e, CloudError::DeadlineExceeded { .. }) && out.cloud_error.is_some()) {
            out.cloud_error = Some(e);
        }
    }

    async fn narrow_if_exclusive(
        &self,
        havip: &HavipConfig,
        h: &HaVip,
        opts: &ClaimOptions,
        out: &mut ClaimOutcome,
    ) {
        if havip.scope != Scope::Exclusive {
            return;
        }
        let Some(cloud) = &self.cloud else { return };
        let others: Vec<_> = h
            .associations
            .iter()
            .filter(|a| a.instance_id != self.instance_id)
            .collect();
        for a in others {
            let ty = if a.instance_type.eq_ignore_ascii_case("ENI") {
                InstanceType::Eni
            } else {
                InstanceType::Cvm
            };
            let deadline = self.step_deadline(opts.deadline);
            match cloud
                .disassociate(&havip.havip_id, &a.instance_id, ty, deadline)
                .await
            {
                Ok(()) => out.narrowed.push(a.instance_id.clone()),
                Err(e) => {
                    warn!(havip = %havip.havip_id, instance = %a.instance_id, error = %e, "could not remove an instance from the drift range");
                    out.cloud_error = Some(e);
                }
            }
        }
        if !out.narrowed.is_empty() {
            info!(havip = %havip.havip_id, removed = ?out.narrowed, "exclusive scope: drift range narrowed to this instance");
            self.emit(
                opts,
                havip,
                Step::Narrowed {
                    removed: out.narrowed.clone(),
                },
            );
        }
    }

    /// Removes the VIP from the interface if it is there. Needs no API call. Waits at most
    /// [`RELEASE_LOCK_WAIT`] for the lock, then releases without it: giving the VIP up is always safe, and a
    /// stale holder must not keep it because a claim elsewhere on this host is slow.
    pub async fn release(&self, havip: &HavipConfig) -> Result<Change, ClaimError> {
        let _lock = self
            .lock(&havip.havip_id, Instant::now() + RELEASE_LOCK_WAIT)
            .await
            .inspect_err(
                |e| warn!(havip = %havip.havip_id, error = %e, "releasing without the lock"),
            )
            .ok();
        self.net
            .unbind(havip.vip)
            .await
            .map_err(|source| ClaimError::Net {
                havip: havip.havip_id.clone(),
                source,
            })
    }
}

/// Mode of a lock directory this process creates: group-writable (the daemon and `migrate-havip` run as
/// Sentinel's user share it) with the sticky bit, so nobody removes or replaces a file someone else owns.
/// The packaged directory (`deploy/havip-agent.tmpfile`) is 3770: the same plus setgid.
pub const LOCK_DIR_MODE: u32 = 0o1770;
/// Mode of a lock or pause-ledger file this process creates.
pub const LOCK_FILE_MODE: u32 = 0o640;

/// Creates `dir` (and its parents) if missing; a directory this call creates gets [`LOCK_DIR_MODE`]
/// whatever the umask. An existing directory is left as it is.
pub(crate) fn create_lock_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // Set after creating: the umask would strip the group bits, and mkdir ignores the sticky bit on
        // some systems. Created 0700 first so the directory is never open to the group without the bit.
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(LOCK_DIR_MODE)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` without following a symlink (`O_NOFOLLOW`; std adds `O_CLOEXEC`): read-only, or with
/// `create` for writing, creating it with [`LOCK_FILE_MODE`]. A symlink at `path` is refused with an error
/// saying so (and its target is never touched), whether or not the link's target exists.
pub(crate) fn open_no_follow(path: &Path, create: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if create {
        o.write(true)
            .create(true)
            .truncate(false)
            .mode(LOCK_FILE_MODE);
    } else {
        o.read(true);
    }
    o.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::other(format!(
                "{} is a symbolic link: refusing to follow it (a link planted in the lock directory could \
                 point anywhere); remove it",
                path.display()
            ))
        } else {
            e
        }
    })
}

/// An exclusive lock on one HAVIP, held while a claim or release runs, so that concurrent `migrate-havip`
/// calls (three Sentinels call at once) and the daemon do not interleave. Released on drop.
#[derive(Debug)]
pub struct HavipLock {
    _file: File,
    path: PathBuf,
}

impl HavipLock {
    /// Takes the lock `dir/<havip_id>.lock`, waiting until `deadline`.
    pub async fn acquire(
        dir: &Path,
        havip_id: &str,
        deadline: Instant,
    ) -> Result<HavipLock, ClaimError> {
        let lock_err = |message: String| ClaimError::Lock {
            havip: havip_id.to_owned(),
            message,
        };
        let setup_err = |message: String| ClaimError::LockSetup {
            havip: havip_id.to_owned(),
            message,
        };
        let path = dir.join(format!("{havip_id}.lock"));
        // flock works on a read-only descriptor: open an existing lock file read-only, so that a file the
        // daemon (root) created also works for migrate-havip run as Sentinel's user. Never through a symlink:
        // in a directory others can write, a planted link would make root create or open any file.
        let file = match open_no_follow(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_lock_dir(dir).map_err(|e| {
                    setup_err(format!(
                        "cannot create lock directory {} ({e}): set claim.lock_dir to a writable directory",
                        dir.display()
                    ))
                })?;
                open_no_follow(&path, true).map_err(|e| {
                    setup_err(format!(
                        "cannot create lock file {}: {e} (claim.lock_dir must be writable)",
                        path.display()
                    ))
                })?
            }
            Err(e) => {
                return Err(setup_err(format!(
                    "cannot open lock file {}: {e} (claim.lock_dir)",
                    path.display()
                )));
            }
        };
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(HavipLock { _file: file, path });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(lock_err(format!("cannot lock {}: {err}", path.display())));
            }
            if Instant::now() >= deadline {
                return Err(lock_err(format!(
                    "timed out waiting for the lock {} (another claim or release is running)",
                    path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Guards against a local user turning root's lock file into a write to any file via a planted symlink.
    #[tokio::test]
    async fn a_symlink_planted_at_the_lock_path_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("havip-x.lock")).unwrap();
        // A dangling link too: creating through it would make a file wherever it points.
        let dangling = outside.path().join("made-by-root");
        std::os::unix::fs::symlink(&dangling, dir.path().join("havip-y.lock")).unwrap();

        for id in ["havip-x", "havip-y"] {
            let err = HavipLock::acquire(dir.path(), id, Instant::now())
                .await
                .expect_err("a symlink must be refused");
            let text = err.to_string();
            assert!(
                text.contains("symbolic link") && text.contains(&format!("{id}.lock")),
                "{text}"
            );
            assert!(err.is_permanent(), "{text}");
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !dangling.exists(),
            "nothing created through the dangling link"
        );
    }

    #[tokio::test]
    async fn a_lock_directory_it_creates_is_sticky_when_group_writable_and_files_are_not_world_writable()
     {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("run").join("havip-agent");
        let lock = HavipLock::acquire(&dir, "havip-1", Instant::now())
            .await
            .unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, LOCK_DIR_MODE, "dir mode {mode:o}");
        assert!(
            mode & 0o020 == 0 || mode & 0o1000 != 0,
            "group-writable needs the sticky bit"
        );
        let file_mode = std::fs::metadata(lock.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(file_mode & 0o022, 0, "lock file mode {file_mode:o}");
        drop(lock);
        // An existing lock file is opened again (read-only) and locked.
        HavipLock::acquire(&dir, "havip-1", Instant::now())
            .await
            .unwrap();
    }
}

//! The daemon's control socket: where `migrate-havip`, run by Sentinel without any privilege, asks the
//! running daemon to look again instead of acting itself.
//!
//! Owns the socket's creation (bound under a temporary name, given mode 0660 and its group, then renamed
//! over the configured path; a stale socket is replaced only if it is a socket nobody listens on, never a
//! symlink or a file), the line protocol, its bounds (request size, read timeout, connection cap, a
//! deadline for every answer, shutdown never waits for a client) and the client side used by
//! `migrate-havip`. It does not decide or act: a request is a wake-up, never an order. It names a master
//! and nothing else (no address, no force): the daemon re-samples its Sentinels for that master (one
//! re-sample at a time per master, however many requests arrive), its own HAVIP task decides from what they
//! say, and the answer reports what the daemon then sees, once settled or at the deadline.
//!
//! Protocol: one request line, one answer line, UTF-8, `\n`-terminated, at most [`MAX_REQUEST`] bytes.
//! - `reconfig <master>`: from Sentinel's client-reconfig-script (the master may have changed);
//! - `notify <master> <event>`: from its notification-script (a reachability event such as `+sdown`);
//! - `ping`: is the daemon listening (changes nothing; `migrate-havip --dry-run` uses it).
//!
//! The answer is `<outcome> <message>`, the outcome one of [`Outcome`]'s words.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::sentinel::watcher::Sampler;
use crate::status::StatusHandle;

/// The socket's file name in `claim.lock_dir` unless `agent.control_socket` names another path.
pub const SOCKET_NAME: &str = "control.sock";
/// Where the daemon listens by default: in its runtime directory (the default `claim.lock_dir`), which the
/// havip-agent group may enter.
pub const DEFAULT_SOCKET: &str = "/run/havip-agent/control.sock";
/// The socket's group unless `agent.control_group` says otherwise.
pub const DEFAULT_GROUP: &str = "havip-agent";
/// The longest request line, newline included. Real requests are well under 200 bytes.
pub const MAX_REQUEST: usize = 256;
/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Clients served at once; more get `busy` and are closed. Sentinel runs at most 16 scripts at a time.
pub const MAX_CONNECTIONS: usize = 32;
/// A Unix socket path must fit `sun_path` (108 bytes with its terminating NUL), and [`bind`] first binds
/// a temporary name up to 13 bytes longer (`.<name>.<pid>.tmp`) in the same directory.
const PATH_MAX: usize = 107 - 13;
/// How often a waiting request looks at the daemon's state again.
const JUDGE_EVERY: Duration = Duration::from_millis(25);

/// Checks a configured socket path: absolute, and short enough for a Unix socket.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    if path.as_os_str().len() > PATH_MAX {
        return Err(format!(
            "{} is {} bytes long; the control socket's path may have at most {PATH_MAX}",
            path.display(),
            path.as_os_str().len()
        ));
    }
    if path.file_name().is_none() {
        return Err(format!("{} names no file", path.display()));
    }
    Ok(())
}

/// How long the daemon works on one request before it answers with what it has (`working` if unsettled):
/// a claim's own deadline and a little more, always well inside the 60 s after which Sentinel kills a script.
pub fn answer_deadline(cfg: &Config) -> Duration {
    (cfg.claim.deadline.get() + Duration::from_secs(5)).min(Duration::from_secs(45))
}

/// How long `migrate-havip` waits for the answer: the daemon's deadline and a margin.
pub fn client_timeout(cfg: &Config) -> Duration {
    answer_deadline(cfg) + Duration::from_secs(5)
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Sentinel's client-reconfig-script: master `0` may have changed.
    Reconfig(String),
    /// Its notification-script: a reachability event for a master.
    Notify {
        /// The master.
        master: String,
        /// The event, e.g. `+sdown`.
        event: String,
    },
    /// Is anybody there.
    Ping,
}

impl Request {
    /// The request line (without its newline).
    pub fn line(&self) -> String {
        match self {
            Request::Reconfig(m) => format!("reconfig {m}"),
            Request::Notify { master, event } => format!("notify {master} {event}"),
            Request::Ping => "ping".to_owned(),
        }
    }

    fn master(&self) -> Option<&str> {
        match self {
            Request::Reconfig(m) | Request::Notify { master: m, .. } => Some(m),
            Request::Ping => None,
        }
    }
}

/// Parses one request line (without its newline). The error says what is wrong, quoting at most a short
/// prefix of what was sent.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let words: Vec<&str> = line.split(' ').collect();
    let master = |m: &str| -> Result<String, String> {
        if m.is_empty() || m.len() > 128 || m.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!("{:?} is not a Sentinel master name", short(m)))
        } else {
            Ok(m.to_owned())
        }
    };
    match words.as_slice() {
        ["ping"] => Ok(Request::Ping),
        ["reconfig", m] => Ok(Request::Reconfig(master(m)?)),
        ["notify", m, event] => {
            crate::migrate::check_event(event).map_err(|e| e.0)?;
            Ok(Request::Notify {
                master: master(m)?,
                event: (*event).to_owned(),
            })
        }
        [verb, ..] if ["ping", "reconfig", "notify"].contains(verb) => Err(format!(
            "{:?}: wrong number of words (expected \"ping\", \"reconfig <master>\" or \"notify <master> <event>\")",
            short(line)
        )),
        _ => Err(format!(
            "{:?} is not a request (expected \"ping\", \"reconfig <master>\" or \"notify <master> <event>\")",
            short(line)
        )),
    }
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// What the daemon says about a master after a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The Sentinels name this host: the VIP is bound here and the cloud confirms it.
    Held,
    /// The Sentinels name another host: the VIP is not bound here.
    Elsewhere,
    /// No majority of the Sentinels is in sight: the daemon moves nothing on their word (and fences on its
    /// own after `fence_after`).
    NoMajority,
    /// Not settled at the deadline (a claim still confirming, a failover in progress).
    Working,
    /// No `[[havip]]` follows this master.
    UnknownMaster,
    /// The request was not understood; nothing was done.
    BadRequest,
    /// Too many clients at once; nothing was done.
    Busy,
    /// The answer to `ping`.
    Pong,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Held,
        Outcome::Elsewhere,
        Outcome::NoMajority,
        Outcome::Working,
        Outcome::UnknownMaster,
        Outcome::BadRequest,
        Outcome::Busy,
        Outcome::Pong,
    ];

    /// The word on the wire.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Held => "held",
            Outcome::Elsewhere => "elsewhere",
            Outcome::NoMajority => "no-majority",
            Outcome::Working => "working",
            Outcome::UnknownMaster => "unknown-master",
            Outcome::BadRequest => "bad-request",
            Outcome::Busy => "busy",
            Outcome::Pong => "pong",
        }
    }

    fn from_word(w: &str) -> Option<Outcome> {
        Self::ALL.into_iter().find(|o| o.word() == w)
    }
}

/// One answer: the outcome and a sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What happened.
    pub outcome: Outcome,
    /// Says it in words (HAVIP, VIP, what the Sentinels name).
    pub message: String,
}

impl Answer {
    fn new(outcome: Outcome, message: impl Into<String>) -> Self {
        Self {
            outcome,
            message: message.into(),
        }
    }

    /// The answer line (with its newline; the message on one line).
    pub fn line(&self) -> String {
        let msg: String = self
            .message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("{} {msg}\n", self.outcome.word())
    }

    /// Parses an answer line.
    pub fn parse(line: &str) -> Result<Answer, String> {
        let line = line.trim_end_matches('\n');
        let (word, msg) = line.split_once(' ').unwrap_or((line, ""));
        let outcome = Outcome::from_word(word)
            .ok_or_else(|| format!("unexpected answer {:?}", short(line)))?;
        Ok(Answer::new(outcome, msg))
    }
}

/// The daemon's state for one master, as [`Target::judge`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// The answer if given now.
    pub answer: Answer,
    /// Whether the daemon has finished acting on it (else the request waits, up to its deadline).
    pub settled: bool,
}

/// What the control socket needs from the daemon: which masters it follows, a fresh look at the
/// Sentinels, and what it now sees. The real one is [`AgentTarget`]; tests count calls.
#[async_trait::async_trait]
pub trait Target: Send + Sync + 'static {
    /// Whether a `[[havip]]` follows `master`.
    fn knows(&self, master: &str) -> bool;
    /// Asks every Sentinel again now and returns once they answered (bounded by the implementation).
    async fn resample(&self, master: &str);
    /// The daemon's state for `master` now.
    fn judge(&self, master: &str) -> Judgement;
}

/// [`Target`] over a running agent: its Sentinel watcher's [`Sampler`] and its published status.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    sampler: Sampler,
    status: StatusHandle,
    cfg: Arc<Config>,
    me: IpAddr,
}

impl AgentTarget {
    /// The target for an agent watching through `sampler`, publishing to `status`, whose node address is
    /// `me`.
    pub fn new(sampler: Sampler, status: StatusHandle, cfg: Arc<Config>, me: IpAddr) -> Self {
        Self {
            sampler,
            status,
            cfg,
            me,
        }
    }
}

#[async_trait::async_trait]
impl Target for AgentTarget {
    fn knows(&self, master: &str) -> bool {
        self.cfg.havip_for_master(master).is_some()
    }

    async fn resample(&self, _master: &str) {
        // Every Sentinel is asked about every master in one query, so this serves any master.
        let within = self.cfg.sentinel.timeout.get() + Duration::from_millis(500);
        if !self.sampler.resample(within).await {
            debug!("control: not every sentinel answered the re-sample in time");
        }
    }

    fn judge(&self, master: &str) -> Judgement {
        let Some(h) = self.cfg.havip_for_master(master) else {
            return Judgement {
                answer: unknown_master(master),
                settled: true,
            };
        };
        let id = &h.havip_id;
        let snap = self.sampler.snapshot();
        let view = snap.view(master, std::time::Instant::now());
        let status = self.status.snapshot();
        let Some(st) = status.havips.iter().find(|s| s.havip_id == *id) else {
            return working(format!("{id}: the daemon is starting"));
        };
        if !view.majority {
            return Judgement {
                answer: Answer::new(
                    Outcome::NoMajority,
                    format!(
                        "{id}: only {} of {} sentinels reachable and counted: the daemon moves nothing on their word{}",
                        view.members,
                        view.total,
                        if st.fenced {
                            "; it has fenced this node"
                        } else {
                            " (it fences on its own after sentinel.fence_after)"
                        }
                    ),
                ),
                settled: true,
            };
        }
        let Some(n) = view.newest.as_ref() else {
            return working(format!(
                "{id}: the sentinels report no corroborated configuration for {master:?}"
            ));
        };
        if let Some(p) = &view.pending {
            return working(format!(
                "{id}: a newer configuration ({} epoch {}) is not corroborated yet",
                p.addr(),
                p.epoch
            ));
        }
        let named = format!("{} (epoch {})", n.addr(), n.epoch);
        if n.ip == self.me {
            if st.desired_holder && st.local_bound && st.cloud_matches == Some(true) {
                return Judgement {
                    answer: Answer::new(
                        Outcome::Held,
                        format!(
                            "{id}: the sentinels name this node {named}: vip {} is bound here and the cloud confirms",
                            h.vip
                        ),
                    ),
                    settled: true,
                };
            }
            return working(format!(
                "{id}: the sentinels name this node {named}: claiming (bound here: {}, cloud confirms: {})",
                st.local_bound,
                st.cloud_matches
                    .map_or("not yet known".to_owned(), |b| b.to_string())
            ));
        }
        if !st.desired_holder && !st.local_bound {
            return Judgement {
                answer: Answer::new(
                    Outcome::Elsewhere,
                    format!(
                        "{id}: the sentinels name another host {named}: vip {} is not bound here",
                        h.vip
                    ),
                ),
                settled: true,
            };
        }
        working(format!(
            "{id}: the sentinels name another host {named}: releasing"
        ))
    }
}

fn working(message: String) -> Judgement {
    Judgement {
        answer: Answer::new(Outcome::Working, message),
        settled: false,
    }
}

fn unknown_master(master: &str) -> Answer {
    Answer::new(
        Outcome::UnknownMaster,
        format!("no [[havip]] in the daemon's config has master = {master:?}"),
    )
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket's directory does not exist.
    #[error(
        "control socket {path}: its directory {dir} does not exist (agent.control_socket; the unit's RuntimeDirectory creates /run/havip-agent)"
    )]
    NoDirectory {
        /// The socket.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// Something other than a socket is in the way.
    #[error("control socket {path}: refusing to replace it: it is {kind}, not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Another process listens on it.
    #[error(
        "control socket {path}: another process already listens on it (is a second havip-agent running?)"
    )]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The configured group does not exist.
    #[error(
        "control socket {path}: group {group:?} does not exist (agent.control_group; the package creates havip-agent)"
    )]
    NoGroup {
        /// The path.
        path: PathBuf,
        /// The group.
        group: String,
    },
    /// A system call failed.
    #[error("control socket {path}: {what}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symlink"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Looks a group up by name (`getgrnam_r`).
pub(crate) fn group_id(name: &str) -> io::Result<Option<u32>> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name contains NUL"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: getgrnam_r writes into `grp` and `buf` (of the given length) only, and sets `result` to
        // `&grp` or null.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let r = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        return Ok((!result.is_null()).then_some(grp.gr_gid));
    }
}

/// Removes `path` if it is a socket nobody listens on; refuses anything else that is in the way.
fn clear_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ControlError::Io {
                path: path.to_owned(),
                what: "reading what is at the path",
                source: e,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ControlError::InUse {
            path: path.to_owned(),
        });
    }
    std::fs::remove_file(path).map_err(|e| ControlError::Io {
        path: path.to_owned(),
        what: "removing the stale socket",
        source: e,
    })
}

/// Binds the control socket at `path`, mode 0660, group `group`: bound under a temporary name in the same
/// directory, given its mode and group, then renamed over `path`, so it never exists with a looser mode.
/// Returns the listener and the socket's inode (so that shutdown removes only its own socket).
pub fn bind(path: &Path, group: &str) -> Result<(UnixListener, u64), ControlError> {
    let io = |what: &'static str| {
        move |source: io::Error| ControlError::Io {
            path: path.to_owned(),
            what,
            source,
        }
    };
    check_socket_path(path).map_err(|m| ControlError::Io {
        path: path.to_owned(),
        what: "checking the path",
        source: io::Error::new(io::ErrorKind::InvalidInput, m),
    })?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(ControlError::NoDirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
        });
    }
    let gid = group_id(group)
        .map_err(io("looking up the group"))?
        .ok_or_else(|| ControlError::NoGroup {
            path: path.to_owned(),
            group: group.to_owned(),
        })?;
    clear_stale(path)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    clear_stale(&tmp)?;
    let listener = UnixListener::bind(&tmp).map_err(io("binding"))?;
    let setup = || -> Result<u64, ControlError> {
        std::os::unix::fs::lchown(&tmp, None, Some(gid)).map_err(io("setting its group"))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
            .map_err(io("setting its mode"))?;
        let ino = std::fs::symlink_metadata(&tmp)
            .map_err(io("reading it back"))?
            .ino();
        // Whatever appeared at `path` since `clear_stale` is replaced only if it is a stale socket.
        clear_stale(path)?;
        std::fs::rename(&tmp, path).map_err(io("renaming it into place"))?;
        Ok(ino)
    };
    match setup() {
        Ok(ino) => Ok((listener, ino)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A running control socket. [`ControlServer::shutdown`] stops it at once, whatever its clients do;
/// dropping it does the same without removing the socket file.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, drops every client (waiting for none), and removes the socket file if it is still
    /// the one this server bound.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Bounds of the server; [`Limits::for_config`] gives the daemon's.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// See [`answer_deadline`].
    pub answer_deadline: Duration,
}

impl Limits {
    /// The daemon's limits for `cfg`.
    pub fn for_config(cfg: &Config) -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            read_timeout: READ_TIMEOUT,
            answer_deadline: answer_deadline(cfg),
        }
    }
}

/// One re-sample at a time per master: a request waits for a running one, and reuses any that started
/// after it arrived.
#[derive(Default)]
struct Gate {
    started: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

/// Binds (see [`bind`]) and serves until [`ControlServer::shutdown`].
pub fn serve(
    path: &Path,
    group: &str,
    target: Arc<dyn Target>,
    limits: Limits,
) -> Result<ControlServer, ControlError> {
    let (listener, ino) = bind(path, group)?;
    info!(path = %path.display(), group, "control socket listening");
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(
        listener,
        path.to_owned(),
        ino,
        target,
        limits,
        stop_rx,
    ));
    Ok(ControlServer {
        path: path.to_owned(),
        stop,
        task: Some(task),
    })
}

/// The daemon's control socket, as `havip-agent run` starts it: at `agent.control_socket`, group
/// `agent.control_group`, over `agent`'s Sentinel watcher and `status`, this node at `me`.
pub fn serve_agent(
    agent: &crate::daemon::Agent,
    status: &StatusHandle,
    cfg: &Arc<Config>,
    me: IpAddr,
) -> Result<ControlServer, ControlError> {
    let target = AgentTarget::new(agent.watcher().sampler(), status.clone(), cfg.clone(), me);
    serve(
        &cfg.control_socket(),
        &cfg.agent.control_group,
        Arc::new(target),
        Limits::for_config(cfg),
    )
}

async fn accept_loop(
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
    target: Arc<dyn Target>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let gates: Arc<Mutex<HashMap<String, Arc<Gate>>>> = Arc::default();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => {
                let stream = match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and the like: back off a little rather than spin.
                        warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    warn!(max = limits.max_connections, "control socket: too many clients, refusing one");
                    refuse(stream);
                    continue;
                };
                let target = target.clone();
                let gates = gates.clone();
                conns.spawn(async move {
                    handle(stream, target, gates, limits).await;
                    drop(slot);
                });
            }
        }
    }
    conns.abort_all();
    drop(listener);
    // Only our own socket: a newer daemon may have replaced it.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket() && m.ino() == ino) {
        let _ = std::fs::remove_file(&path);
    }
    info!(path = %path.display(), "control socket closed");
}

/// Answers `busy` without waiting for anything: whatever already arrived is read first (closing a Unix
/// socket with unread data resets the peer, which would lose the answer), then the answer, then close.
fn refuse(stream: UnixStream) {
    let mut sink = [0u8; MAX_REQUEST];
    let _ = stream.try_read(&mut sink);
    let _ = stream.try_write(
        Answer::new(Outcome::Busy, "too many clients at once; nothing was done")
            .line()
            .as_bytes(),
    );
    if let Ok(s) = stream.into_std() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

/// Reads one line of at most [`MAX_REQUEST`] bytes (the newline may be missing at end of stream).
async fn read_request(stream: &mut UnixStream) -> Result<String, String> {
    let mut buf = Vec::with_capacity(64);
    let mut r = BufReader::new(stream).take(MAX_REQUEST as u64);
    r.read_until(b'\n', &mut buf)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() >= MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    } else if buf.is_empty() {
        return Err("empty request".to_owned());
    }
    String::from_utf8(buf).map_err(|_| "request is not UTF-8".to_owned())
}

async fn handle(
    mut stream: UnixStream,
    target: Arc<dyn Target>,
    gates: Arc<Mutex<HashMap<String, Arc<Gate>>>>,
    limits: Limits,
) {
    let peer = stream.peer_cred().ok();
    let uid = peer.map(|c| c.uid());
    let pid = peer.and_then(|c| c.pid());
    let request = match tokio::time::timeout(limits.read_timeout, read_request(&mut stream)).await {
        Err(_) => Err(format!("no request within {:?}", limits.read_timeout)),
        Ok(r) => r.and_then(|line| parse_request(&line)),
    };
    let reply = match request {
        Err(why) => {
            warn!(uid, pid, problem = %why, "control socket: bad request; nothing done");
            Answer::new(Outcome::BadRequest, format!("{why}; nothing was done"))
        }
        Ok(req) => {
            info!(uid, pid, request = %req.line(), "control socket: wake-up");
            answer(&req, &*target, &gates, limits).await
        }
    };
    debug!(uid, answer = %reply.line().trim_end(), "control socket: answered");
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(reply.line().as_bytes()).await?;
        stream.shutdown().await?;
        // Read what is left of a long request (bounded), so that closing does not reset the client
        // before it read the answer.
        tokio::io::copy(&mut (&mut stream).take(64 * 1024), &mut tokio::io::sink()).await
    })
    .await;
}

async fn answer(
    req: &Request,
    target: &dyn Target,
    gates: &Mutex<HashMap<String, Arc<Gate>>>,
    limits: Limits,
) -> Answer {
    let Some(master) = req.master() else {
        return Answer::new(
            Outcome::Pong,
            format!("havip-agent {} is listening", env!("CARGO_PKG_VERSION")),
        );
    };
    if !target.knows(master) {
        return unknown_master(master);
    }
    let deadline = Instant::now() + limits.answer_deadline;
    let gate = gates
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(master.to_owned())
        .or_default()
        .clone();
    let arrived = gate.started.load(Ordering::SeqCst);
    let resampled = tokio::time::timeout_at(deadline, async {
        let _one = gate.lock.lock().await;
        // One that started after this request arrived has seen everything the request could point at.
        if gate.started.load(Ordering::SeqCst) == arrived {
            gate.started.fetch_add(1, Ordering::SeqCst);
            target.resample(master).await;
        }
    })
    .await
    .is_ok();
    loop {
        let j = target.judge(master);
        if (j.settled && resampled) || Instant::now() + JUDGE_EVERY > deadline {
            return j.answer;
        }
        tokio::time::sleep(JUDGE_EVERY).await;
    }
}

/// Why [`ask`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// Could not connect: no daemon listens (or this user may not reach the socket).
    #[error("cannot connect to the daemon's control socket {path}: {source}")]
    NotListening {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Connected, but no usable answer came.
    #[error("the daemon's control socket {path}: {problem}")]
    NoAnswer {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

/// Sends `req` to the daemon at `path` and waits up to `within` for its answer.
pub async fn ask(path: &Path, req: &Request, within: Duration) -> Result<Answer, AskError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| AskError::NotListening {
            path: path.to_owned(),
            source,
        })?;
    let no_answer = |problem: String| AskError::NoAnswer {
        path: path.to_owned(),
        problem,
    };
    let exchange = async {
        stream
            .write_all(format!("{}\n", req.line()).as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut buf = Vec::new();
        BufReader::new(&mut stream)
            .take(4096)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if buf.is_empty() {
            return Err("it closed the connection without an answer".to_owned());
        }
        Answer::parse(&String::from_utf8_lossy(&buf))
    };
    match tokio::time::timeout(within, exchange).await {
        Err(_) => Err(no_answer(format!("no answer within {within:?}"))),
        Ok(r) => r.map_err(no_answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(parse_request("ping"), Ok(Request::Ping));
        assert_eq!(
            parse_request("reconfig mymaster"),
            Ok(Request::Reconfig("mymaster".into()))
        );
        assert_eq!(
            parse_request("notify cache +sdown"),
            Ok(Request::Notify {
                master: "cache".into(),
                event: "+sdown".into()
            })
        );
        for (line, want) in [
            ("", "is not a request"),
            ("claim mymaster 198.18.0.2", "is not a request"),
            ("reconfig", "wrong number of words"),
            ("reconfig a b", "wrong number of words"),
            ("reconfig  ", "wrong number of words"),
            ("notify m sdown", "argument 1 (event-type)"),
            ("reconfig a\u{7}b", "is not a Sentinel master name"),
        ] {
            let e = parse_request(line).unwrap_err();
            assert!(e.contains(want), "{line:?}: {e}");
        }
        for r in [
            Request::Ping,
            Request::Reconfig("m".into()),
            Request::Notify {
                master: "m".into(),
                event: "-odown".into(),
            },
        ] {
            assert_eq!(parse_request(&r.line()), Ok(r));
        }
    }

    #[test]
    fn answers_round_trip_on_one_line() {
        for o in Outcome::ALL {
            let a = Answer::new(o, "two\nlines");
            let line = a.line();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(Answer::parse(&line).unwrap().outcome, o);
        }
        assert!(Answer::parse("sure thing\n").is_err());
    }

    #[test]
    fn socket_paths_must_be_absolute_and_fit_sun_path() {
        assert!(check_socket_path(Path::new(DEFAULT_SOCKET)).is_ok());
        assert!(
            check_socket_path(Path::new("run/x.sock"))
                .unwrap_err()
                .contains("not an absolute path")
        );
        let long = format!("/{}", "a".repeat(120));
        assert!(
            check_socket_path(Path::new(&long))
                .unwrap_err()
                .contains("at most 94")
        );
    }

    fn config(agent: &str, claim: &str) -> Result<Config, crate::config::ConfigError> {
        let text = format!(
            "[cloud]\nregion = \"ap-guangzhou\"\n[node]\ninstance_id = \"ins-a\"\naddress = \"198.18.0.11\"\n\
             interface = \"eth0\"\n[sentinel]\naddresses = [\"198.18.0.1:26379\"]\n[agent]\n{agent}\n\
             [claim]\n{claim}\n[[havip]]\nmaster = \"m\"\nhavip_id = \"havip-1\"\nvip = \"198.18.0.100/24\"\n"
        );
        Config::parse_str(&text, Path::new("c.toml"))
    }

    #[test]
    fn the_socket_defaults_to_the_lock_dir_and_a_bad_path_names_the_key() {
        assert_eq!(
            config("", "").unwrap().control_socket(),
            Path::new(DEFAULT_SOCKET)
        );
        let c = config("", "lock_dir = \"/run/x\"").unwrap();
        assert_eq!(c.control_socket(), Path::new("/run/x/control.sock"));
        let c = config("control_socket = \"/srv/c.sock\"", "").unwrap();
        assert_eq!(c.control_socket(), Path::new("/srv/c.sock"));
        let e = config("control_socket = \"c.sock\"", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent.control_socket") && e.contains("not an absolute path"),
            "{e}"
        );
        let long = format!("lock_dir = \"/{}\"", "d".repeat(100));
        let e = config("", &long).unwrap_err().to_string();
        assert!(
            e.contains("agent.control_socket") && e.contains("at most 94"),
            "{e}"
        );
        let e = config("control_group = \"\"", "").unwrap_err().to_string();
        assert!(e.contains("agent.control_group"), "{e}");
    }

    /// Counts re-samples, and how many run at once.
    #[derive(Default)]
    struct Counting {
        running: AtomicU64,
        most: AtomicU64,
        total: AtomicU64,
    }

    #[async_trait::async_trait]
    impl Target for Counting {
        fn knows(&self, master: &str) -> bool {
            master == "m"
        }
        async fn resample(&self, _: &str) {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.total.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
        fn judge(&self, _: &str) -> Judgement {
            Judgement {
                answer: Answer::new(Outcome::Elsewhere, "x"),
                settled: true,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_wake_ups_runs_one_resample_at_a_time_and_few_in_all() {
        let t = Arc::new(Counting::default());
        let gates = Arc::new(Mutex::new(HashMap::new()));
        let limits = Limits {
            max_connections: 1000,
            read_timeout: READ_TIMEOUT,
            answer_deadline: Duration::from_secs(10),
        };
        let mut set = JoinSet::new();
        for _ in 0..200 {
            let (t, gates) = (t.clone(), gates.clone());
            set.spawn(
                async move { answer(&Request::Reconfig("m".into()), &*t, &gates, limits).await },
            );
        }
        while let Some(a) = set.join_next().await {
            assert_eq!(a.unwrap().outcome, Outcome::Elsewhere);
        }
        assert_eq!(t.most.load(Ordering::SeqCst), 1, "re-samples overlapped");
        // The first request's re-sample, then at most one for all who arrived while it ran.
        assert!(
            t.total.load(Ordering::SeqCst) <= 2,
            "{}",
            t.total.load(Ordering::SeqCst)
        );
        // An unknown master gets no re-sample at all.
        let before = t.total.load(Ordering::SeqCst);
        let a = answer(&Request::Reconfig("other".into()), &*t, &gates, limits).await;
        assert_eq!(a.outcome, Outcome::UnknownMaster);
        assert_eq!(t.total.load(Ordering::SeqCst), before);
    }
}

//! `[hooks]`: operator executables run after this node acquired or released a VIP.
//!
//! Owns running them: one background worker per [`Hooks`], one hook at a time in submission order, each
//! with a timeout after which its whole process group is killed; exit status and (truncated) output are
//! logged, failures counted. The caller never waits: submitting only puts the run on a bounded queue, and
//! when the queue is full the run is dropped, logged and counted. A hook can therefore neither block nor
//! undo a failover. It does not decide when a hook is due (the daemon does).
//!
//! A hook is called as `<path> <event> <havip_id> <vip> <master> <result>` with the same values in
//! `HAVIP_EVENT`, `HAVIP_ID`, `HAVIP_VIP`, `HAVIP_MASTER`, `HAVIP_RESULT` and `HAVIP_FAILOVER_ID`.
//! `<event>` is `acquired` or `released`.
//!
//! A hook runs with nothing of the agent's privileges: no capabilities (the ambient, inheritable and, when
//! the agent runs as root, bounding sets are cleared in the child before `exec`) and a minimal environment:
//! exactly `PATH=/usr/sbin:/usr/bin:/sbin:/bin`, `LANG=C.UTF-8` and the `HAVIP_*` variables above. Nothing
//! else of the agent's environment is passed on, so neither the cloud credentials (`TENCENTCLOUD_*`) nor
//! anything an operator set for the agent. A hook that needs more sets it itself.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::HooksConfig;
use crate::metrics::Metrics;

/// Hook runs that may wait while one runs. Hooks run after failovers, which are rare: a full queue
/// means hooks hang or fail over and over, and dropping is then better than growing without bound.
pub const DEFAULT_QUEUE: usize = 64;

/// Bytes of stdout and of stderr kept for the log; the rest is read and discarded.
pub const OUTPUT_LIMIT: usize = 4096;

/// `PATH` of a hook: the system directories only.
pub const HOOK_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// `LANG` of a hook.
pub const HOOK_LANG: &str = "C.UTF-8";

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// `on_acquire`: this node bound and announced the VIP.
    Acquired,
    /// `on_release`: this node removed the VIP.
    Released,
}

impl HookEvent {
    /// The `<event>` argument and `HAVIP_EVENT` value.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Acquired => "acquired",
            HookEvent::Released => "released",
        }
    }
}

/// What a hook is told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookContext {
    /// The HAVIP id.
    pub havip: String,
    /// The VIP (with or without prefix length, as the daemon formats it).
    pub vip: String,
    /// The Sentinel master name.
    pub master: String,
    /// The action's outcome, e.g. `ok` or a short error.
    pub result: String,
    /// The failover id tying together everything one switch caused (empty if none).
    pub failover_id: String,
}

enum Msg {
    Run {
        event: HookEvent,
        path: PathBuf,
        ctx: HookContext,
    },
    Flush(oneshot::Sender<()>),
}

/// The hook runner. Cheap to clone; the worker stops once every clone is dropped and its queue is done.
#[derive(Debug, Clone)]
pub struct Hooks {
    tx: Option<mpsc::Sender<Msg>>,
    on_acquire: Option<PathBuf>,
    on_release: Option<PathBuf>,
    metrics: Option<Metrics>,
}

impl Hooks {
    /// Hooks from `[hooks]`, failures logged only. Must be called within a Tokio runtime when a hook is
    /// configured (it spawns the worker).
    pub fn new(cfg: &HooksConfig) -> Hooks {
        Self::with_options(cfg, None, DEFAULT_QUEUE)
    }

    /// Hooks from `[hooks]`, failures and drops also counted in `metrics`.
    pub fn with_metrics(cfg: &HooksConfig, metrics: Metrics) -> Hooks {
        Self::with_options(cfg, Some(metrics), DEFAULT_QUEUE)
    }

    /// Hooks with a given queue capacity (at least 1).
    pub fn with_options(cfg: &HooksConfig, metrics: Option<Metrics>, queue: usize) -> Hooks {
        for (key, path) in [
            ("hooks.on_acquire", &cfg.on_acquire),
            ("hooks.on_release", &cfg.on_release),
        ] {
            if let Some(p) = path.as_deref().filter(|p| !p.is_absolute()) {
                tracing::error!(key, path = %p.display(), "hook path is not absolute; it will not be run");
            }
        }
        let tx = (cfg.on_acquire.is_some() || cfg.on_release.is_some()).then(|| {
            let (tx, rx) = mpsc::channel(queue.max(1));
            tokio::spawn(worker(rx, cfg.timeout.get(), metrics.clone()));
            tx
        });
        Hooks {
            tx,
            on_acquire: cfg.on_acquire.clone(),
            on_release: cfg.on_release.clone(),
            metrics,
        }
    }

    /// Queues `on_acquire` (if configured) and returns at once.
    pub fn acquired(&self, ctx: HookContext) {
        self.submit(HookEvent::Acquired, ctx);
    }

    /// Queues `on_release` (if configured) and returns at once.
    pub fn released(&self, ctx: HookContext) {
        self.submit(HookEvent::Released, ctx);
    }

    /// Queues the hook for `event` (if configured) and returns at once; never waits for the queue.
    pub fn submit(&self, event: HookEvent, ctx: HookContext) {
        let path = match event {
            HookEvent::Acquired => &self.on_acquire,
            HookEvent::Released => &self.on_release,
        };
        let (Some(path), Some(tx)) = (path, &self.tx) else {
            return;
        };
        let havip = ctx.havip.clone();
        let failover_id = ctx.failover_id.clone();
        let msg = Msg::Run {
            event,
            path: path.clone(),
            ctx,
        };
        if let Err(e) = tx.try_send(msg) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "worker stopped",
            };
            tracing::warn!(
                event = event.as_str(),
                havip,
                failover_id,
                why,
                "hook dropped"
            );
            if let Some(m) = &self.metrics {
                m.inc_hook_dropped(event.as_str());
            }
        }
    }

    /// Waits until every hook queued before this call has finished, at most `within`. Returns whether
    /// it did. For shutdown (let a release hook run before exiting) and tests.
    pub async fn flush(&self, within: Duration) -> bool {
        let Some(tx) = &self.tx else {
            return true;
        };
        let deadline = Instant::now() + within;
        let (done_tx, done_rx) = oneshot::channel();
        let sent = tokio::time::timeout_at(deadline, tx.send(Msg::Flush(done_tx))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return false;
        }
        matches!(tokio::time::timeout_at(deadline, done_rx).await, Ok(Ok(())))
    }
}

async fn worker(mut rx: mpsc::Receiver<Msg>, timeout: Duration, metrics: Option<Metrics>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Flush(done) => {
                let _ = done.send(());
            }
            Msg::Run { event, path, ctx } => {
                let outcome = run_hook(event, &path, &ctx, timeout).await;
                log_outcome(event, &path, &ctx, &outcome);
                if !outcome.ok() {
                    if let Some(m) = &metrics {
                        m.inc_hook_failure(event.as_str());
                    }
                }
            }
        }
    }
}

/// How one hook run ended.
#[derive(Debug)]
enum Ending {
    Exited(ExitStatus),
    TimedOut,
    NotStarted(String),
}

#[derive(Debug)]
struct Outcome {
    ending: Ending,
    took: Duration,
    stdout: Captured,
    stderr: Captured,
}

impl Outcome {
    fn ok(&self) -> bool {
        matches!(&self.ending, Ending::Exited(s) if s.success())
    }
}

#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    truncated: bool,
    /// Still open when we stopped waiting (a background child of the hook kept it).
    abandoned: bool,
}

impl Captured {
    fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.kept).trim_end().to_owned();
        if self.truncated {
            s.push_str(" [truncated]");
        }
        if self.abandoned {
            s.push_str(" [still open, not waited for]");
        }
        s
    }
}

async fn capture(reader: Option<impl AsyncRead + Unpin>) -> Captured {
    let mut c = Captured::default();
    let Some(mut r) = reader else {
        return c;
    };
    let mut buf = [0u8; 4096];
    // Read to the end even past the limit: a hook blocked on a full pipe would look like a hang.
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_LIMIT - c.kept.len();
        c.kept.extend_from_slice(&buf[..n.min(room)]);
        c.truncated |= n > room;
    }
    c
}

async fn run_hook(event: HookEvent, path: &Path, ctx: &HookContext, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let deadline = started + timeout;
    let not_started = |why: String| Outcome {
        ending: Ending::NotStarted(why),
        took: started.elapsed(),
        stdout: Captured::default(),
        stderr: Captured::default(),
    };
    if !path.is_absolute() {
        return not_started("the path is not absolute".to_owned());
    }
    let mut cmd = tokio::process::Command::new(path);
    cmd.args([
        event.as_str(),
        &ctx.havip,
        &ctx.vip,
        &ctx.master,
        &ctx.result,
    ])
    // A minimal environment (module docs): the hook never sees the agent's own, which holds the cloud keys.
    .env_clear()
    .env("PATH", HOOK_PATH)
    .env("LANG", HOOK_LANG)
    .env("HAVIP_EVENT", event.as_str())
    .env("HAVIP_ID", &ctx.havip)
    .env("HAVIP_VIP", &ctx.vip)
    .env("HAVIP_MASTER", &ctx.master)
    .env("HAVIP_RESULT", &ctx.result)
    .env("HAVIP_FAILOVER_ID", &ctx.failover_id)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so a timeout kills whatever the hook started too.
    .process_group(0)
    .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // syscalls (prctl, capget, capset); it allocates nothing.
    unsafe {
        cmd.pre_exec(crate::privs::clear_for_exec);
    }
    let mut child = match spawn_retrying_busy(&mut cmd).await {
        Ok(c) => c,
        Err(e) => return not_started(format!("cannot start: {e}")),
    };
    let pid = child.id();
    let out = tokio::spawn(capture(child.stdout.take()));
    let err = tokio::spawn(capture(child.stderr.take()));

    let ending = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => Ending::Exited(status),
        Ok(Err(e)) => Ending::NotStarted(format!("cannot wait for it: {e}")),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) with a negative pid signals the process group the hook leads; the
                // child is not reaped yet, so its pid (= the group id) cannot have been reused.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
            Ending::TimedOut
        }
    };
    let took = started.elapsed();
    // After the hook ended, its pipes close unless something it left behind holds them: wait for the
    // output only until the deadline (a little longer after a kill, for the pipes to drain).
    let output_deadline = deadline.max(Instant::now() + Duration::from_millis(200));
    let stdout = finish_capture(out, output_deadline).await;
    let stderr = finish_capture(err, output_deadline).await;
    Outcome {
        ending,
        took,
        stdout,
        stderr,
    }
}

async fn finish_capture(task: tokio::task::JoinHandle<Captured>, until: Instant) -> Captured {
    let abort = task.abort_handle();
    match tokio::time::timeout_at(until, task).await {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => Captured::default(),
        Err(_) => {
            abort.abort();
            Captured {
                abandoned: true,
                ..Captured::default()
            }
        }
    }
}

fn log_outcome(event: HookEvent, path: &Path, ctx: &HookContext, o: &Outcome) {
    let path = path.display();
    let took_ms = o.took.as_millis() as u64;
    let stdout = o.stdout.text();
    let stderr = o.stderr.text();
    let event = event.as_str();
    let (havip, failover_id) = (&ctx.havip, &ctx.failover_id);
    match &o.ending {
        Ending::Exited(status) if status.success() => tracing::info!(
            event, havip, failover_id, %path, took_ms, stdout, stderr, "hook finished"
        ),
        Ending::Exited(status) => tracing::warn!(
            event, havip, failover_id, %path, took_ms, %status, stdout, stderr, "hook failed"
        ),
        Ending::TimedOut => tracing::warn!(
            event, havip, failover_id, %path, took_ms, stdout, stderr,
            "hook timed out; killed its process group"
        ),
        Ending::NotStarted(why) => tracing::warn!(
            event, havip, failover_id, %path, why, "hook not run"
        ),
    }
}

/// Spawns `cmd`, retrying for up to ~100 ms while exec says `ETXTBSY`: the hook file is still open for
/// writing somewhere, typically because another process forked while a tool (or a test) was writing it,
/// and the fork's copy closes at its own exec a moment later. Any other error is returned at once.
async fn spawn_retrying_busy(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[tokio::test]
    async fn a_hook_still_open_for_writing_starts_once_the_writer_closes_it() {
        // Seen in CI under load: another thread's fork held the freshly written hook open, and exec said
        // ETXTBSY, so the hook never ran.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.sh");
        let mut writer = std::fs::File::create(&path).unwrap();
        writer.write_all(b"#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let busy = tokio::process::Command::new(&path).spawn().map(|_| ());
        assert_eq!(
            busy.as_ref().map_err(|e| e.raw_os_error()),
            Err(Some(libc::ETXTBSY)),
            "exec of a file open for writing: {busy:?}"
        );
        let closer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            drop(writer);
        });

        let mut cmd = tokio::process::Command::new(&path);
        let mut child = spawn_retrying_busy(&mut cmd)
            .await
            .expect("started once the writer closed the file");
        assert!(child.wait().await.unwrap().success());
        closer.await.unwrap();
    }
}

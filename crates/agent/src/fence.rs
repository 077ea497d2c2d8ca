//! The Redis-level fence: pause writes on the local Redis while this node is cut off from the Sentinel majority.
//!
//! Owns the two commands (`CLIENT PAUSE <ms> WRITE`, `CLIENT UNPAUSE`) behind the [`WriteFence`] trait, and
//! the [`PauseLedger`]: a record in `claim.lock_dir` of the pause in force on each local Redis, so the
//! daemon and `migrate-havip` see each other's pauses (Redis 7.0 does not report one) and either can lift a
//! pause the other set when the rule says so. It does not decide *when* to fence (see `reconcile`) and
//! connects with the same ACL/TLS/timeout handling as the Sentinel connections (`sentinel::conn`).
//!
//! Why: after losing the majority, an isolated master still accepts writes from clients that reach it over
//! existing connections; Sentinel is about to promote another replica and turn this one into a replica, which
//! discards those writes. A pause that expires by itself (and is renewed while still cut off) cannot leave
//! the Redis stuck if the agent dies.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::sentinel::SentinelError;
use crate::sentinel::conn::{ConnectOptions, connect_redis};

/// Why a fence command failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// No connection.
    #[error("local redis at {addr}: connect: {source}")]
    Connect {
        /// The Redis.
        addr: String,
        /// Why.
        source: SentinelError,
    },
    /// The command failed.
    #[error("local redis at {addr}: {command}: {source}")]
    Command {
        /// The Redis.
        addr: String,
        /// The command.
        command: &'static str,
        /// Why.
        source: redis::RedisError,
    },
}

/// Pausing and unpausing writes on the local Redis: the effect the executor drives. Implemented by
/// [`RedisFence`]; tests may record instead.
#[async_trait::async_trait]
pub trait WriteFence: Send + Sync + std::fmt::Debug {
    /// The Redis, for logs and the ledger.
    fn addr(&self) -> &str;
    /// The length of one pause.
    fn pause_length(&self) -> Duration;
    /// Pauses writes for [`WriteFence::pause_length`].
    async fn pause_writes(&self) -> Result<(), FenceError>;
    /// Lifts any pause.
    async fn unpause(&self) -> Result<(), FenceError>;
}

#[async_trait::async_trait]
impl WriteFence for RedisFence {
    fn addr(&self) -> &str {
        RedisFence::addr(self)
    }
    fn pause_length(&self) -> Duration {
        RedisFence::pause_length(self)
    }
    async fn pause_writes(&self) -> Result<(), FenceError> {
        RedisFence::pause_writes(self).await
    }
    async fn unpause(&self) -> Result<(), FenceError> {
        RedisFence::unpause(self).await
    }
}

/// Where the pause in force on each local Redis is written down: `<dir>/pause-<host>_<port>` holding the
/// wall-clock end of the pause in Unix milliseconds. Written with a rename, so a reader never sees half a
/// file; a missing, unreadable or past entry means "no pause".
#[derive(Debug, Clone)]
pub struct PauseLedger {
    dir: PathBuf,
}

impl PauseLedger {
    /// A ledger in `dir` (`claim.lock_dir`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, redis: &str) -> PathBuf {
        let name: String = redis
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("pause-{name}"))
    }

    /// How much longer the recorded pause of `redis` lasts at `now`, if one is in force. A symlink in
    /// place of the entry is not followed (it counts as no entry, with a warning).
    pub fn left(&self, redis: &str, now: SystemTime) -> Option<Duration> {
        use std::io::Read;
        let path = self.path(redis);
        let mut file = match crate::claim::open_no_follow(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the write pause record; taking it as no pause");
                return None;
            }
        };
        let mut text = String::new();
        // A real record is a dozen digits; reading at most 64 bytes keeps a hostile file from costing memory.
        file.by_ref().take(64).read_to_string(&mut text).ok()?;
        let until = SystemTime::UNIX_EPOCH + Duration::from_millis(text.trim().parse().ok()?);
        until.duration_since(now).ok().filter(|d| !d.is_zero())
    }

    /// Records a pause of `redis` that ends at `until`. The temporary file is created fresh
    /// (`O_CREAT|O_EXCL`, which never follows a symlink), so a link planted at its predictable name is
    /// removed (the link, not its target) rather than written through; the rename then replaces whatever
    /// sits at the entry's name, link or file, without touching a link's target.
    pub fn record(&self, redis: &str, until: SystemTime) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let ms = until
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let path = self.path(redis);
        let tmp = tmp_path(&path);
        crate::claim::create_lock_dir(&self.dir)?;
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(crate::claim::LOCK_FILE_MODE)
                .open(&tmp)
        };
        let mut file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A leftover of a crashed run of this pid, or a planted link: remove the entry itself.
                std::fs::remove_file(&tmp)?;
                create()?
            }
            other => other?,
        };
        file.write_all(ms.to_string().as_bytes())?;
        drop(file);
        std::fs::rename(&tmp, &path)
    }

    /// Forgets the pause of `redis` (it was lifted).
    pub fn clear(&self, redis: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(redis)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Pauses and unpauses writes on one Redis.
#[derive(Debug, Clone)]
pub struct RedisFence {
    opts: ConnectOptions,
    addr: String,
    pause: Duration,
}

impl RedisFence {
    /// A fence for the Redis at `addr` (`host:port`). Each pause lasts `pause`; callers renew it at about half
    /// that while still cut off. `opts.timeout` bounds connecting and each command.
    pub fn new(opts: ConnectOptions, addr: impl Into<String>, pause: Duration) -> Self {
        Self {
            opts,
            addr: addr.into(),
            pause,
        }
    }

    /// The length of one pause.
    pub fn pause_length(&self) -> Duration {
        self.pause
    }

    /// The Redis address, for logs.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn run(&self, command: &'static str, args: &[String]) -> Result<(), FenceError> {
        let mut c = connect_redis(&self.addr, &self.opts)
            .await
            .map_err(|source| FenceError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let mut cmd = redis::cmd("CLIENT");
        for a in args {
            cmd.arg(a);
        }
        cmd.query_async::<()>(&mut c)
            .await
            .map_err(|source| FenceError::Command {
                addr: self.addr.clone(),
                command,
                source,
            })
    }

    /// `CLIENT PAUSE <pause-ms> WRITE`: writes (and scripts that may write) block until the pause ends; reads
    /// go on.
    pub async fn pause_writes(&self) -> Result<(), FenceError> {
        let ms = self.pause.as_millis().max(1).to_string();
        self.run("CLIENT PAUSE WRITE", &["PAUSE".into(), ms, "WRITE".into()])
            .await
    }

    /// `CLIENT UNPAUSE`.
    pub async fn unpause(&self) -> Result<(), FenceError> {
        self.run("CLIENT UNPAUSE", &["UNPAUSE".into()]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_reports_a_pause_until_it_ends_and_forgets_a_lifted_one() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = PauseLedger::new(dir.path());
        let now = SystemTime::now();
        assert_eq!(ledger.left("198.18.0.1:6379", now), None);
        ledger
            .record("198.18.0.1:6379", now + Duration::from_secs(30))
            .unwrap();
        let left = ledger.left("198.18.0.1:6379", now).unwrap();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
        assert_eq!(ledger.left("198.18.0.2:6379", now), None, "per redis");
        assert_eq!(
            ledger.left("198.18.0.1:6379", now + Duration::from_secs(31)),
            None,
            "ended"
        );
        ledger.clear("198.18.0.1:6379").unwrap();
        ledger.clear("198.18.0.1:6379").unwrap();
        assert_eq!(ledger.left("198.18.0.1:6379", now), None);
        std::fs::write(dir.path().join("pause-198.18.0.1_6379"), "garbage").unwrap();
        assert_eq!(ledger.left("198.18.0.1:6379", now), None);
    }

    /// Guards against a local user steering root's writes (or the fence's reads) through planted symlinks.
    #[test]
    fn the_ledger_never_follows_a_symlink_at_its_entry_or_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let ledger = PauseLedger::new(dir.path());
        let now = SystemTime::now();
        let far = now + Duration::from_secs(3600);
        let entry = dir.path().join("pause-198.18.0.1_6379");
        let tmp = tmp_path(&entry);

        // A link at the entry holding a plausible end time is not read as a pause.
        let numbers = outside.path().join("numbers");
        let ms = far
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        std::fs::write(&numbers, ms.to_string()).unwrap();
        std::os::unix::fs::symlink(&numbers, &entry).unwrap();
        assert_eq!(ledger.left("198.18.0.1:6379", now), None);

        // Links at the temporary and the entry name: the record lands in the directory, targets untouched.
        std::fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink(&victim, &entry).unwrap();
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        ledger.record("198.18.0.1:6379", far).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            !std::fs::symlink_metadata(&entry)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(ledger.left("198.18.0.1:6379", now).is_some());
        assert!(
            !tmp.exists() && std::fs::symlink_metadata(&tmp).is_err(),
            "temporary link removed"
        );
    }
}

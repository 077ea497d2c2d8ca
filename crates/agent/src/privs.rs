//! Privilege boundaries of this process: is it running with privileges its caller lacks (`AT_SECURE`),
//! which config may it then trust, and dropping Linux capabilities (for itself once its sockets are open,
//! and for the children it starts).
//!
//! Owns the raw `capget`/`capset`/`prctl` calls (through libc; the sets are three `u64` masks, too small a
//! job for another crate) and the ownership rules for a trusted config. It does not decide *when* to drop:
//! `migrate` drops after opening its sockets, `hooks` clears before `exec`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The config a privileged `migrate-havip` reads: [`crate::config::DEFAULT_CONFIG_PATH`], or the path
/// given at build time in `HAVIP_TRUSTED_CONFIG` (for packagers that install elsewhere).
pub const TRUSTED_CONFIG_PATH: &str = match option_env!("HAVIP_TRUSTED_CONFIG") {
    Some(p) => p,
    None => crate::config::DEFAULT_CONFIG_PATH,
};

/// True when the kernel marked this exec as privileged beyond its caller (`getauxval(AT_SECURE)`): a
/// setuid/setgid binary, or file capabilities that raised the permitted set. The caller then controls the
/// environment and the arguments of a process stronger than itself, so neither may choose what it reads.
pub fn at_secure() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave this process.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Why a config path cannot be trusted by a privileged process. Each message says what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    /// `--config` or `HAVIP_AGENT_CONFIG` named another file than the trusted one.
    #[error(
        "refusing config {requested}: migrate-havip runs with capabilities its caller lacks (file capabilities \
         or setuid), so it reads only {trusted}, not a path from --config or HAVIP_AGENT_CONFIG; put the \
         settings in {trusted}, or run it as root or without the file capabilities to use another file"
    )]
    NotTheTrustedPath {
        /// The path asked for.
        requested: String,
        /// The only path allowed.
        trusted: String,
    },
    /// The file or one of its directories is not owned by root, or group/others may write it.
    #[error(
        "refusing config {path}: {what} {checked} is {problem}; a privileged migrate-havip reads only a config \
         that only root can change (fix: chown root {checked} && chmod go-w {checked})"
    )]
    Unsafe {
        /// The config path.
        path: String,
        /// `file` or `directory`.
        what: &'static str,
        /// The path that failed the check.
        checked: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The file or a directory could not be inspected.
    #[error("refusing config {path}: cannot inspect {checked}: {error}")]
    Inspect {
        /// The config path.
        path: String,
        /// The path that could not be inspected.
        checked: String,
        /// The OS error.
        error: String,
    },
}

/// Owner and mode of a path, as the trust check sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// Owner uid.
    pub uid: u32,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

/// What is wrong with `o` for a file only root may change (`None`: nothing). The sticky bit does not
/// help here: a sticky world-writable directory still lets anyone create the file that is not there yet.
pub fn ownership_problem(o: Ownership) -> Option<String> {
    match (o.uid != 0, o.mode & 0o022 != 0) {
        (false, false) => None,
        (true, false) => Some(format!("owned by uid {}, not root", o.uid)),
        (false, true) => Some(format!("writable by group or others (mode {:04o})", o.mode)),
        (true, true) => Some(format!(
            "owned by uid {} and writable by group or others (mode {:04o})",
            o.uid, o.mode
        )),
    }
}

/// The config path a process may use. Unprivileged (`secure == false`): `requested` as it is. Privileged:
/// only `trusted`, and only when the file and every directory above it are owned by root and not writable
/// by group or others (symlinks are resolved first, so the file actually read is the one checked).
pub fn trusted_config(
    requested: &Path,
    trusted: &Path,
    secure: bool,
) -> Result<PathBuf, TrustError> {
    if !secure {
        return Ok(requested.to_path_buf());
    }
    if requested != trusted {
        return Err(TrustError::NotTheTrustedPath {
            requested: requested.display().to_string(),
            trusted: trusted.display().to_string(),
        });
    }
    let path = trusted.display().to_string();
    let inspect = |checked: &Path, e: io::Error| TrustError::Inspect {
        path: path.clone(),
        checked: checked.display().to_string(),
        error: e.to_string(),
    };
    let real = std::fs::canonicalize(trusted).map_err(|e| inspect(trusted, e))?;
    let mut what = "file";
    for p in real.ancestors() {
        let m = std::fs::metadata(p).map_err(|e| inspect(p, e))?;
        let o = Ownership {
            uid: m.uid(),
            mode: m.mode() & 0o7777,
        };
        if let Some(problem) = ownership_problem(o) {
            return Err(TrustError::Unsafe {
                path,
                what,
                checked: p.display().to_string(),
                problem,
            });
        }
        what = "directory";
    }
    Ok(real)
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The three capability sets of this thread, as 64-bit masks (bit n is capability n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
}

fn capget() -> io::Result<CapSets> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with a v3 header writes exactly two CapData entries.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok(CapSets {
        effective: join(|d| d.effective),
        permitted: join(|d| d.permitted),
        inheritable: join(|d| d.inheritable),
    })
}

/// capset(2) for this thread. Async-signal-safe (no allocation), so usable in `pre_exec`.
fn capset(s: CapSets) -> io::Result<()> {
    let hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e0, e1) = split(s.effective);
    let (p0, p1) = split(s.permitted);
    let (i0, i1) = split(s.inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: capset(2) with a v3 header reads exactly two CapData entries.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The highest capability number the kernel may know; `PR_CAPBSET_DROP` of an unknown one fails with
/// `EINVAL`, which ends the loop in [`drop_bounding`].
const CAP_LAST_POSSIBLE: libc::c_ulong = 63;

/// Drops every capability not in `keep` from the bounding set. Needs `CAP_SETPCAP` (root has it; a binary
/// with only file capabilities does not): without it this does nothing, which is why it is "where
/// possible". Async-signal-safe.
fn drop_bounding(keep: u64) {
    for cap in 0..=CAP_LAST_POSSIBLE {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r != 0 {
            // EINVAL: past the last capability; EPERM: no CAP_SETPCAP. Either way nothing more to do.
            break;
        }
    }
}

/// Clears the ambient set. Async-signal-safe.
fn clear_ambient() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Keeps only the capabilities in `keep` (a mask; 0 drops everything): the bounding set where possible
/// (see [`drop_bounding`]), the ambient set, then effective, permitted and inheritable. A capability left
/// out of the permitted set cannot come back. Returns the effective set afterwards.
///
/// Call it on the only thread, or before other threads start: capabilities are per thread. (migrate-havip
/// runs a current-thread tokio runtime, so its tasks all run on the thread that calls this.)
pub fn keep_only(keep: u64) -> io::Result<u64> {
    drop_bounding(keep);
    clear_ambient()?;
    let now = capget()?;
    capset(CapSets {
        effective: now.effective & keep,
        permitted: now.permitted & keep,
        inheritable: 0,
    })?;
    Ok(capget()?.effective)
}

/// For `Command::pre_exec`: leaves the child with no capability after `exec`. Clears the ambient and the
/// inheritable sets (what an unprivileged exec keeps) and, where possible (`CAP_SETPCAP`, i.e. an agent run
/// as root), the bounding set, so that even a root exec gets nothing. Async-signal-safe: no allocation.
pub fn clear_for_exec() -> io::Result<()> {
    drop_bounding(0);
    clear_ambient()?;
    let now = capget()?;
    capset(CapSets {
        inheritable: 0,
        ..now
    })
}

/// `CapEff` of this process, for logs and tests: the union over all its threads (`/proc/self/task/*/status`),
/// because capabilities are per thread and a thread started before a drop keeps what it had. `None` if
/// unreadable.
pub fn cap_eff() -> Option<u64> {
    let mut eff = 0;
    let mut seen = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        // A thread that ended since the listing has no status any more; it holds nothing either.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        eff |= crate::net::caps::parse_cap_eff(&status)?;
        seen = true;
    }
    seen.then_some(eff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_owned_paths_without_group_or_other_write_pass() {
        struct Row {
            name: &'static str,
            uid: u32,
            mode: u32,
            ok: bool,
        }
        let rows = [
            Row {
                name: "root 0640",
                uid: 0,
                mode: 0o640,
                ok: true,
            },
            Row {
                name: "root 0755 dir",
                uid: 0,
                mode: 0o755,
                ok: true,
            },
            Row {
                name: "user-owned",
                uid: 1000,
                mode: 0o600,
                ok: false,
            },
            Row {
                name: "group-writable",
                uid: 0,
                mode: 0o660,
                ok: false,
            },
            Row {
                name: "world-writable sticky",
                uid: 0,
                mode: 0o1777,
                ok: false,
            },
        ];
        for r in rows {
            let got = ownership_problem(Ownership {
                uid: r.uid,
                mode: r.mode,
            });
            assert_eq!(got.is_none(), r.ok, "{}: {got:?}", r.name);
        }
    }

    #[test]
    fn unprivileged_processes_use_the_requested_path() {
        let got = trusted_config(Path::new("/tmp/x.toml"), Path::new("/etc/a.toml"), false);
        assert_eq!(got, Ok(PathBuf::from("/tmp/x.toml")));
    }

    #[test]
    fn privileged_processes_refuse_another_path_and_say_what_to_do() {
        let e =
            trusted_config(Path::new("/tmp/x.toml"), Path::new("/etc/a.toml"), true).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("refusing config /tmp/x.toml"), "{msg}");
        assert!(msg.contains("reads only /etc/a.toml"), "{msg}");
        assert!(msg.contains("run it as root"), "{msg}");
    }

    #[test]
    fn privileged_processes_refuse_a_trusted_path_in_a_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("conf");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let file = sub.join("config.toml");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let e = trusted_config(&file, &file, true).unwrap_err();
        assert!(
            matches!(&e, TrustError::Unsafe { what: "directory", checked, .. } if *checked == sub.display().to_string()),
            "{e}"
        );
        std::fs::set_permissions(&sub, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // tempdir itself is 0700 root in /tmp (1777): /tmp is the next unsafe one.
        let e = trusted_config(&file, &file, true).unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
    }
}

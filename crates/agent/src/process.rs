//! Process-wide hardening that `havip-agent run` applies first thing: the descriptor limit and core dumps.
//!
//! Owns the two process attributes the unit file cannot fully set for us: the soft `RLIMIT_NOFILE` (systemd's
//! `LimitNOFILE=` sets both, but a manual start or another supervisor leaves the soft limit at 1024), and
//! dumpability, so that a watchdog abort (SIGABRT) cannot write a core with the cloud keys in it whatever
//! `LimitCORE=` or `core_pattern` say.

/// What [`raise_nofile`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileRaise {
    /// The soft limit found.
    pub before: u64,
    /// The soft limit now.
    pub after: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at `fs.nr_open` when the hard limit is
/// unlimited, which the kernel would refuse). Returns the limits before and after.
pub fn raise_nofile() -> std::io::Result<NofileRaise> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target > before {
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(NofileRaise {
        before,
        after: before.max(target),
        hard: lim.rlim_max,
    })
}

/// Marks the process non-dumpable (`PR_SET_DUMPABLE` 0): no core file, and no ptrace attach or
/// `/proc/<pid>/mem` read by the same unprivileged user.
pub fn forbid_core_dumps() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process may dump core (`PR_GET_DUMPABLE`).
pub fn is_dumpable() -> std::io::Result<bool> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r != 0)
}

/// Applies both, logging what was done; a failure is logged and does not stop the agent (it loses a
/// safety margin, not a function).
pub fn harden() {
    match raise_nofile() {
        Ok(r) if r.after > r.before => {
            tracing::info!(
                from = r.before,
                to = r.after,
                hard = r.hard,
                "raised the open-file limit (RLIMIT_NOFILE)"
            )
        }
        Ok(r) => tracing::info!(
            soft = r.after,
            hard = r.hard,
            "open-file limit (RLIMIT_NOFILE) already at its hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)"),
    }
    if let Err(e) = forbid_core_dumps() {
        tracing::warn!(error = %e, "cannot make the process non-dumpable: a crash may write a core with the cloud keys in it");
    }
}

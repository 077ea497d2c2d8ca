//! Test and demo beds: real processes and namespaces, always cleaned up.

pub mod agents;
pub mod fake_sentinel;
pub mod inproc;
pub mod logs;
pub mod netns;
pub mod redis;

/// Makes `cmd`'s process die (SIGKILL) with the thread that spawns it, so that a test or lab killed without
/// unwinding (no `Drop` runs) leaves no Redis, Sentinel or agent behind. Spawn from a long-lived thread or
/// an async context, not from `spawn_blocking`, whose threads come and go.
pub fn die_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

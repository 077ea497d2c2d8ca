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

/// The product binary `name` (`havip-agent`, `migrate-havip`) of this build, for tests and benches outside
/// the product's package, which cargo gives no `CARGO_BIN_EXE_*` for: looked up next to the running
/// executable (`target/<profile>/deps/..`). `cargo test` on the workspace builds it first; alone, build it
/// with `cargo build -p havip-agent`.
pub fn product_bin(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{name} is not built next to {} (build it: cargo build -p havip-agent)",
                exe.display()
            )
        })
}

//! What the lab's benchmarks (`benches/lab.rs`, `benches/faults.rs`) read from their environment, and the
//! machine line they print with their tables.

use std::time::Duration;

/// A comma list in `$name`, each entry parsed by `parse` (a bench knob such as `LAB_SCENARIOS=1,2`); `all`
/// when unset or empty. Panics naming the variable and the entry on an unknown one: a bench is run by hand.
pub fn env_list<T>(name: &str, parse: impl Fn(&str) -> Option<T>, all: &[T]) -> Vec<T>
where
    T: Copy,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| parse(s.trim()).unwrap_or_else(|| panic!("{name}: unknown entry {s:?}")))
            .collect(),
        _ => all.to_vec(),
    }
}

/// `$name` in whole seconds, or `default`.
pub fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// The machine, for the header of a bench's table: CPU, cores, memory, kernel and Redis version.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {:.0} GiB, Linux {kernel}; {redis}",
        mem_kb as f64 / 1024.0 / 1024.0
    )
}

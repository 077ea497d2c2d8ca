//! The idle footprint, side by side: the agent and the seed's keepalived (with the `redis-cli` its
//! `vrrp_script` forks every second) on the lab's real Redis + 3 Sentinels + 1 HAVIP, defaults, nothing
//! happening. Measured on the master host and on a replica host, in alternating rounds of one invocation.
//!
//! `cargo bench -p havip-lab --bench idle` (as root), after `cargo build --release -p havip-agent` (the
//! shipped build; the bench finds it next to itself in `target/release`). Knobs (environment):
//! - `IDLE_SECS`: the measured window, seconds (default 60);
//! - `IDLE_WARMUP_SECS`: from the initial state to the window, seconds (default 5);
//! - `IDLE_ROUNDS`: rounds; each runs every entry once, in turn (default 3);
//! - `IDLE_AGENT_BINS`: comma list of `label=path` agent binaries to compare in the same run (default one,
//!   `agent=<target/release/havip-agent>`), e.g. a copy of the binary before a change and after it; a
//!   `@<duration>` suffix sets that entry's `sentinel.heartbeat` (`slow=/tmp/havip-agent@200ms`);
//! - `IDLE_METHODS`: comma list of `agent,keepalived` (default both);
//! - `LAB_AGENT_LOG`: the agent's `HAVIP_LOG` (this bench sets the product's default, `info`, when unset).
//!
//! Prints one line per run as it finishes, then per host role the medians over the rounds and each agent's
//! CPU as a ratio to keepalived's. Under `cargo test` (no `--bench` argument) it does nothing.

use std::path::PathBuf;
use std::time::Duration;

use havip_lab::bench_env::{env_list, env_secs, machine};
use havip_lab::idle::{HostIdle, IdleOptions, ROLES};
use havip_lab::{Binaries, Method};

/// One thing measured: a method, and for the agent which binary.
#[derive(Debug, Clone)]
struct Entry {
    label: String,
    method: Method,
    binaries: Binaries,
    sentinel_settings: Vec<String>,
}

fn entries() -> Vec<Entry> {
    let methods = env_list(
        "IDLE_METHODS",
        Method::parse,
        &[Method::Agent, Method::Keepalived],
    );
    let mut out = Vec::new();
    for m in methods {
        match m {
            Method::Agent => match std::env::var("IDLE_AGENT_BINS") {
                Ok(list) if !list.trim().is_empty() => {
                    for item in list.split(',') {
                        let (label, rest) = item.split_once('=').unwrap_or_else(|| {
                            panic!("IDLE_AGENT_BINS: {item:?} is not label=path[@heartbeat]")
                        });
                        let (path, heartbeat) = match rest.split_once('@') {
                            Some((p, h)) => (p, Some(h.trim())),
                            None => (rest, None),
                        };
                        out.push(Entry {
                            label: label.trim().to_owned(),
                            method: m,
                            binaries: Binaries {
                                agent: Some(PathBuf::from(path.trim())),
                                migrate: None,
                            },
                            sentinel_settings: heartbeat
                                .map(|h| vec![format!("heartbeat = \"{h}\"")])
                                .unwrap_or_default(),
                        });
                    }
                }
                _ => out.push(Entry {
                    label: "agent".into(),
                    method: m,
                    binaries: Binaries::from_target_dir(),
                    sentinel_settings: Vec::new(),
                }),
            },
            Method::Keepalived => out.push(Entry {
                label: "keepalived".into(),
                method: m,
                binaries: Binaries::default(),
                sentinel_settings: Vec::new(),
            }),
            other => panic!("IDLE_METHODS: {other} has no long-running process"),
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("idle bench: run it with `cargo bench -p havip-lab --bench idle` (as root)");
        return;
    }
    if std::env::var_os("LAB_AGENT_LOG").is_none() {
        // SAFETY: single-threaded here; nothing else reads the environment concurrently yet.
        unsafe { std::env::set_var("LAB_AGENT_LOG", havip_agent::logging::DEFAULT_FILTER) };
    }
    let rounds: usize = std::env::var("IDLE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let entries = entries();
    let opts = IdleOptions {
        warmup: env_secs("IDLE_WARMUP_SECS", 5),
        window: env_secs("IDLE_SECS", 60),
        sample_every: Duration::from_secs(1),
        binaries: Binaries::default(),
        sentinel_settings: Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("machine: {}", machine());
    println!(
        "window {:?} after a {:?} warm-up, {rounds} rounds, entries: {}",
        opts.window,
        opts.warmup,
        entries
            .iter()
            .map(|e| format!("{} ({:?})", e.label, e.binaries.agent))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // results[entry][role] = one HostIdle per round.
    let mut results: Vec<Vec<Vec<HostIdle>>> = vec![vec![Vec::new(); ROLES.len()]; entries.len()];
    for round in 0..rounds {
        for (e, entry) in entries.iter().enumerate() {
            let run_opts = IdleOptions {
                binaries: entry.binaries.clone(),
                sentinel_settings: entry.sentinel_settings.clone(),
                ..opts.clone()
            };
            match rt.block_on(havip_lab::idle::run(entry.method, &run_opts)) {
                Ok(hosts) => {
                    for ((role, _), h) in ROLES.iter().zip(hosts) {
                        println!(
                            "round {} {:<12} {:<13} cpu {:.2} s / {:.0} s ({:.3} % of a core), rss median {:.1} MiB ({} processes)",
                            round + 1,
                            entry.label,
                            role,
                            h.cpu_s,
                            h.window_s,
                            h.core_pct(),
                            h.rss_median_mib(),
                            h.processes
                        );
                        let r = ROLES.iter().position(|(x, _)| x == role).unwrap_or(0);
                        results[e][r].push(h);
                    }
                }
                Err(e) => println!("round {} {}: FAILED: {e:#}", round + 1, entry.label),
            }
        }
    }
    let keepalived = entries.iter().position(|e| e.method == Method::Keepalived);
    println!();
    println!(
        "| VIP manager | host | runs | CPU s per 60 s (median) | share of a core | RSS median MiB | CPU ratio to keepalived |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (r, (role, _)) in ROLES.iter().enumerate() {
        let ka_cpu =
            keepalived.map(|k| median(results[k][r].iter().map(HostIdle::cpu_per_min).collect()));
        for (e, entry) in entries.iter().enumerate() {
            let runs = &results[e][r];
            let cpu = median(runs.iter().map(HostIdle::cpu_per_min).collect());
            let rss = median(runs.iter().map(HostIdle::rss_median_mib).collect());
            let ratio = match ka_cpu {
                Some(k) if k > 0.0 => format!("{:.2}", cpu / k),
                _ => "-".into(),
            };
            println!(
                "| {} | {role} | {} | {cpu:.2} | {:.2} % | {rss:.1} | {ratio} |",
                entry.label,
                runs.len(),
                cpu / 60.0 * 100.0
            );
        }
    }
}

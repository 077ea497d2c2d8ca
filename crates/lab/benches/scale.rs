//! Issue 13's scale comparison: N masters on one host, their replicas on another, one Sentinel set of
//! three, one HAVIP per master, the fake cloud limiting every API action to 20 requests/s, the master
//! host's link cut; the agent against `migrate-havip` as Sentinel's script.
//!
//! `cargo bench --bench scale` (as root, after `cargo build --release -p havip-agent`). Knobs (environment):
//! - `SCALE_MASTERS`: masters (and HAVIPs), default 20;
//! - `SCALE_ROUNDS`: runs per method, default 1;
//! - `SCALE_METHODS`: comma list of `agent,migrate` (default both);
//! - `SCALE_DETAIL=1`: print every run's per-HAVIP figures;
//! - `LAB_KEEP=1`: keep every run's directory (configs, logs).
//!
//! Prints one table row per run as it finishes, then the table over all runs (per method, pooled). Under
//! `cargo test` (no `--bench` argument) it does nothing.

use havip_lab::bench_env::{env_list, machine};
use havip_lab::scale::{DEFAULT_MASTERS, ScaleOptions, env_usize, run_scale, table};
use havip_lab::{Binaries, Method};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale bench: run it with `cargo bench --bench scale` (as root)");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let masters = env_usize("SCALE_MASTERS", DEFAULT_MASTERS).unwrap_or_else(|e| panic!("{e:#}"));
    let rounds = env_usize("SCALE_ROUNDS", 1).unwrap_or_else(|e| panic!("{e:#}"));
    let methods = env_list(
        "SCALE_METHODS",
        Method::parse,
        &[Method::Agent, Method::Migrate],
    );
    let detail = std::env::var_os("SCALE_DETAIL").is_some();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("machine: {}", machine());
    let mut reports = Vec::new();
    for round in 1..=rounds {
        for method in &methods {
            let opts = ScaleOptions {
                method: *method,
                masters,
                // The release binaries next to this bench.
                binaries: Binaries::from_target_dir(),
                ..ScaleOptions::default()
            };
            match rt.block_on(run_scale(&opts)) {
                Ok(o) => {
                    println!("round {round}, {method}:");
                    print!("{}", table(std::slice::from_ref(&o.report)));
                    let r = &o.report;
                    println!(
                        "start-up calls {} ({} throttled); GARPs dropped by the per-NIC limit {}; Sentinel elections aborted {}; netlink read errors {}; notes {:?}",
                        r.setup_calls.calls,
                        r.setup_calls.throttled,
                        r.garps_rate_limited,
                        r.elections_aborted,
                        r.netlink_errors,
                        r.notes
                    );
                    for f in &r.failed_claims {
                        println!("failed claim: {f}");
                    }
                    if detail {
                        print!("{}", r.detail());
                    }
                    reports.push(o.report);
                }
                Err(e) => println!("round {round}, {method}: run failed: {e:#}"),
            }
        }
    }
    println!(
        "\n{masters} masters, one Sentinel set (3, quorum 2), 20 requests/s per action, move delay 0, master host's link cut:\n"
    );
    print!("{}", table(&reports));
}

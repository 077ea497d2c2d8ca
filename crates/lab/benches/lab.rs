//! The failover lab's comparison: every scenario, several runs, for each VIP manager (the agent,
//! `migrate-havip` as reconfig script, the seed's script, the seed's keepalived), in one run.
//!
//! `cargo bench --bench lab` (as root). Knobs (environment):
//! - `LAB_RUNS`: runs per scenario and method (default 3);
//! - `LAB_METHODS`: comma list of `agent,migrate,seed-script,keepalived` (default all);
//! - `LAB_SCENARIOS`: comma list of 1..5 (default all);
//! - `LAB_OUT`: where the Markdown table goes (default `target/lab-comparison.md`);
//! - `LAB_HOLD_S`, `LAB_AFTER_HEAL_S`: fault hold and post-heal observation, seconds (default 10 and 10);
//! - `LAB_MOVE_DELAY_MS`: comma list of the fake cloud's move delays, ms (default `0`); every scenario and
//!   method runs with each;
//! - `LAB_KEEP=1`: keep every run's directory (configs, logs);
//! - `LAB_TIMELINE=1`: print every run's timeline (events, VIP bindings, GARPs, API calls, client gaps).
//!
//! Prints one row per run as it finishes, then the comparison table (also written to `LAB_OUT` after every
//! run, so a bench stopped early leaves the table so far); a run that fails is reported and skipped. Under
//! `cargo test` (no `--bench` argument) it does nothing.

use std::time::{Duration, Instant};

use havip_lab::bench_env::{env_list, env_secs, machine};
use havip_lab::{Binaries, Comparison, Method, RunOptions, RunReport, Scenario};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("lab bench: run it with `cargo bench --bench lab` (as root)");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runs: usize = std::env::var("LAB_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let methods = env_list("LAB_METHODS", Method::parse, &Method::ALL);
    let scenarios = env_list(
        "LAB_SCENARIOS",
        |s| s.parse().ok().and_then(Scenario::from_number),
        &Scenario::ALL,
    );
    let delays = env_list(
        "LAB_MOVE_DELAY_MS",
        |s| s.parse::<u64>().ok().map(Duration::from_millis),
        &[Duration::ZERO],
    );
    let out_path = std::env::var("LAB_OUT").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/lab-comparison.md"
        )
        .into()
    });
    let base = RunOptions {
        hold: env_secs("LAB_HOLD_S", 10),
        after_heal: env_secs("LAB_AFTER_HEAL_S", 10),
        // The release binaries next to this bench (`cargo build --release -p havip-agent` first).
        binaries: Binaries::from_target_dir(),
        ..RunOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let mut reports: Vec<RunReport> = Vec::new();
    let mut failures = Vec::new();
    println!("{}", RunReport::header());
    // Interleave methods within each round so slow drifts of the machine hit every method alike.
    for round in 0..runs {
        for &sc in &scenarios {
            for &delay in &delays {
                for &m in &methods {
                    if !sc.applies_to(m) {
                        continue;
                    }
                    let opts = RunOptions {
                        move_delay: delay,
                        ..base.clone()
                    };
                    match rt.block_on(havip_lab::run(m, sc, &opts)) {
                        Ok(outcome) => {
                            println!("{}", outcome.report.row());
                            for n in &outcome.report.notes {
                                println!("    note: {n}");
                            }
                            if std::env::var_os("LAB_TIMELINE").is_some() {
                                println!("{}", havip_lab::report::timeline_text(&outcome.records));
                            }
                            reports.push(outcome.report);
                            // The table so far, after every run: a bench stopped early keeps it.
                            let doc = document(&reports, &failures, runs, &delays, started, false);
                            if let Err(e) = std::fs::write(&out_path, doc) {
                                eprintln!("cannot write {out_path}: {e}");
                            }
                        }
                        Err(e) => {
                            println!(
                                "{:<11} {:<2} {:>5} run {round} FAILED: {e:#}",
                                m.name(),
                                sc.number(),
                                delay.as_millis()
                            );
                            failures.push(format!(
                                "{m} scenario {} move delay {} ms run {round}: {e:#}",
                                sc.number(),
                                delay.as_millis()
                            ));
                        }
                    }
                }
            }
        }
    }
    let doc = document(&reports, &failures, runs, &delays, started, true);
    println!("\n{doc}");
    if let Err(e) = std::fs::write(&out_path, &doc) {
        eprintln!("cannot write {out_path}: {e}");
    } else {
        println!("written to {out_path}");
    }
}

/// The Markdown report: machine, command, the comparison table and the failed runs.
fn document(
    reports: &[RunReport],
    failures: &[String],
    runs: usize,
    delays: &[Duration],
    started: Instant,
    complete: bool,
) -> String {
    let mut doc = String::new();
    doc.push_str(&format!(
        "Machine: {}\n\nCommand: `LAB_RUNS={runs} LAB_MOVE_DELAY_MS={} cargo bench --bench lab` ({} runs in {:.0} s{})\n\n",
        machine(),
        delays
            .iter()
            .map(|d| d.as_millis().to_string())
            .collect::<Vec<_>>()
            .join(","),
        reports.len(),
        started.elapsed().as_secs_f64(),
        if complete { "" } else { ", still running" }
    ));
    doc.push_str(&Comparison::new(reports).markdown());
    if !failures.is_empty() {
        doc.push_str("\nRuns that failed:\n");
        for f in failures {
            doc.push_str(&format!("- {f}\n"));
        }
    }
    doc
}

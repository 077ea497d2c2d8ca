//! The fault matrix (issue 11): the agent on the real Sentinel lab, one run per fault and row.
//!
//! `cargo bench --bench faults` (as root). Knobs (environment):
//! - `FAULTS_ROWS`: which rows, `all` or numbers and ranges (`1,2,5-7`; default all 16);
//! - `FAULTS_RUNS`: runs per row (default 1);
//! - `FAULTS_OUT`: where the Markdown table goes (default `target/fault-matrix.md`);
//! - `LAB_HOLD_S`, `LAB_AFTER_HEAL_S`: fault hold and post-heal observation, seconds (default 10 and 10;
//!   row 16 holds at least 30 s);
//! - `LAB_KEEP=1`: keep every run's directory (configs, logs);
//! - `LAB_TIMELINE=1`: print every run's timeline.
//!
//! Prints one line per run as it finishes, then the table (also written to `FAULTS_OUT` after every run,
//! so a bench stopped early leaves the table so far); a run that fails is reported and listed. Under
//! `cargo test` (no `--bench` argument) it does nothing.

use std::time::Instant;

use havip_lab::Binaries;
use havip_lab::bench_env::{env_secs, machine};
use havip_lab::faults::{FaultOptions, Row, RowReport, matrix_markdown, run_row};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("faults bench: run it with `cargo bench --bench faults` (as root)");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rows_text = std::env::var("FAULTS_ROWS").unwrap_or_default();
    let rows = match Row::parse_list(&rows_text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("FAULTS_ROWS: {e}");
            std::process::exit(2);
        }
    };
    let runs: usize = std::env::var("FAULTS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let out_path = std::env::var("FAULTS_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/fault-matrix.md").into()
    });
    let opts = FaultOptions {
        hold: env_secs("LAB_HOLD_S", 10),
        after_heal: env_secs("LAB_AFTER_HEAL_S", 10),
        // The release binaries next to this bench (`cargo build --release -p havip-agent` first).
        binaries: Binaries::from_target_dir(),
        ..FaultOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut reports: Vec<RowReport> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for round in 0..runs {
        for &row in &rows {
            match rt.block_on(run_row(row, &opts)) {
                Ok(outcome) => {
                    println!("{}", outcome.report.line());
                    for o in &outcome.report.observations {
                        println!("    saw: {o}");
                    }
                    for n in &outcome.report.run.notes {
                        println!("    note: {n}");
                    }
                    if std::env::var_os("LAB_TIMELINE").is_some() {
                        println!("{}", havip_lab::report::timeline_text(&outcome.records));
                    }
                    if !outcome.report.ended_on_master || outcome.report.run.lost.counted() > 0 {
                        let tail: Vec<&str> = outcome.manager_logs.lines().collect();
                        println!(
                            "    --- agents' logs (last 60 lines) ---\n{}\n    --- redis ---\n{}",
                            tail[tail.len().saturating_sub(60)..].join("\n"),
                            outcome.redis_logs
                        );
                    }
                    reports.push(outcome.report);
                }
                Err(e) => {
                    println!("row {row} run {round} FAILED: {e:#}");
                    failures.push(format!("row {row} run {round}: {e:#}"));
                }
            }
            let doc = document(&reports, &failures, &rows_text, runs, &date, started, false);
            if let Err(e) = std::fs::write(&out_path, doc) {
                eprintln!("cannot write {out_path}: {e}");
            }
        }
    }
    let doc = document(&reports, &failures, &rows_text, runs, &date, started, true);
    println!("\n{doc}");
    match std::fs::write(&out_path, &doc) {
        Ok(()) => println!("written to {out_path}"),
        Err(e) => eprintln!("cannot write {out_path}: {e}"),
    }
}

fn document(
    reports: &[RowReport],
    failures: &[String],
    rows: &str,
    runs: usize,
    date: &str,
    started: Instant,
    complete: bool,
) -> String {
    let mut doc = format!(
        "Machine: {}\n\nStarted: {date}. Command: `FAULTS_ROWS={} FAULTS_RUNS={runs} cargo bench --bench faults` \
         ({} runs in {:.0} s{})\n\n",
        machine(),
        if rows.trim().is_empty() {
            "all"
        } else {
            rows.trim()
        },
        reports.len(),
        started.elapsed().as_secs_f64(),
        if complete { "" } else { ", still running" }
    );
    doc.push_str(&matrix_markdown(reports));
    if !failures.is_empty() {
        doc.push_str("\nRuns that failed:\n");
        for f in failures {
            doc.push_str(&format!("- {f}\n"));
        }
    }
    doc
}

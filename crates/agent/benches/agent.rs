//! Agent benchmarks (`cargo bench --bench agent`):
//!
//! 1. Reaction latency. On a real Sentinel lab with three in-process agents (`testbed::agents`), run
//!    `SENTINEL FAILOVER` repeatedly. For each switch, measure from the first Sentinel answer that shows the
//!    new master (the watcher's `first_seen`) to the new master's VIP bound, its first GARP, and its first
//!    API request after the switch (the confirming `DescribeHaVips`; with `scope = "inclusive"` the drift
//!    range is prepared at start, so no API call precedes the GARP). Reports p50/p90/p99.
//! 2. Idle footprint. A real `havip-agent run` process (kernel binder, in a network namespace) with three
//!    Sentinels and one HAVIP: RSS, and CPU time over a window (default 60 s).
//!
//! Knobs: `BENCH_FAILOVERS` (default 30), `BENCH_IDLE_SECS` (default 60), `BENCH_ONLY` (`reaction` or
//! `idle`).

use std::time::{Duration, SystemTime};

use havip_agent::claim::Step;
use havip_agent::daemon::AgentEventKind;
use havip_testkit::testbed::agents::{Fleet, FleetSpec, HAVIP_ID};
use tokio::time::Instant;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

async fn reaction(failovers: u64) -> String {
    let fleet = Fleet::start(FleetSpec {
        initial_range: vec![0, 1, 2],
        ..FleetSpec::default()
    })
    .await
    .expect("fleet");
    let mut to_bound = Vec::new();
    let mut to_garp = Vec::new();
    let mut to_api = Vec::new();
    // A common clock for tokio Instants, std Instants and the fake's SystemTimes.
    let (base_t, base_w) = (Instant::now(), SystemTime::now());
    let wall_to_instant = |w: SystemTime| -> Instant {
        match w.duration_since(base_w) {
            Ok(d) => base_t + d,
            Err(e) => base_t - e.duration(),
        }
    };
    let ms = |a: Instant, b: Instant| (a.saturating_duration_since(b)).as_secs_f64() * 1e3;
    let mut done = 0;
    let mut attempts = 0;
    while done < failovers && attempts < failovers * 2 {
        attempts += 1;
        let master = fleet
            .lab
            .wait_master(|_| true, Duration::from_secs(30))
            .await
            .expect("master");
        let old = fleet.lab.node_of(master).unwrap();
        if fleet.lab.wait_ready(Duration::from_secs(60)).await.is_err() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while fleet.holders() != vec![old] && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut rxs: Vec<_> = fleet.nodes.iter().map(|n| n.events.subscribe()).collect();
        let mut snaps: Vec<_> = (0..3)
            .map(|i| fleet.agent(i).unwrap().watcher().snapshots())
            .collect();
        let started_w = SystemTime::now();
        let r = fleet
            .lab
            .sentinel_command(old, &["SENTINEL", "FAILOVER", "mymaster"])
            .await;
        if r.is_err() {
            continue;
        }
        // Wait for a new holder that the cloud confirms.
        let deadline = Instant::now() + Duration::from_secs(30);
        let new = loop {
            let h = fleet.holders();
            if h.len() == 1 && h[0] != old && fleet.cloud_holder() == Some(h[0]) {
                break Some(h[0]);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let Some(new) = new else { continue };
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The first Sentinel answer showing the new master, as the new master's own watcher saw it.
        let snap = snaps[new].borrow_and_update().clone();
        let Some(first) = snap.newest("mymaster").and_then(|n| n.first_seen) else {
            continue;
        };
        let first = Instant::from_std(first);
        let mut bound = None;
        let mut garp = None;
        while let Ok(e) = rxs[new].try_recv() {
            match e.kind {
                AgentEventKind::Claim(Step::Bound { already: false }) if bound.is_none() => {
                    bound = Some(e.at)
                }
                AgentEventKind::Claim(Step::Announced { .. }) if garp.is_none() => {
                    garp = Some(e.at)
                }
                _ => {}
            }
        }
        let api = fleet
            .cloud
            .requests()
            .into_iter()
            .filter(|r| r.at >= started_w && r.body.to_string().contains(HAVIP_ID))
            .map(|r| wall_to_instant(r.at))
            .find(|t| *t >= first);
        if let (Some(b), Some(g), Some(a)) = (bound, garp, api) {
            to_bound.push(ms(b, first));
            to_garp.push(ms(g, first));
            to_api.push(ms(a, first));
            done += 1;
            eprintln!(
                "failover {done}: node{} -> node{}: bound +{:.2} ms, garp +{:.2} ms, first api +{:.2} ms",
                old + 1,
                new + 1,
                ms(b, first),
                ms(g, first),
                ms(a, first)
            );
        }
        let _ = &mut snaps;
    }
    fleet.shutdown().await;
    format!(
        "| from the first Sentinel answer showing the new master to | n | p50 ms | p90 ms | p99 ms | min | max |\n|---|---|---|---|---|---|---|\n{}\n{}\n{}\n",
        summary("VIP bound", to_bound),
        summary("first GARP", to_garp),
        summary("first API request (the confirming DescribeHaVips)", to_api),
    )
}

fn idle(secs: u64) -> String {
    use havip_testkit::testbed::netns::Netns;
    use havip_testkit::testbed::redis::{LabHost, LabSpec, RedisLab};
    let ns = Netns::new("idle").expect("namespace (run as root)");
    ns.veth_pair_inside("eth0", "eth0p").expect("veth");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hosts: Vec<LabHost> = (0..3)
        .map(|i| LabHost {
            ip: format!("127.0.0.{}", 11 + i).parse().unwrap(),
            netns: Some(ns.name().to_owned()),
        })
        .collect();
    let lab = rt
        .block_on(RedisLab::start(LabSpec {
            hosts: Some(hosts),
            ..LabSpec::default()
        }))
        .expect("lab");
    let listener = ns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("listener in the namespace");
    let cloud = rt.block_on(havip_testkit::fake::FakeCloud::start_on(listener));
    cloud.add_key("AKIDidle", "idlekey");
    cloud.add_havip(
        havip_testkit::fake::HavipSpec::new(HAVIP_ID, "198.18.0.100".parse().unwrap())
            .check_associate(true),
    );
    let dir = tempfile::tempdir().unwrap();
    let sentinels: Vec<String> = lab
        .sentinel_addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[cloud]\nregion = \"ap-guangzhou\"\nendpoint = \"{}\"\n\n[node]\ninstance_id = \"ins-idle\"\naddress = \"127.0.0.99\"\ninterface = \"eth0\"\n\n[sentinel]\naddresses = [{}]\n\n[[havip]]\nmaster = \"mymaster\"\nhavip_id = \"{HAVIP_ID}\"\nvip = \"198.18.0.100/24\"\n\n[claim]\nlock_dir = \"{}\"\n",
            cloud.endpoint(),
            sentinels.join(", "),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = ns
        .command(env!("CARGO_BIN_EXE_havip-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("TENCENTCLOUD_SECRET_ID", "AKIDidle")
        .env("TENCENTCLOUD_SECRET_KEY", "idlekey")
        .env("HAVIP_LOG", "warn")
        .spawn()
        .expect("agent");
    let pid = child.id();
    let ticks = |pid: u32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let rss_kib = |pid: u32| -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    // Warm up: connected to every Sentinel.
    std::thread::sleep(Duration::from_secs(5));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert!(
        comm.trim().starts_with("havip-agent"),
        "pid {pid} is {comm:?}, not the agent"
    );
    let t0 = ticks(pid).expect("cpu ticks");
    let start = std::time::Instant::now();
    let mut rss = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        if let Some(r) = rss_kib(pid) {
            rss.push(r);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let t1 = ticks(pid).expect("cpu ticks");
    let elapsed = start.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_s = (t1 - t0) as f64 / hz;
    let _ = child.kill();
    let _ = child.wait();
    drop(lab);
    rss.sort_unstable();
    format!(
        "| idle window | RSS median | RSS max | CPU time | CPU share of one core |\n|---|---|---|---|---|\n| {elapsed:.0} s | {:.1} MiB | {:.1} MiB | {cpu_s:.2} s | {:.2} % |\n",
        rss[rss.len() / 2] as f64 / 1024.0,
        *rss.last().unwrap() as f64 / 1024.0,
        100.0 * cpu_s / elapsed
    )
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let machine = format!(
        "{} cores, kernel {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("machine: {machine}");
    if only.is_empty() || only == "reaction" {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let table = rt.block_on(reaction(env_num("BENCH_FAILOVERS", 30)));
        println!(
            "\nreaction latency (SENTINEL FAILOVER, three in-process agents, fake cloud on loopback)\n{table}"
        );
    }
    if only.is_empty() || only == "idle" {
        let table = idle(env_num("BENCH_IDLE_SECS", 60));
        println!("\nidle footprint of `havip-agent run` (3 Sentinels, 1 HAVIP)\n{table}");
    }
}

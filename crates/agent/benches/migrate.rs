//! How long a claim takes, from process start to the VIP being bound, with the fake cloud on loopback.
//!
//! Run: `cargo bench --bench migrate` (optionally `-- --runs N`, default 30). Needs root (it creates a
//! network namespace with a veth pair; addresses in 198.18.0.0/15) and iproute2.
//!
//! What is measured, per run, for the `migrate-havip` binary (spawned directly inside the namespace, the
//! way Sentinel forks and execs its script: no shell, no `ip netns exec`):
//! - start -> VIP bound: from just before `spawn()` to the kernel's `RTM_NEWADDR` for the VIP, read by a
//!   netlink listener on its own thread (independent of the agent's netlink code);
//! - start -> first GARP: to the first gratuitous ARP for the VIP seen on the veth peer (the fake's watcher);
//! - start -> exit 0: until the process has exited after the cloud confirmed the move.
//!
//! And, for comparison, `Claimer::claim` in-process (client, netlink socket and packet socket already
//! open): call -> bound, call -> first GARP round sent, call -> confirmed. Each case runs with this instance
//! already in the drift range (no write call) and with an empty range (one `AssociateHaVipInstance` before
//! the first GARP). The fake's GARP watcher moves the holder, so every claim is confirmed. Last, the
//! fallback: the binary with the API refusing connections (bound and first GARP; it exits 1 at the deadline).
//!
//! Prints a table and appends it, with the machine and the command, to `BENCHMARKS.md` under
//! "## migrate-havip latency".

#[path = "../tests/migrate_support/mod.rs"]
mod migrate_support;

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use havip_agent::claim::{ClaimOptions, Step, StepEvent};
use havip_agent::config::Scope;
use havip_agent::net::{KernelNet, LocalNet};
use havip_testkit::fake::{FakeCloud, GarpWatch, HavipSpec};
use havip_testkit::testbed::netns::Netns;
use migrate_support::*;

const SECTION: &str = "## migrate-havip latency";

fn main() {
    let runs = parse_runs();
    assert!(
        havip_agent::net::missing_capabilities().is_empty(),
        "the benchmark needs root (CAP_NET_ADMIN, CAP_NET_RAW, and CAP_SYS_ADMIN for `ip netns`)"
    );
    let bench = Bench::new();
    // One untimed run of each kind: page cache, first netlink and socket set-up.
    bench.binary_run(true);
    let _ = bench.in_process(1, true);

    let mut rows = Vec::new();
    for in_range in [true, false] {
        let label = if in_range {
            "in range"
        } else {
            "empty range: associates first"
        };
        let samples: Vec<BinarySample> = (0..runs).map(|_| bench.binary_run(in_range)).collect();
        rows.push(Row::new(
            format!("migrate-havip ({label})"),
            "start -> VIP bound",
            samples.iter().map(|s| s.bound).collect(),
        ));
        rows.push(Row::new(
            format!("migrate-havip ({label})"),
            "start -> first GARP",
            samples.iter().map(|s| s.first_garp).collect(),
        ));
        rows.push(Row::new(
            format!("migrate-havip ({label})"),
            "start -> exit 0 (confirmed)",
            samples.iter().map(|s| s.exit).collect(),
        ));
        let samples = bench.in_process(runs, in_range);
        rows.push(Row::new(
            format!("Claimer::claim ({label})"),
            "call -> VIP bound",
            samples.iter().map(|s| s.bound).collect(),
        ));
        rows.push(Row::new(
            format!("Claimer::claim ({label})"),
            "call -> first GARP sent",
            samples.iter().map(|s| s.first_garp).collect(),
        ));
        rows.push(Row::new(
            format!("Claimer::claim ({label})"),
            "call -> confirmed",
            samples.iter().map(|s| s.confirmed).collect(),
        ));
    }
    // The fallback: the API refuses connections. The VIP is still bound and announced; the command exits 1
    // at `claim.deadline` (2s here, to keep the benchmark short).
    let label = "migrate-havip (API unreachable)";
    let samples: Vec<BinarySample> = (0..runs)
        .map(|_| bench.run_binary(&bench.cfg_down, true, 1))
        .collect();
    rows.push(Row::new(
        label.into(),
        "start -> VIP bound",
        samples.iter().map(|s| s.bound).collect(),
    ));
    rows.push(Row::new(
        label.into(),
        "start -> first GARP",
        samples.iter().map(|s| s.first_garp).collect(),
    ));
    let report = report(runs, &rows);
    println!("{report}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md");
    append_section(&path, &report);
    println!("appended to {}", path.display());
}

fn parse_runs() -> usize {
    let mut args = std::env::args().skip(1);
    let mut runs = 30;
    // cargo bench passes --bench; other harness flags do not apply here.
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .expect("--runs takes a positive number");
        }
    }
    runs
}

struct Bench {
    watch: GarpWatch,
    monitor: AddrMonitor,
    fake: FakeCloud,
    cfg: std::path::PathBuf,
    cfg_down: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _sentinels: Vec<havip_testkit::testbed::fake_sentinel::FakeSentinel>,
    _rt: tokio::runtime::Runtime,
    ns: Netns,
}

struct BinarySample {
    bound: Duration,
    first_garp: Duration,
    exit: Duration,
}

struct ClaimSample {
    bound: Duration,
    first_garp: Duration,
    confirmed: Duration,
}

impl Bench {
    fn new() -> Bench {
        let ns = ns_with_nics("mig-bench", &[("eth0", "peer0")]);
        ns.add_addr("eth0", "198.18.0.2/24").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fake = rt.block_on(fake_in(&ns));
        fake.add_instance("ins-a", ns.mac("eth0").unwrap());
        fake.add_instance("ins-b", [0x02, 0, 0, 0, 0, 0x0b]);
        let watch = watch_in(&ns, &fake, "peer0");
        // Sentinel's form asks the Sentinels first: three that name this node, answering at once.
        let sentinels = fake_sentinels_on(&ns, master_at("198.18.0.2", 1));
        let dir = tempfile::tempdir().unwrap();
        let mut node = NodeFile::new(&fake.endpoint(), &dir.path().join("lock"));
        node.sentinels = sentinels.iter().map(|s| s.addr().to_owned()).collect();
        // The shipped defaults for what a claim does; only the test addresses differ.
        node.cloud_timeout = "3s".into();
        node.deadline = "15s".into();
        let cfg = node.write(dir.path(), "config.toml");
        node.endpoint = "http://127.0.0.1:1".into();
        node.deadline = "2s".into();
        let cfg_down = node.write(dir.path(), "config-down.toml");
        Bench {
            monitor: AddrMonitor::start(&ns),
            watch,
            fake,
            cfg,
            cfg_down,
            _dir: dir,
            _sentinels: sentinels,
            _rt: rt,
            ns,
        }
    }

    /// The VIP unbound, ins-b holding it, ins-a in the drift range or not.
    fn reset(&self, in_range: bool) {
        if self
            .ns
            .ipv4_addrs("eth0")
            .unwrap()
            .contains(&VIP.to_owned())
        {
            self.ns.del_addr("eth0", VIP).unwrap();
        }
        let mut spec = HavipSpec::new(HAVIP_ID, vip_addr())
            .check_associate(true)
            .associate("ins-b");
        if in_range {
            spec = spec.associate("ins-a");
        }
        self.fake.add_havip(spec.holder("ins-b"));
        self.monitor.settle(&self.ns);
    }

    fn binary_run(&self, in_range: bool) -> BinarySample {
        self.run_binary(&self.cfg, in_range, 0)
    }

    fn run_binary(&self, cfg: &std::path::Path, in_range: bool, want_code: i32) -> BinarySample {
        self.reset(in_range);
        let garps_from = self.watch.seen().len();
        let cfg = cfg.to_owned();
        let (child, t0, w0) = self.ns.run(move || {
            let mut cmd = Command::new(migrate_bin());
            cmd.args([
                MASTER,
                "leader",
                "start",
                "198.18.0.3",
                "6379",
                "198.18.0.2",
                "6379",
            ]);
            clean_env(&mut cmd);
            // `BENCH_TRACE=1`: every run logs at debug and the bench prints each run's log with its
            // start time, to see where the time before the first GARP goes.
            let level = if std::env::var_os("BENCH_TRACE").is_some() {
                "debug"
            } else {
                "info"
            };
            cmd.env("HAVIP_LOG", level)
                .env("HAVIP_AGENT_CONFIG", cfg)
                .envs(cred_env())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let w0 = SystemTime::now();
            let t0 = Instant::now();
            let child = cmd.spawn().expect("spawning migrate-havip");
            (child, t0, w0)
        });
        let out = child.wait_with_output().expect("waiting for migrate-havip");
        let exit = t0.elapsed();
        if std::env::var_os("BENCH_TRACE").is_some() {
            let start = chrono::DateTime::<chrono::Utc>::from(w0);
            println!(
                "--- spawned at {}\n{}",
                start.format("%H:%M:%S%.6f"),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            out.status.code() == Some(want_code),
            "migrate-havip: {} (wanted exit {want_code}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let bound = self
            .monitor
            .wait(patience(), |e| {
                e.added && e.addr == vip_addr() && e.at >= t0
            })
            .expect("the kernel never reported the vip");
        let first_garp = loop {
            let seen = self.watch.seen();
            if let Some(g) = seen[garps_from..].iter().find(|g| g.ip == vip_addr()) {
                break g.at.duration_since(w0).unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        BinarySample {
            bound: bound.at - t0,
            first_garp,
            exit,
        }
    }

    fn in_process(&self, runs: usize, in_range: bool) -> Vec<ClaimSample> {
        let endpoint = self.fake.endpoint();
        self.ns.block_on(|| async {
            let net: Arc<dyn LocalNet> =
                Arc::new(KernelNet::open("eth0").await.expect("open eth0"));
            let claimer = claimer(net.clone(), "ins-a", &endpoint);
            let havip = havip_config(Scope::Inclusive);
            let mut out = Vec::new();
            for _ in 0..runs {
                self.reset(in_range);
                let steps: Arc<Mutex<Vec<StepEvent>>> = Arc::default();
                let sink = steps.clone();
                let t0 = tokio::time::Instant::now();
                let result = claimer
                    .claim(
                        &havip,
                        ClaimOptions {
                            deadline: t0 + Duration::from_secs(15),
                            known_in_range: false,
                            progress: Some(Arc::new(move |e: &StepEvent| {
                                sink.lock().unwrap().push(e.clone())
                            })),
                        },
                    )
                    .await
                    .expect("claim");
                assert!(result.confirmed, "{result:?}");
                let steps = steps.lock().unwrap().clone();
                let at = |f: &dyn Fn(&Step) -> bool| {
                    steps
                        .iter()
                        .find(|e| f(&e.step))
                        .map(|e| e.at - t0)
                        .expect("step reported")
                };
                out.push(ClaimSample {
                    bound: at(&|s| matches!(s, Step::Bound { already: false })),
                    first_garp: at(&|s| matches!(s, Step::Announced { .. })),
                    confirmed: at(&|s| *s == Step::Confirmed),
                });
            }
            out
        })
    }
}

struct Row {
    case: String,
    metric: &'static str,
    samples: Vec<Duration>,
}

impl Row {
    fn new(case: String, metric: &'static str, mut samples: Vec<Duration>) -> Row {
        samples.sort();
        Row {
            case,
            metric,
            samples,
        }
    }

    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> Duration {
        let n = self.samples.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.samples[rank.clamp(1, n) - 1]
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn report(runs: usize, rows: &[Row]) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let date = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let command = if args.is_empty() {
        "cargo bench --bench migrate".to_owned()
    } else {
        format!("cargo bench --bench migrate -- {}", args.join(" "))
    };
    let mut s = String::new();
    let _ = writeln!(s, "### {date}");
    let _ = writeln!(s);
    let _ = writeln!(s, "- command: `{command}` (bench profile: optimised)");
    let _ = writeln!(
        s,
        "- machine: nproc {cpus}, {cpu_model}, kernel {kernel}; runs per row: {runs} (after one warm-up)"
    );
    let _ = writeln!(
        s,
        "- set-up: one network namespace, veth `eth0`/`peer0`, fake cloud on 127.0.0.1 in it, GARP watcher on \
         `peer0`; `cloud.timeout` 3s and `claim.deadline` 15s (the defaults), `announce` 4 rounds over 300ms; \
         the binary is spawned directly inside the namespace (fork + exec, as Sentinel runs its script); \
         the API-unreachable rows point `cloud.endpoint` at a closed port, with `claim.deadline` 2s"
    );
    let _ = writeln!(
        s,
        "- VIP bound = the kernel's RTM_NEWADDR read by a separate netlink listener; first GARP = first \
         gratuitous ARP for the VIP seen on `peer0`; in-process rows start at the `Claimer::claim` call with \
         the client and sockets already open"
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| case | metric | p50 ms | p90 ms | p99 ms | max ms |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.case,
            r.metric,
            ms(r.pct(50.0)),
            ms(r.pct(90.0)),
            ms(r.pct(99.0)),
            ms(*r.samples.last().unwrap())
        );
    }
    s
}

/// Appends `run` at the end of this benchmark's section, creating the file or the section if missing.
/// Other sections (written by other benchmarks) are left as they are.
fn append_section(path: &std::path::Path, run: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let new = match text.find(SECTION) {
        Some(start) => {
            let body = start + SECTION.len();
            let end = text[body..]
                .find("\n## ")
                .map(|i| body + i + 1)
                .unwrap_or(text.len());
            let (before, after) = text.split_at(end);
            let sep = if before.ends_with("\n\n") { "" } else { "\n" };
            format!("{before}{sep}{run}\n{after}")
        }
        None => {
            let sep = if text.ends_with("\n\n") {
                ""
            } else if text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!(
                "{text}{sep}{SECTION}\n\nMeasured by `benches/migrate.rs`; newest run last.\n\n{run}"
            )
        }
    };
    std::fs::write(path, new).expect("writing BENCHMARKS.md");
}

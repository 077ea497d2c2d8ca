//! Warm-path benchmark (`cargo bench --bench warm`): the latency of a failover's first API call after a
//! long idle spell, with and without the client's keep-warm task.
//!
//! Each run: the fake cloud behind a `fake::front::FakeFront` that charges every NEW connection a
//! handshake delay (standing for DNS + TCP + TLS to a far endpoint) and closes connections idle longer
//! than its idle limit (as a real server does); a fresh `VpcClient` makes one call (connection opened),
//! stays idle for the "idle hour", then makes the measured `describe_havip`. Scaled time: idle close 2 s,
//! idle spell 10 s, handshake 150 ms, keep-warm every 1 s (the product default is 30 s against a server
//! that keeps idle connections for about a minute or more). Runs go in parallel, their measured calls
//! staggered so they do not coincide.
//!
//! Knobs: `BENCH_RUNS` (default 9 per mode), `BENCH_IDLE_SECS` (10), `BENCH_HANDSHAKE_MS` (150),
//! `BENCH_IDLE_CLOSE_MS` (2000), `BENCH_WARM_MS` (1000).

use std::net::Ipv4Addr;
use std::time::Duration;

use havip_agent::cloud::VpcClient;
use havip_agent::config::CloudConfig;
use havip_agent::credentials::{Credential, CredentialProvider};
use havip_agent::secret::Secret;
use havip_testkit::fake::front::{FakeFront, FrontOptions};
use havip_testkit::fake::{FakeCloud, HavipSpec};
use tokio::time::Instant;

const SECRET_ID: &str = "AKIDwarmEXAMPLE";
const SECRET_KEY: &str = "warmSecretKeyEXAMPLE";
const HAVIP: &str = "havip-warm0001";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Knobs {
    idle: Duration,
    handshake: Duration,
    idle_close: Duration,
    warm: Duration,
}

/// One run: returns the measured first call's latency and how many connections the front accepted.
async fn run(knobs: &Knobs, keep_warm: bool, stagger: Duration) -> (Duration, usize) {
    let fake = FakeCloud::start().await;
    fake.add_key(SECRET_ID, SECRET_KEY);
    fake.add_havip(HavipSpec::new(HAVIP, Ipv4Addr::new(198, 18, 0, 100)));
    let front = FakeFront::start(
        fake.address(),
        FrontOptions {
            handshake_delay: knobs.handshake,
            idle_close: Some(knobs.idle_close),
        },
    )
    .await
    .expect("front");
    let cloud: CloudConfig = toml::from_str(&format!(
        "region = \"ap-guangzhou\"\nendpoint = \"{}\"\ntimeout = \"3s\"\n",
        front.endpoint()
    ))
    .expect("config");
    let creds = CredentialProvider::fixed(Credential {
        secret_id: Secret::new(SECRET_ID),
        secret_key: Secret::new(SECRET_KEY),
        token: None,
    });
    let client = VpcClient::new(&cloud, creds, havip_agent::clock::system()).expect("client");
    let deadline = || Instant::now() + Duration::from_secs(10);
    client
        .describe_havip(HAVIP, deadline())
        .await
        .expect("first call");
    let _warm = keep_warm.then(|| client.spawn_keep_warm(knobs.warm));
    // The idle spell, plus the stagger, plus half a keep-warm interval so that the measured call never
    // coincides with a touch (which holds the one connection: HTTP/1.1).
    tokio::time::sleep(knobs.idle + stagger + knobs.warm / 2).await;
    let started = Instant::now();
    client
        .describe_havip(HAVIP, deadline())
        .await
        .expect("measured call");
    (started.elapsed(), front.connections())
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn row(name: &str, results: &[(Duration, usize)]) -> String {
    let lat: Vec<Duration> = results.iter().map(|r| r.0).collect();
    let min = lat.iter().min().copied().unwrap_or_default();
    let max = lat.iter().max().copied().unwrap_or_default();
    let new_conns = results.iter().filter(|r| r.1 > 1).count();
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {new_conns}/{} |",
        lat.len(),
        median_ms(lat.clone()),
        min.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0,
        results.len()
    )
}

fn main() {
    havip_agent::tls::install_provider();
    let runs = env_num("BENCH_RUNS", 9).max(1) as usize;
    let knobs = Knobs {
        idle: Duration::from_secs(env_num("BENCH_IDLE_SECS", 10)),
        handshake: Duration::from_millis(env_num("BENCH_HANDSHAKE_MS", 150)),
        idle_close: Duration::from_millis(env_num("BENCH_IDLE_CLOSE_MS", 2000)),
        warm: Duration::from_millis(env_num("BENCH_WARM_MS", 1000)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (cold, warm) = rt.block_on(async {
        let knobs = &knobs;
        let cold = (0..runs).map(|i| run(knobs, false, Duration::from_millis(400 * i as u64)));
        // Offset by 200 ms from the cold runs' measured calls.
        let warm = (0..runs).map(|i| run(knobs, true, Duration::from_millis(400 * i as u64 + 200)));
        tokio::join!(
            futures::future::join_all(cold),
            futures::future::join_all(warm)
        )
    });
    println!(
        "warm path: idle {:?}, handshake {:?}, idle close {:?}, keep-warm every {:?}\n",
        knobs.idle, knobs.handshake, knobs.idle_close, knobs.warm
    );
    println!(
        "| first call after the idle spell | runs | median ms | min ms | max ms | new connection |"
    );
    println!("|---|---|---|---|---|---|");
    println!("{}", row("without keep-warm", &cold));
    println!("{}", row("with keep-warm", &warm));
}

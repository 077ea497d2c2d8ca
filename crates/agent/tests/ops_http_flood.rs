//! Issue 11's descriptor exhaustion, reproduced in one process: 1500 idle TCP connections to the HTTP
//! endpoint of a running agent (`testbed::inproc`, fake Sentinels and fake cloud on 127.0.0.1). The endpoint
//! keeps at most its cap of them open (the rest are evicted oldest first), `/healthz` from a fresh client
//! is still answered, and a failover that needs new Sentinel and cloud connections completes meanwhile.

use std::net::Ipv4Addr;
use std::time::Duration;

use havip_agent::daemon::AgentEventKind;
use havip_agent::http::{self, HttpLimits};
use havip_testkit::fake::{FakeCloud, HavipSpec};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::inproc::{
    ADDRESS as ME, HavipEntry, InprocAgent, Missed, SECRET_ID, SECRET_KEY,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OTHER: &str = "198.18.0.3";
const HAVIP: (&str, &str, &str) = ("mymaster", "havip-flood001", "198.18.0.100");
const IDLE_CLIENTS: usize = 1500;
/// A bound on waiting for things that should happen much sooner (not a speed claim).
const PATIENCE: Duration = Duration::from_secs(30);

fn master(ip: &str, epoch: u64) -> Mode {
    Mode::Master {
        ip: ip.parse().unwrap(),
        epoch,
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

async fn healthz(addr: std::net::SocketAddr) -> String {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("/healthz did not answer in time")
        .expect("/healthz connection failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_hundred_idle_connections_neither_exhaust_descriptors_nor_block_healthz_or_a_failover()
 {
    // This process holds both ends of every connection: give it room, as the agent gives itself at start.
    let nofile = havip_agent::process::raise_nofile().unwrap();
    assert!(
        nofile.after >= 4 * IDLE_CLIENTS as u64,
        "the test needs {} descriptors, the hard limit is {}",
        4 * IDLE_CLIENTS,
        nofile.hard
    );
    let cloud = FakeCloud::start().await;
    cloud.add_key(SECRET_ID, SECRET_KEY);
    cloud.add_havip(HavipSpec::new(
        HAVIP.1,
        HAVIP.2.parse::<Ipv4Addr>().unwrap(),
    ));
    let sentinels: Vec<FakeSentinel> = (0..3)
        .map(|_| FakeSentinel::start(master(OTHER, 1)).unwrap())
        .collect();
    let mut node = InprocAgent::builder(&cloud, &sentinels)
        .havip(HavipEntry::new(HAVIP.0, HAVIP.1, HAVIP.2.parse().unwrap()))
        .start()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = HttpLimits::default();
    let cap = limits.max_connections;
    let server = http::serve(
        "127.0.0.1:0".parse().unwrap(),
        node.metrics.clone(),
        node.status.clone(),
        node.health.clone(),
        async move {
            let _ = stop_rx.await;
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr;
    // The agent's tasks beat once they run; /healthz is 200 before the flood.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !healthz(addr).await.starts_with("HTTP/1.1 200") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never healthy before the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fds_before = open_fds();

    // Act: 1500 clients connect and say nothing.
    let mut idle = Vec::with_capacity(IDLE_CLIENTS);
    for i in 0..IDLE_CLIENTS {
        let s = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect {i} timed out"))
            .unwrap_or_else(|e| panic!("connect {i}: {e}"));
        idle.push(s);
    }

    // Assert: the server side holds at most its cap (the other descriptors are the clients' own ends; the
    // slack is for the agent's own sockets, which may come and go meanwhile).
    const SLACK: usize = 16;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let server_side = loop {
        let server_side = open_fds().saturating_sub(fds_before + IDLE_CLIENTS);
        if server_side <= cap + SLACK {
            break server_side;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint still holds {server_side} connections (cap {cap})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "server-side descriptors with {IDLE_CLIENTS} idle clients: {server_side} (cap {cap})"
    );
    let answer = healthz(addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A failover to this node while the idle clients stay: new Sentinel connections, cloud calls.
    for s in &sentinels {
        s.set(master(ME, 2));
    }
    node.next_event(
        PATIENCE,
        Missed::Skip,
        "a confirmed claim during the flood",
        |e| match &e.kind {
            AgentEventKind::Claimed { confirmed, .. } => Some(*confirmed),
            _ => None,
        },
    )
    .await
    .then_some(())
    .expect("the claim was not confirmed by the cloud");
    assert!(node.is_bound(HAVIP.2.parse().unwrap()));
    let answer = healthz(addr).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "after the failover: {answer}"
    );

    drop(idle);
    let _ = stop_tx.send(());
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("the endpoint did not stop")
        .unwrap()
        .unwrap();
}

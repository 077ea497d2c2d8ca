//! The `ROLE` check that corroborates a configuration only one Sentinel reports so far
//! (`Snapshot::needs_role_check`), with many masters on one Sentinel set: the checks of different masters
//! must not wait for each other. Fake Sentinels (one reports a new epoch for every master) and a fake Redis
//! that answers `ROLE`, all on loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use havip_agent::config::SentinelConfig;
use havip_agent::sentinel::{Snapshot, Watcher};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode, read_command};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// A Redis on `ip:6379` that says `master` to `ROLE`, except on its first connection, which it accepts and
/// never answers (a host that stalls mid-failover). That connection is kept, to see whether the client
/// still waits on it.
struct RoleServer {
    held: Arc<Mutex<Option<TcpStream>>>,
    answered: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RoleServer {
    async fn start(ip: IpAddr) -> RoleServer {
        let listener = tokio::net::TcpListener::bind((ip, 6379))
            .await
            .unwrap_or_else(|e| panic!("binding {ip}:6379 for the fake redis: {e}"));
        let held = Arc::new(Mutex::new(None));
        let answered = Arc::new(AtomicUsize::new(0));
        let (h, a) = (held.clone(), answered.clone());
        let task = tokio::spawn(async move {
            let mut first = true;
            while let Ok((stream, _)) = listener.accept().await {
                if std::mem::take(&mut first) {
                    *h.lock().await = Some(stream);
                    continue;
                }
                tokio::spawn(answer(stream, a.clone()));
            }
        });
        RoleServer {
            held,
            answered,
            task,
        }
    }

    /// Whether the held connection is still open from the client's side (it has not given up on it).
    async fn client_still_waits(&self) -> bool {
        let held = self.held.lock().await;
        let Some(s) = held.as_ref() else {
            return false;
        };
        let mut buf = [0u8; 256];
        loop {
            match s.try_read(&mut buf) {
                Ok(0) => return false,
                // What it sent before waiting (its commands): read and ignored.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }
}

impl Drop for RoleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(stream: TcpStream, answered: Arc<AtomicUsize>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    while let Some(args) = read_command(&mut r).await {
        let reply: &[u8] = if args.first().is_some_and(|c| c.eq_ignore_ascii_case("ROLE")) {
            answered.fetch_add(1, Ordering::SeqCst);
            b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"
        } else {
            b"+OK\r\n"
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// A loopback address of this process's own (port 6379 is fixed by the fake Sentinel's answers).
fn own_loopback() -> IpAddr {
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(127, 93, (pid >> 8) as u8, (pid as u8).max(1)))
}

fn confirmed(s: &Snapshot) -> Vec<String> {
    let mut m: Vec<String> = s.sentinels[0]
        .role_confirmed
        .iter()
        .filter(|(_, ok)| **ok)
        .map(|(name, _)| name.clone())
        .collect();
    m.sort();
    m
}

/// Issue 13: one Sentinel set failing over 20 masters at once. The checks ran one after another, so the
/// last master's claim waited for every other master's connection (17 ms in the scale lab: its GARP came
/// after its `+switch-master`), and an address that stalls held up every other master for the whole
/// `timeout`. Here the first check stalls (30 s timeout); the other master must be confirmed while the stalled
/// check is still waiting.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_role_check_holds_up_no_other_master() {
    let ip = own_loopback();
    let role = RoleServer::start(ip).await;
    let old = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let fresh = FakeSentinel::start(Mode::Master { ip, epoch: 5 }).unwrap();
    let others: Vec<FakeSentinel> = (0..2)
        .map(|_| FakeSentinel::start(Mode::Master { ip: old, epoch: 1 }).unwrap())
        .collect();
    let cfg: SentinelConfig = toml::from_str(&format!(
        "addresses = [{:?}, {:?}, {:?}]\ntimeout = \"30s\"",
        fresh.addr(),
        others[0].addr(),
        others[1].addr()
    ))
    .unwrap();
    let (watcher, mut rx) = Watcher::spawn(&cfg, vec!["m1".into(), "m2".into()]);
    // A generous bound for polling, never a speed assertion: one after another, the second check could
    // start only when the stalled one gave up, after 30 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let snap = loop {
        let s = rx.borrow_and_update().clone();
        if !confirmed(&s).is_empty() {
            break s;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!(
                "no master confirmed while one role check stalls; answered {}; last snapshot {s:#?}",
                role.answered.load(Ordering::SeqCst)
            ),
        }
    };
    assert_eq!(
        confirmed(&snap).len(),
        1,
        "the stalled one cannot be: {snap:#?}"
    );
    assert!(
        role.client_still_waits().await,
        "the confirmation must not have waited for the stalled check to give up"
    );
    drop(watcher);
}

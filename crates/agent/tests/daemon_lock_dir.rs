//! The daemon claims even when `claim.lock_dir` is unusable (found by the fault matrix, row 13: the new
//! master's agent refused to claim for the whole fault and 8 s after it). The lock only keeps this host's own
//! claims and releases apart, and `migrate-havip` cannot act while the directory is unusable (it exits 2),
//! so the daemon goes ahead without it and says so.

use std::net::Ipv4Addr;
use std::time::Duration;

use havip_agent::daemon::AgentEventKind;
use havip_testkit::fake::{FakeCloud, HavipSpec};
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::inproc::{
    ADDRESS as ME, HavipEntry, InprocAgent, Missed, SECRET_ID, SECRET_KEY,
};
use havip_testkit::testbed::logs::LogCapture;

const HAVIP: &str = "havip-lock0001";
const VIP: &str = "198.18.0.100";

#[tokio::test(flavor = "current_thread")]
async fn an_unusable_lock_dir_does_not_stop_the_daemon_from_claiming() {
    let (logs, _guard) = LogCapture::thread_debug();
    let cloud = FakeCloud::start().await;
    cloud.add_key(SECRET_ID, SECRET_KEY);
    cloud.add_havip(HavipSpec::new(HAVIP, VIP.parse::<Ipv4Addr>().unwrap()).check_associate(true));
    let sentinels: Vec<FakeSentinel> = (0..3)
        .map(|_| {
            FakeSentinel::start(Mode::Master {
                ip: ME.parse().unwrap(),
                epoch: 1,
            })
            .unwrap()
        })
        .collect();

    // /proc refuses new directories, even to root: the lock directory can be neither found nor created.
    let mut node = InprocAgent::builder(&cloud, &sentinels)
        .havip(HavipEntry::new("alpha", HAVIP, VIP.parse().unwrap()))
        .lock_dir("/proc/havip-agent-lock-test")
        .start()
        .unwrap();

    node.next_event(
        Duration::from_secs(30),
        Missed::Skip,
        "a confirmed claim without the lock",
        |e| {
            matches!(
                e.kind,
                AgentEventKind::Claimed {
                    confirmed: true,
                    ..
                }
            )
            .then_some(())
        },
    )
    .await;
    assert!(node.is_bound(VIP.parse().unwrap()));
    let text = logs.text();
    assert!(
        text.contains("claiming without the lock") && text.contains("/proc/havip-agent-lock-test"),
        "the warning names the problem and the directory:\n{text}"
    );
}

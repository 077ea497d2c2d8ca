//! What the watcher logs about Sentinel Pub/Sub events, against a fake Sentinel that publishes them: the
//! event's channel and master at info, its payload only at debug.

use std::time::{Duration, Instant};

use havip_agent::config::{Dur, FenceAfter, SentinelConfig};
use havip_agent::sentinel::Watcher;
use havip_testkit::testbed::fake_sentinel::{FakeSentinel, Mode};
use havip_testkit::testbed::logs::LogCapture;

/// In the payload of the valid event: an address only the payload carries.
const VALID_MARKER: &str = "198.18.77.77";
/// In the payload of the malformed event, in a field that is not the one at fault.
const MALFORMED_MARKER: &str = "198.18.77.79";

/// What the fake publishes, in turn, on every subscribed connection.
const EVENTS: &[(&str, &[u8])] = &[
    (
        "+switch-master",
        b"mymaster 198.18.77.76 6379 198.18.77.77 16379",
    ),
    (
        "+switch-master",
        b"mymaster 198.18.77.78 x 198.18.77.79 6379",
    ),
];

// Regression: every event's payload was logged at info, in full.
// Single-threaded runtime: every watcher task runs on this thread, so its thread-local log capture sees them.
#[tokio::test]
async fn event_payloads_are_logged_at_debug_and_info_names_the_event_and_master() {
    let (logs, _guard) = LogCapture::thread_debug();
    // The snapshot is not under test: the fake names a master that appears in no event.
    let fake = FakeSentinel::start(Mode::Master {
        ip: "198.18.0.2".parse().unwrap(),
        epoch: 1,
    })
    .expect("start the fake sentinel");
    fake.set_events(EVENTS);
    let cfg = SentinelConfig {
        addresses: vec![fake.addr().to_owned()],
        username: None,
        password: None,
        tls: None,
        timeout: Dur::from_millis(250),
        heartbeat: Dur::from_millis(100),
        poll_interval: Dur::from_secs(1),
        reconnect_max: Dur::from_millis(200),
        fence_after: FenceAfter::Auto,
        confirm_role: false,
    };

    let (watcher, _snapshots) = Watcher::spawn(&cfg, vec!["mymaster".to_owned()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let done =
        |t: &str| t.contains("sentinel event payload") && t.contains("malformed sentinel event");
    while !done(&logs.text()) {
        assert!(
            Instant::now() < deadline,
            "no events logged within 20 s:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(watcher);

    let text = logs.text();
    let lines = |level: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(level))
            .map(str::to_owned)
            .collect()
    };
    let above_debug: Vec<String> = ["INFO", "WARN", "ERROR"]
        .iter()
        .flat_map(|l| lines(l))
        .collect();
    let info_event = above_debug
        .iter()
        .find(|l| l.contains("sentinel event"))
        .unwrap_or_else(|| panic!("no info line for the event:\n{text}"));
    assert!(
        info_event.contains("channel=+switch-master") && info_event.contains("master=\"mymaster\""),
        "{info_event}"
    );
    let warn_malformed = above_debug
        .iter()
        .find(|l| l.contains("ignoring malformed sentinel event"))
        .unwrap_or_else(|| panic!("no warning for the malformed event:\n{text}"));
    assert!(
        warn_malformed.contains("is not a port number"),
        "the warning names the problem: {warn_malformed}"
    );
    for line in &above_debug {
        assert!(
            !line.contains(VALID_MARKER) && !line.contains(MALFORMED_MARKER),
            "a payload above debug: {line}"
        );
    }
    let debug = lines("DEBUG");
    assert!(
        debug.iter().any(|l| l.contains(VALID_MARKER)),
        "the payload is at debug:\n{text}"
    );
    assert!(
        debug.iter().any(|l| l.contains(MALFORMED_MARKER)),
        "the malformed payload is at debug:\n{text}"
    );
}

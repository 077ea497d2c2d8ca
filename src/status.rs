//! What the running agent reports about itself: the `/status` document, the `havip-agent status` table,
//! and the liveness beats behind `/healthz`.
//!
//! Owns the serde types (a contract between the daemon and the CLI: fields are only ever added), the table
//! rendering, the shared [`StatusHandle`] the daemon updates, [`Health`], and the HTTP client the CLI uses
//! to read a running agent. It does not compute any of the values (the daemon does) or serve them (see
//! `http`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The whole `/status` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This node's name (host name).
    pub node: String,
    /// This CVM's instance id.
    pub instance_id: String,
    /// This node's Redis address as Sentinel reports it.
    pub address: String,
    /// Sentinels answering now.
    pub sentinels_reachable: usize,
    /// Sentinels configured.
    pub sentinels_total: usize,
    /// One entry per `[[havip]]`, in config order.
    pub havips: Vec<HavipStatus>,
}

/// One `[[havip]]` as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HavipStatus {
    /// The HAVIP id.
    pub havip_id: String,
    /// The Sentinel master name.
    pub master: String,
    /// The VIP, with prefix length.
    pub vip: String,
    /// The master address of the newest configuration seen (`ip:port`), if any Sentinel answered.
    pub majority_master: Option<String>,
    /// That configuration's epoch.
    pub epoch: Option<u64>,
    /// Whether this node should hold the VIP.
    pub desired_holder: bool,
    /// Whether the VIP is bound on this node's interface.
    pub local_bound: bool,
    /// The instance the cloud says holds the VIP, if known.
    pub cloud_holder: Option<String>,
    /// Whether the cloud holder is what this node expects; `None` while unknown.
    pub cloud_matches: Option<bool>,
    /// When this node last acquired or released the VIP (RFC 3339).
    pub last_switch: Option<String>,
    /// Whether this node is self-fenced (cut off from the Sentinel majority).
    pub fenced: bool,
    /// The failover id of the last switch.
    pub failover_id: Option<String>,
}

/// The daemon's live [`StatusReport`], shared with the HTTP server. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatusHandle {
    inner: Arc<RwLock<StatusReport>>,
}

impl StatusHandle {
    /// A handle holding `report`.
    pub fn new(report: StatusReport) -> Self {
        Self {
            inner: Arc::new(RwLock::new(report)),
        }
    }

    /// A copy of the current report.
    pub fn snapshot(&self) -> StatusReport {
        // Writers only assign fields, so a report left by a panicking writer is still well-formed.
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes the report in place. Keep `f` short: readers wait for it.
    pub fn update(&self, f: impl FnOnce(&mut StatusReport)) {
        let mut guard = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard);
    }

    /// Changes the entry of `havip_id`, adding an entry with that id if there is none.
    pub fn update_havip(&self, havip_id: &str, f: impl FnOnce(&mut HavipStatus)) {
        self.update(|r| {
            let idx = match r.havips.iter().position(|h| h.havip_id == havip_id) {
                Some(i) => i,
                None => {
                    r.havips.push(HavipStatus {
                        havip_id: havip_id.to_owned(),
                        ..HavipStatus::default()
                    });
                    r.havips.len() - 1
                }
            };
            f(&mut r.havips[idx]);
        });
    }
}

/// Liveness of the two loops that must keep running: the main (reconcile) loop and the Sentinel watch.
/// Each beats on every iteration; `/healthz` is healthy only while both beats are younger than `max_age`.
/// Uses `tokio::time::Instant`, so paused test time moves it too. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    max_age: Duration,
    beats: Arc<Mutex<Beats>>,
}

#[derive(Debug, Default)]
struct Beats {
    main: Option<Instant>,
    watch: Option<Instant>,
}

impl Health {
    /// Beats older than `max_age` make the agent unhealthy. Pick a few loop periods (the daemon's loops
    /// run at least every `sentinel.poll_interval`); the systemd watchdog uses its own, separate timer.
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            beats: Arc::new(Mutex::new(Beats::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Beats> {
        self.beats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The main loop is alive.
    pub fn beat_main(&self) {
        self.lock().main = Some(Instant::now());
    }

    /// The Sentinel watch is alive (it produced a snapshot, even one with every Sentinel unreachable:
    /// unreachable Sentinels are reported by `/status`, not by `/healthz`).
    pub fn beat_watch(&self) {
        self.lock().watch = Some(Instant::now());
    }

    /// `Ok` while both beats are fresh; otherwise why not, e.g. `"main loop: last beat 12.3s ago (max 5s)"`.
    pub fn check(&self) -> Result<(), String> {
        let beats = self.lock();
        let now = Instant::now();
        let mut problems = Vec::new();
        for (what, beat) in [("main loop", beats.main), ("sentinel watch", beats.watch)] {
            match beat {
                None => problems.push(format!("{what}: no beat yet")),
                Some(at) => {
                    let age = now.saturating_duration_since(at);
                    if age > self.max_age {
                        problems.push(format!(
                            "{what}: last beat {:.1}s ago (max {:.1}s)",
                            age.as_secs_f64(),
                            self.max_age.as_secs_f64()
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Whether both beats are fresh.
    pub fn is_healthy(&self) -> bool {
        self.check().is_ok()
    }
}

/// A wall-clock time as RFC 3339 in UTC with second precision (`2025-01-02T03:04:05Z`), the format of
/// [`HavipStatus::last_switch`] and of alert timestamps.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = crate::clock::unix_seconds(t);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Column headers of [`render_table`].
const COLUMNS: [&str; 9] = [
    "HAVIP",
    "VIP",
    "MASTER",
    "EPOCH",
    "LOCAL",
    "CLOUD HOLDER",
    "LAST SWITCH",
    "FENCED",
    "FAILOVER",
];

/// The human-readable table `havip-agent status` prints: a summary line, then one row per HAVIP with the
/// majority master, epoch, local binding, cloud holder, last switch and fencing. Unknown values are `-`.
pub fn render_table(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} ({}, {}): {}/{} sentinels reachable",
        or_dash(&report.node),
        or_dash(&report.instance_id),
        or_dash(&report.address),
        report.sentinels_reachable,
        report.sentinels_total
    );
    let rows: Vec<[String; 9]> = report
        .havips
        .iter()
        .map(|h| {
            let master = match &h.majority_master {
                Some(addr) => format!("{} {addr}", h.master),
                None => format!("{} ?", h.master),
            };
            let local = match (h.local_bound, h.desired_holder) {
                (true, true) => "bound",
                (false, false) => "-",
                (true, false) => "bound (not desired)",
                (false, true) => "missing (desired)",
            };
            let cloud = match (&h.cloud_holder, h.cloud_matches) {
                (Some(holder), Some(false)) => format!("{holder} (mismatch)"),
                (Some(holder), _) => holder.clone(),
                (None, _) => "?".to_owned(),
            };
            [
                h.havip_id.clone(),
                h.vip.clone(),
                master,
                h.epoch.map_or_else(|| "-".to_owned(), |e| e.to_string()),
                local.to_owned(),
                cloud,
                h.last_switch.clone().unwrap_or_else(|| "-".to_owned()),
                if h.fenced { "yes" } else { "no" }.to_owned(),
                h.failover_id.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let mut widths = COLUMNS.map(|c| c.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let pad = w - cell.chars().count();
                let _ = write!(l, "{cell}{}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&COLUMNS.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    if rows.is_empty() {
        out.push_str("(no [[havip]] configured)\n");
    }
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Why the running agent's status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No answer (not running, metrics endpoint off, wrong address).
    #[error("cannot reach the agent at {url}: {detail}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// The transport error.
        detail: String,
    },
    /// It answered with an error status.
    #[error("the agent at {url} answered HTTP {status}")]
    Http {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body is not a status report.
    #[error("the agent at {url} sent a status this version cannot read: {detail}")]
    Decode {
        /// The URL asked.
        url: String,
        /// The decoding error.
        detail: String,
    },
}

/// The `/status` URL of an agent listening on `listen` (`[metrics] listen`). An unspecified listen address
/// (`0.0.0.0`, `::`) is reached through loopback.
pub fn status_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        other => other,
    };
    format!("http://{}/status", SocketAddr::new(ip, listen.port()))
}

/// How long [`fetch_status`] waits for the agent.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads a running agent's `/status` (`url` as made by [`status_url`]), waiting at most
/// [`FETCH_TIMEOUT`].
pub async fn fetch_status(url: &str) -> Result<StatusReport, StatusError> {
    // reqwest is built without a default TLS provider; installing one twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let unreachable = |detail: String| StatusError::Unreachable {
        url: url.to_owned(),
        detail,
    };
    // The agent is local: a proxy from the environment must not be used to reach it.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| unreachable(e.without_url().to_string()))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| unreachable(e.without_url().to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(StatusError::Http {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| unreachable(e.without_url().to_string()))?;
    serde_json::from_slice(&body).map_err(|e| StatusError::Decode {
        url: url.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusReport {
        StatusReport {
            node: "redis-a".into(),
            instance_id: "ins-aaaa".into(),
            address: "172.16.2.4".into(),
            sentinels_reachable: 2,
            sentinels_total: 3,
            havips: vec![
                HavipStatus {
                    havip_id: "havip-11111111".into(),
                    master: "mymaster".into(),
                    vip: "172.16.2.250/24".into(),
                    majority_master: Some("172.16.2.4:6379".into()),
                    epoch: Some(7),
                    desired_holder: true,
                    local_bound: true,
                    cloud_holder: Some("ins-aaaa".into()),
                    cloud_matches: Some(true),
                    last_switch: Some("2025-01-02T03:04:05Z".into()),
                    fenced: false,
                    failover_id: Some("f-0001".into()),
                },
                HavipStatus {
                    havip_id: "havip-22222222".into(),
                    master: "other".into(),
                    vip: "172.16.2.251/24".into(),
                    ..HavipStatus::default()
                },
            ],
        }
    }

    #[test]
    fn table_has_a_header_and_one_aligned_row_per_havip() {
        let t = render_table(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].contains("2/3 sentinels reachable"), "{t}");
        assert!(lines[1].starts_with("HAVIP"), "{t}");
        let row = lines[2];
        for want in [
            "havip-11111111",
            "172.16.2.250/24",
            "mymaster 172.16.2.4:6379",
            " 7 ",
            "bound",
            "ins-aaaa",
            "2025-01-02T03:04:05Z",
            "no",
            "f-0001",
        ] {
            assert!(row.contains(want), "row {row:?} lacks {want:?}");
        }
        // Columns line up: every column starts at the same offset in the header and in each row.
        let col = lines[1].find("  VIP").unwrap() + 2;
        assert_eq!(&lines[2][col..col + 3], "172");
        assert_eq!(&lines[3][col..col + 3], "172");
        let col = lines[1].find("CLOUD HOLDER").unwrap();
        assert_eq!(&lines[2][col..col + 8], "ins-aaaa");
        assert_eq!(&lines[3][col..col + 1], "?");
    }

    #[test]
    fn table_flags_mismatches() {
        let mut r = sample();
        r.havips[0].cloud_matches = Some(false);
        r.havips[0].local_bound = false;
        r.havips[0].fenced = true;
        let t = render_table(&r);
        assert!(t.contains("ins-aaaa (mismatch)"), "{t}");
        assert!(t.contains("missing (desired)"), "{t}");
        assert!(t.contains("yes"), "{t}");
    }

    #[test]
    fn status_json_round_trips() {
        let r = sample();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&json).unwrap(), r);
    }

    #[test]
    fn update_havip_adds_missing_entries() {
        let h = StatusHandle::default();
        h.update_havip("havip-1", |s| s.fenced = true);
        h.update_havip("havip-1", |s| s.local_bound = true);
        let r = h.snapshot();
        assert_eq!(r.havips.len(), 1);
        assert!(r.havips[0].fenced && r.havips[0].local_bound);
    }

    #[tokio::test(start_paused = true)]
    async fn health_needs_both_beats_fresh() {
        let h = Health::new(Duration::from_secs(5));
        let e = h.check().unwrap_err();
        assert!(
            e.contains("main loop: no beat yet") && e.contains("sentinel watch"),
            "{e}"
        );
        h.beat_main();
        h.beat_watch();
        assert!(h.is_healthy());
        tokio::time::advance(Duration::from_secs(4)).await;
        h.beat_main();
        tokio::time::advance(Duration::from_secs(2)).await;
        let e = h.check().unwrap_err();
        assert!(e.starts_with("sentinel watch: last beat 6.0s ago"), "{e}");
        assert!(!e.contains("main loop"), "{e}");
    }

    #[test]
    fn rfc3339_is_utc_with_seconds() {
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_900);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn status_url_reaches_unspecified_listeners_through_loopback() {
        assert_eq!(
            status_url("0.0.0.0:9847".parse().unwrap()),
            "http://127.0.0.1:9847/status"
        );
        assert_eq!(
            status_url("[::]:9847".parse().unwrap()),
            "http://[::1]:9847/status"
        );
        assert_eq!(
            status_url("198.18.0.1:1".parse().unwrap()),
            "http://198.18.0.1:1/status"
        );
    }
}

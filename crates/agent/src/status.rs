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
    /// Reachable Sentinels that do not count: their peers do not list them (another deployment), or they
    /// alone report a configuration nothing corroborates. Filled by the daemon and by `status --direct`.
    #[serde(default)]
    pub sentinels_uncorroborated: Vec<String>,
    /// Tasks that stopped making progress (the reason `/healthz` is red), filled when `/status` is served.
    #[serde(default)]
    pub unhealthy: Vec<String>,
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
    /// A newer configuration (`ip:port epoch N`) only one Sentinel reports, not corroborated yet.
    #[serde(default)]
    pub pending_master: Option<String>,
    /// The EIP configured for this HAVIP (`havip.eip`), if any.
    #[serde(default)]
    pub eip: Option<String>,
    /// The EIP the cloud reports on the HAVIP (`AddressIp`); `None` when it has none or it is unknown.
    #[serde(default)]
    pub cloud_eip: Option<String>,
    /// Whether the cloud reports the configured EIP bound to the HAVIP; `None` while unknown or without
    /// `eip`.
    #[serde(default)]
    pub eip_bound: Option<bool>,
}

/// The EIP line of a HAVIP in the table, when it has an EIP configured or reported: what is configured and
/// what the cloud says.
fn eip_line(h: &HavipStatus) -> Option<String> {
    let text = match (&h.eip, h.eip_bound, &h.cloud_eip) {
        (None, _, None) => return None,
        (None, _, Some(cloud)) => format!("eip {cloud} bound (not configured: left alone)"),
        (Some(eip), Some(true), _) => format!("eip {eip} bound"),
        (Some(eip), Some(false), Some(cloud)) => {
            format!("eip {eip} not bound: the havip has {cloud}")
        }
        (Some(eip), Some(false), None) => format!("eip {eip} not bound: the havip has none"),
        (Some(eip), None, _) => format!("eip {eip} (cloud not read yet)"),
    };
    Some(format!("{}: {text}", h.havip_id))
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

/// Liveness of every task that must keep making progress: each HAVIP task and each Sentinel watcher
/// registers a [`Beat`] and beats on every turn of its loop. `/healthz` is healthy only while every
/// registered beat is younger than `max_age`; a task that hangs or panicked stops beating and is named.
/// Uses `tokio::time::Instant`, so paused test time moves it too. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    max_age: Duration,
    beats: Arc<Mutex<std::collections::BTreeMap<String, Option<Instant>>>>,
}

/// One task's beat; see [`Health`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Beat {
    name: String,
    beats: Arc<Mutex<std::collections::BTreeMap<String, Option<Instant>>>>,
}

impl Beat {
    /// The task made progress.
    pub fn beat(&self) {
        self.beats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.name.clone(), Some(Instant::now()));
    }
}

impl Health {
    /// Beats older than `max_age` make the agent unhealthy. Pick a few loop periods (the daemon's loops
    /// turn at least every `sentinel.poll_interval`); the systemd watchdog is fed only while healthy.
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            beats: Arc::default(),
        }
    }

    /// Registers a task named `name` (e.g. `havip havip-xxxx`, `sentinel 198.18.0.1:26379`); it counts
    /// as stale until its first beat.
    pub fn register(&self, name: impl Into<String>) -> Beat {
        let name = name.into();
        self.beats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.clone(), None);
        Beat {
            name,
            beats: self.beats.clone(),
        }
    }

    /// The tasks that stopped making progress, each with why: `havip havip-1: last beat 12.3s ago (max 3s)`.
    pub fn stale(&self) -> Vec<String> {
        let beats = self
            .beats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        beats
            .iter()
            .filter_map(|(what, beat)| match beat {
                None => Some(format!("{what}: no beat yet")),
                Some(at) => {
                    let age = now.saturating_duration_since(*at);
                    (age > self.max_age).then(|| {
                        format!(
                            "{what}: last beat {:.1}s ago (max {:.1}s)",
                            age.as_secs_f64(),
                            self.max_age.as_secs_f64()
                        )
                    })
                }
            })
            .collect()
    }

    /// `Ok` while every registered task is fresh (and at least one is registered); otherwise why not.
    pub fn check(&self) -> Result<(), String> {
        let stale = self.stale();
        if !stale.is_empty() {
            return Err(stale.join("; "));
        }
        let none = self
            .beats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty();
        if none {
            return Err("no task registered yet".into());
        }
        Ok(())
    }

    /// Whether every registered task is fresh.
    pub fn is_healthy(&self) -> bool {
        self.check().is_ok()
    }
}

/// A wall-clock time as RFC 3339 in UTC with second precision (`2025-01-02T03:04:05Z`), the format of
/// [`HavipStatus::last_switch`] and of alert timestamps.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = crate::clock::unix_seconds(t);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
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
    for h in &report.havips {
        if let Some(p) = &h.pending_master {
            let _ = writeln!(out, "{}: pending, not corroborated: {p}", h.havip_id);
        }
    }
    for line in report.havips.iter().filter_map(eip_line) {
        let _ = writeln!(out, "{line}");
    }
    if !report.sentinels_uncorroborated.is_empty() {
        let _ = writeln!(
            out,
            "sentinels not counted (their peers do not list them): {}",
            report.sentinels_uncorroborated.join(", ")
        );
    }
    if !report.unhealthy.is_empty() {
        let _ = writeln!(out, "unhealthy: {}", report.unhealthy.join("; "));
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
    crate::tls::install_provider();
    let unreachable = |detail: String| StatusError::Unreachable {
        url: url.to_owned(),
        detail,
    };
    // The agent is local: a proxy from the environment must not be used to reach it.
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(crate::tls::client_config())
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
                    pending_master: None,
                    eip: None,
                    cloud_eip: None,
                    eip_bound: None,
                },
                HavipStatus {
                    havip_id: "havip-22222222".into(),
                    master: "other".into(),
                    vip: "172.16.2.251/24".into(),
                    ..HavipStatus::default()
                },
            ],
            sentinels_uncorroborated: vec![],
            unhealthy: vec![],
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
        r.havips[1].pending_master = Some("172.16.2.9:6379 epoch 999999".into());
        r.sentinels_uncorroborated = vec!["172.16.2.9:26379".into()];
        r.unhealthy = vec!["havip havip-22222222: last beat 9.0s ago (max 3.0s)".into()];
        let t = render_table(&r);
        assert!(
            t.contains("havip-22222222: pending, not corroborated: 172.16.2.9:6379 epoch 999999"),
            "{t}"
        );
        assert!(
            t.contains("sentinels not counted (their peers do not list them): 172.16.2.9:26379"),
            "{t}"
        );
        assert!(
            t.contains("unhealthy: havip havip-22222222: last beat"),
            "{t}"
        );
    }

    #[test]
    fn table_shows_the_eip_of_each_havip_and_whether_it_is_bound() {
        let mut r = sample();
        let t = render_table(&r);
        assert!(!t.contains("eip"), "no EIP configured or reported: {t}");
        r.havips[0].eip = Some("203.0.113.10".into());
        r.havips[0].cloud_eip = Some("203.0.113.10".into());
        r.havips[0].eip_bound = Some(true);
        r.havips[1].eip = Some("203.0.113.11".into());
        r.havips[1].eip_bound = Some(false);
        let t = render_table(&r);
        assert!(
            t.contains("havip-11111111: eip 203.0.113.10 bound\n"),
            "{t}"
        );
        assert!(
            t.contains("havip-22222222: eip 203.0.113.11 not bound: the havip has none"),
            "{t}"
        );
        r.havips[1].cloud_eip = Some("203.0.113.99".into());
        let t = render_table(&r);
        assert!(
            t.contains("havip-22222222: eip 203.0.113.11 not bound: the havip has 203.0.113.99"),
            "{t}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["havips"][0]["eip_bound"], serde_json::json!(true));
        assert_eq!(
            json["havips"][1]["cloud_eip"],
            serde_json::json!("203.0.113.99")
        );
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
    async fn health_names_every_task_that_stopped_beating() {
        let h = Health::new(Duration::from_secs(5));
        assert!(h.check().unwrap_err().contains("no task registered"));
        let a = h.register("havip havip-1");
        let b = h.register("sentinel 198.18.0.1:26379");
        let e = h.check().unwrap_err();
        assert!(
            e.contains("havip havip-1: no beat yet") && e.contains("sentinel 198.18.0.1:26379"),
            "{e}"
        );
        a.beat();
        b.beat();
        assert!(h.is_healthy());
        tokio::time::advance(Duration::from_secs(4)).await;
        a.beat();
        tokio::time::advance(Duration::from_secs(2)).await;
        let e = h.check().unwrap_err();
        assert!(
            e.starts_with("sentinel 198.18.0.1:26379: last beat 6.0s ago"),
            "{e}"
        );
        assert!(!e.contains("havip-1"), "{e}");
        assert_eq!(h.stale().len(), 1);
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

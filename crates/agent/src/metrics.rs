//! Prometheus metrics: the registry the daemon writes to and `/metrics` reads from.
//!
//! Owns metric names, labels, help texts and bucket layouts, and the text encoding. It does not decide
//! *when* something is counted (the daemon, the claim code, hooks and alerts call the methods here) and it
//! does not serve HTTP (see `http`).
//!
//! Names are prefixed `havip_agent_`; per-HAVIP series carry the label `havip` (the HAVIP id).
//! "Seconds since the last switch" is exported two ways: `havip_agent_last_switch_timestamp_seconds` (the
//! Unix time of the switch, the Prometheus-idiomatic form: `time() - x` in PromQL) and
//! `havip_agent_seconds_since_last_switch`, computed from the clock at each scrape ([`Metrics::encode`]) so a
//! plain dashboard can show it without PromQL.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::clock::{self, SharedClock};

/// The `Content-Type` of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Claim duration buckets, seconds. A claim's local part (bind + first announce) takes milliseconds; one
/// that waits for cloud confirmation takes seconds, up to the claim deadline (at most 55 s).
const CLAIM_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Cloud API request latency buckets, seconds (one HTTP round trip, bounded by `cloud.timeout`).
const API_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HavipLabel {
    havip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    havip: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiErrorLabels {
    action: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SentinelLabel {
    sentinel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn claim_histogram() -> Histogram {
    Histogram::new(CLAIM_BUCKETS)
}

fn api_histogram() -> Histogram {
    Histogram::new(API_BUCKETS)
}

struct Inner {
    registry: Registry,
    clock: SharedClock,
    desired: Family<HavipLabel, Gauge>,
    local: Family<HavipLabel, Gauge>,
    cloud_match: Family<HavipLabel, Gauge>,
    eip_bound: Family<HavipLabel, Gauge>,
    last_switch_ts: Family<HavipLabel, FloatGauge>,
    since_switch: Family<HavipLabel, FloatGauge>,
    /// The switch times behind `since_switch`, re-evaluated at each scrape.
    last_switch: Mutex<HashMap<String, SystemTime>>,
    claim: HistogramFamily<ClaimLabels>,
    api_latency: HistogramFamily<ActionLabel>,
    api_errors: Family<ApiErrorLabels, Counter>,
    garp_frames: Family<HavipLabel, Counter>,
    fence_releases: Family<HavipLabel, Counter>,
    pause_failures: Family<HavipLabel, Counter>,
    sentinels_reachable: Gauge,
    sentinels_configured: Gauge,
    sentinel_uncorroborated: Family<SentinelLabel, Gauge>,
    alert_failures: Family<SinkLabel, Counter>,
    alert_dropped: Family<SinkLabel, Counter>,
    hook_failures: Family<EventLabel, Counter>,
    hook_dropped: Family<EventLabel, Counter>,
}

/// The agent's metrics. Cheap to clone (an `Arc` inside); every method takes `&self` and never blocks on
/// I/O, so it is safe to call from the failover path.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry using the system clock.
    pub fn new() -> Self {
        Self::with_clock(clock::system())
    }

    /// A fresh registry whose "seconds since the last switch" is computed with `clock` (tests).
    pub fn with_clock(clock: SharedClock) -> Self {
        let mut registry = Registry::with_prefix("havip_agent");

        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the label carries the agent version",
            build_info,
        );

        let desired = Family::<HavipLabel, Gauge>::default();
        registry.register(
            "desired_holder",
            "1 if the newest Sentinel configuration names this node as master and a Sentinel majority is reachable",
            desired.clone(),
        );
        let local = Family::<HavipLabel, Gauge>::default();
        registry.register(
            "local_holder",
            "1 if the VIP is bound on this node's interface",
            local.clone(),
        );
        let cloud_match = Family::<HavipLabel, Gauge>::default();
        registry.register(
            "cloud_holder_matches",
            "1 if DescribeHaVips shows the holder this node expects (absent while unknown)",
            cloud_match.clone(),
        );
        let eip_bound = Family::<HavipLabel, Gauge>::default();
        registry.register(
            "eip_bound",
            "1 if DescribeHaVips shows the configured eip bound to the HAVIP, 0 if not (absent while unknown or without eip)",
            eip_bound.clone(),
        );
        let last_switch_ts = Family::<HavipLabel, FloatGauge>::default();
        registry.register(
            "last_switch_timestamp_seconds",
            "Unix time of the last change of this node's holder state",
            last_switch_ts.clone(),
        );
        let since_switch = Family::<HavipLabel, FloatGauge>::default();
        registry.register(
            "seconds_since_last_switch",
            "Seconds since the last change of this node's holder state, computed at scrape time",
            since_switch.clone(),
        );
        let claim: HistogramFamily<ClaimLabels> = Family::new_with_constructor(claim_histogram);
        registry.register(
            "claim_duration_seconds",
            "Duration of a claim (result ok or failed)",
            claim.clone(),
        );
        let api_latency: HistogramFamily<ActionLabel> = Family::new_with_constructor(api_histogram);
        registry.register(
            "cloud_api_request_duration_seconds",
            "Latency of one Tencent Cloud API request, by action",
            api_latency.clone(),
        );
        let api_errors = Family::<ApiErrorLabels, Counter>::default();
        registry.register(
            "cloud_api_errors",
            "Failed Tencent Cloud API requests, by action and error code",
            api_errors.clone(),
        );
        let garp_frames = Family::<HavipLabel, Counter>::default();
        registry.register(
            "garp_frames",
            "Gratuitous ARP frames sent for the VIP",
            garp_frames.clone(),
        );
        let fence_releases = Family::<HavipLabel, Counter>::default();
        registry.register(
            "fence_releases",
            "VIP releases caused by losing sight of the Sentinel majority (self-fencing)",
            fence_releases.clone(),
        );
        let pause_failures = Family::<HavipLabel, Counter>::default();
        registry.register(
            "pause_failures",
            "Failed CLIENT PAUSE commands on the local Redis while fenced (writes were not paused)",
            pause_failures.clone(),
        );
        let sentinels_reachable = Gauge::default();
        registry.register(
            "sentinels_reachable",
            "Sentinels that answered within the timeout",
            sentinels_reachable.clone(),
        );
        let sentinels_configured = Gauge::default();
        registry.register(
            "sentinels_configured",
            "Sentinels listed in the configuration",
            sentinels_configured.clone(),
        );
        let sentinel_uncorroborated = Family::<SentinelLabel, Gauge>::default();
        registry.register(
            "sentinel_uncorroborated",
            "1 while a reachable Sentinel does not count: its peers do not list it (another deployment under the same master name), or the newer configuration it alone reports is not corroborated",
            sentinel_uncorroborated.clone(),
        );
        let alert_failures = Family::<SinkLabel, Counter>::default();
        registry.register(
            "alert_delivery_failures",
            "Alerts given up on after all attempts, by sink (alert[N] in the config)",
            alert_failures.clone(),
        );
        let alert_dropped = Family::<SinkLabel, Counter>::default();
        registry.register(
            "alert_dropped",
            "Alerts dropped because the sink's queue was full",
            alert_dropped.clone(),
        );
        let hook_failures = Family::<EventLabel, Counter>::default();
        registry.register(
            "hook_failures",
            "Hooks that failed to start, exited non-zero or timed out, by event",
            hook_failures.clone(),
        );
        let hook_dropped = Family::<EventLabel, Counter>::default();
        registry.register(
            "hook_dropped",
            "Hook runs dropped because the hook queue was full",
            hook_dropped.clone(),
        );

        Self {
            inner: Arc::new(Inner {
                registry,
                clock,
                desired,
                local,
                cloud_match,
                eip_bound,
                last_switch_ts,
                since_switch,
                last_switch: Mutex::new(HashMap::new()),
                claim,
                api_latency,
                api_errors,
                garp_frames,
                fence_releases,
                pause_failures,
                sentinels_reachable,
                sentinels_configured,
                sentinel_uncorroborated,
                alert_failures,
                alert_dropped,
                hook_failures,
                hook_dropped,
            }),
        }
    }

    fn havip(havip: &str) -> HavipLabel {
        HavipLabel {
            havip: havip.to_owned(),
        }
    }

    /// Whether this node is the desired holder of `havip`.
    pub fn set_desired(&self, havip: &str, desired: bool) {
        self.inner
            .desired
            .get_or_create(&Self::havip(havip))
            .set(i64::from(desired));
    }

    /// Whether the VIP of `havip` is bound locally.
    pub fn set_local_holder(&self, havip: &str, bound: bool) {
        self.inner
            .local
            .get_or_create(&Self::havip(havip))
            .set(i64::from(bound));
    }

    /// Whether the cloud's holder matches what this node expects; `None` (unknown) removes the series, so
    /// an unknown state is never mistaken for a mismatch.
    pub fn set_cloud_match(&self, havip: &str, matches: Option<bool>) {
        let label = Self::havip(havip);
        match matches {
            Some(m) => {
                self.inner
                    .cloud_match
                    .get_or_create(&label)
                    .set(i64::from(m));
            }
            None => {
                self.inner.cloud_match.remove(&label);
            }
        }
    }

    /// Whether the cloud shows the configured EIP bound to `havip`; `None` (unknown, or no EIP configured)
    /// removes the series.
    pub fn set_eip_bound(&self, havip: &str, bound: Option<bool>) {
        let label = Self::havip(havip);
        match bound {
            Some(b) => {
                self.inner.eip_bound.get_or_create(&label).set(i64::from(b));
            }
            None => {
                self.inner.eip_bound.remove(&label);
            }
        }
    }

    /// Sentinels reachable now, out of `total` configured.
    pub fn set_sentinels_reachable(&self, reachable: usize, total: usize) {
        self.inner
            .sentinels_reachable
            .set(i64::try_from(reachable).unwrap_or(i64::MAX));
        self.inner
            .sentinels_configured
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }

    /// Whether the Sentinel configured as `sentinel` is reachable but does not count (see the help text).
    pub fn set_sentinel_uncorroborated(&self, sentinel: &str, uncorroborated: bool) {
        self.inner
            .sentinel_uncorroborated
            .get_or_create(&SentinelLabel {
                sentinel: sentinel.to_owned(),
            })
            .set(i64::from(uncorroborated));
    }

    /// Records when this node last acquired or released `havip`.
    pub fn set_last_switch(&self, havip: &str, at: SystemTime) {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.inner
            .last_switch_ts
            .get_or_create(&Self::havip(havip))
            .set(secs);
        self.lock_switches().insert(havip.to_owned(), at);
        self.refresh_since_switch();
    }

    /// Records one claim of `havip` and how long it took.
    pub fn observe_claim(&self, havip: &str, took: Duration, ok: bool) {
        self.inner
            .claim
            .get_or_create(&ClaimLabels {
                havip: havip.to_owned(),
                result: if ok { "ok" } else { "failed" },
            })
            .observe(took.as_secs_f64());
    }

    /// Records one cloud API request: its latency, and its error code if it failed. This is the body of
    /// the `cloud::ApiObserver` implementation.
    pub fn observe_api(&self, action: &str, elapsed: Duration, error_code: Option<&str>) {
        self.inner
            .api_latency
            .get_or_create(&ActionLabel {
                action: action.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error_code {
            self.inner
                .api_errors
                .get_or_create(&ApiErrorLabels {
                    action: action.to_owned(),
                    code: code.to_owned(),
                })
                .inc();
        }
    }

    /// Adds gratuitous ARP frames sent for `havip`.
    pub fn add_garp_frames(&self, havip: &str, frames: u64) {
        self.inner
            .garp_frames
            .get_or_create(&Self::havip(havip))
            .inc_by(frames);
    }

    /// Counts one self-fencing release of `havip`.
    pub fn inc_fence_release(&self, havip: &str) {
        self.inner
            .fence_releases
            .get_or_create(&Self::havip(havip))
            .inc();
    }

    /// Counts one failed write pause (`CLIENT PAUSE`) on the local Redis while fencing `havip`.
    pub fn inc_pause_failure(&self, havip: &str) {
        self.inner
            .pause_failures
            .get_or_create(&Self::havip(havip))
            .inc();
    }

    /// Counts one alert given up on by `sink` (`alert[N]`; never the URL, which is a secret).
    pub fn inc_alert_failure(&self, sink: &str) {
        self.inner
            .alert_failures
            .get_or_create(&SinkLabel {
                sink: sink.to_owned(),
            })
            .inc();
    }

    /// Counts one alert dropped because `sink`'s queue was full.
    pub fn inc_alert_dropped(&self, sink: &str) {
        self.inner
            .alert_dropped
            .get_or_create(&SinkLabel {
                sink: sink.to_owned(),
            })
            .inc();
    }

    /// Counts one failed hook run (`event` is `acquired` or `released`).
    pub fn inc_hook_failure(&self, event: &str) {
        self.inner
            .hook_failures
            .get_or_create(&EventLabel {
                event: event.to_owned(),
            })
            .inc();
    }

    /// Counts one hook run dropped because the hook queue was full.
    pub fn inc_hook_dropped(&self, event: &str) {
        self.inner
            .hook_dropped
            .get_or_create(&EventLabel {
                event: event.to_owned(),
            })
            .inc();
    }

    fn lock_switches(&self) -> std::sync::MutexGuard<'_, HashMap<String, SystemTime>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts), so a
        // poisoned lock is still usable.
        self.inner
            .last_switch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refresh_since_switch(&self) {
        let now = self.inner.clock.now();
        for (havip, at) in self.lock_switches().iter() {
            // A switch "in the future" (clock stepped back) reads as 0, not as a negative age.
            let age = now.duration_since(*at).unwrap_or_default().as_secs_f64();
            self.inner
                .since_switch
                .get_or_create(&Self::havip(havip))
                .set(age);
        }
    }

    /// Everything in the Prometheus text format ([`CONTENT_TYPE`]), with the time since each switch
    /// computed now.
    pub fn encode(&self) -> String {
        self.refresh_since_switch();
        let mut out = String::new();
        // Writing into a String cannot fail; the encoder only returns fmt::Error from its writer.
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry);
        out
    }

    /// The value of one series of [`Metrics::encode`]'s output, e.g.
    /// `value("havip_agent_garp_frames_total", &[("havip", "havip-1")])`. The labels must match the
    /// series' labels exactly (any order). For tests and for `check`-style reports.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample_value(&self.encode(), name, labels)
    }
}

/// Finds one sample in Prometheus text: the series named `name` whose label set equals `labels`.
pub fn sample_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, mut got) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, Vec::new()),
            };
            got.sort();
            (n == name && got == want)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
}

/// Parses `a="x",b="y"` (with `\"`, `\\` and `\n` escapes in values).
fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        out.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end + 1..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[derive(Debug)]
    struct FixedClock(SystemTime);
    impl Clock for FixedClock {
        fn now(&self) -> SystemTime {
            self.0
        }
    }

    #[test]
    fn per_havip_gauges_and_counters_carry_the_havip_label() {
        let m = Metrics::new();
        m.set_desired("havip-1", true);
        m.set_local_holder("havip-1", false);
        m.add_garp_frames("havip-1", 4);
        m.add_garp_frames("havip-1", 2);
        m.inc_fence_release("havip-1");
        m.inc_pause_failure("havip-1");
        let l = [("havip", "havip-1")];
        assert_eq!(m.value("havip_agent_pause_failures_total", &l), Some(1.0));
        assert_eq!(m.value("havip_agent_desired_holder", &l), Some(1.0));
        assert_eq!(m.value("havip_agent_local_holder", &l), Some(0.0));
        assert_eq!(m.value("havip_agent_garp_frames_total", &l), Some(6.0));
        assert_eq!(m.value("havip_agent_fence_releases_total", &l), Some(1.0));
    }

    #[test]
    fn unknown_cloud_match_removes_the_series() {
        let m = Metrics::new();
        let l = [("havip", "havip-1")];
        m.set_cloud_match("havip-1", Some(false));
        assert_eq!(m.value("havip_agent_cloud_holder_matches", &l), Some(0.0));
        m.set_cloud_match("havip-1", None);
        assert_eq!(m.value("havip_agent_cloud_holder_matches", &l), None);
    }

    #[test]
    fn eip_bound_is_zero_or_one_and_absent_while_unknown() {
        let m = Metrics::new();
        let l = [("havip", "havip-1")];
        assert_eq!(m.value("havip_agent_eip_bound", &l), None);
        m.set_eip_bound("havip-1", Some(false));
        assert_eq!(m.value("havip_agent_eip_bound", &l), Some(0.0));
        m.set_eip_bound("havip-1", Some(true));
        assert_eq!(m.value("havip_agent_eip_bound", &l), Some(1.0));
        m.set_eip_bound("havip-1", None);
        assert_eq!(m.value("havip_agent_eip_bound", &l), None);
    }

    #[test]
    fn seconds_since_last_switch_is_computed_at_scrape_time() {
        let switch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let m = Metrics::with_clock(Arc::new(FixedClock(switch + Duration::from_secs(42))));
        m.set_last_switch("havip-1", switch);
        let l = [("havip", "havip-1")];
        assert_eq!(
            m.value("havip_agent_last_switch_timestamp_seconds", &l),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            m.value("havip_agent_seconds_since_last_switch", &l),
            Some(42.0)
        );
    }

    #[test]
    fn api_observations_count_latency_and_errors_by_action_and_code() {
        let m = Metrics::new();
        m.observe_api("DescribeHaVips", Duration::from_millis(30), None);
        m.observe_api(
            "HaVipAssociateAddressIp",
            Duration::from_millis(80),
            Some("RequestLimitExceeded"),
        );
        assert_eq!(
            m.value(
                "havip_agent_cloud_api_request_duration_seconds_count",
                &[("action", "DescribeHaVips")]
            ),
            Some(1.0)
        );
        assert_eq!(
            m.value(
                "havip_agent_cloud_api_errors_total",
                &[
                    ("action", "HaVipAssociateAddressIp"),
                    ("code", "RequestLimitExceeded")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            m.value(
                "havip_agent_cloud_api_errors_total",
                &[
                    ("action", "DescribeHaVips"),
                    ("code", "RequestLimitExceeded")
                ]
            ),
            None
        );
    }

    #[test]
    fn claim_histogram_has_millisecond_buckets() {
        let m = Metrics::new();
        m.observe_claim("havip-1", Duration::from_micros(1500), true);
        let text = m.encode();
        assert_eq!(
            sample_value(
                &text,
                "havip_agent_claim_duration_seconds_bucket",
                &[("havip", "havip-1"), ("result", "ok"), ("le", "0.001")]
            ),
            Some(0.0)
        );
        assert_eq!(
            sample_value(
                &text,
                "havip_agent_claim_duration_seconds_bucket",
                &[("havip", "havip-1"), ("result", "ok"), ("le", "0.002")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn label_parser_handles_escapes() {
        let text = "x{a=\"q\\\"uo,te\",b=\"y\"} 3\n";
        assert_eq!(
            sample_value(text, "x", &[("b", "y"), ("a", "q\"uo,te")]),
            Some(3.0)
        );
        assert_eq!(sample_value(text, "x", &[("b", "y")]), None);
    }
}

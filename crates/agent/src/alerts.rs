//! `[[alert]]`: webhook notifications of failovers, sent off the failover path.
//!
//! Owns the alert type, the two body formats (a generic JSON object and the WeCom/企业微信 group robot's
//! `text` and `markdown` messages) and delivery: one bounded queue and one worker per sink, each attempt
//! with its own timeout, retries with exponential backoff for errors that can heal. [`Alerter::notify`]
//! never waits: when a sink's queue is full the alert is dropped for that sink, logged and counted, so a
//! hanging webhook can never delay a claim. Delivery failures are logged with the sink's name (`alert[N]`)
//! and never its URL, which is a secret (WeCom puts its key in it). It does not decide when to alert (the
//! daemon does).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{AlertConfig, AlertFormat, WecomMsgType};
use crate::metrics::Metrics;
use crate::secret::{Redactor, Secret};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// This node claimed the VIP.
    Acquired,
    /// This node released the VIP (demoted, or shutting down with `on_shutdown = "release"`).
    Released,
    /// This node released the VIP because it lost sight of the Sentinel majority.
    Fenced,
    /// The Sentinel majority is back after a fence.
    Unfenced,
    /// A claim failed (local bind, or the cloud refused the move).
    ClaimFailed,
    /// A release failed.
    ReleaseFailed,
    /// The claim's deadline passed without `DescribeHaVips` confirming this node as holder.
    CloudUnconfirmed,
    /// While holding, the cloud showed another holder.
    CloudMismatch,
    /// The HAVIP has another EIP than the configured `eip`; the agent never replaces it.
    EipMismatch,
    /// Binding the configured `eip` to the HAVIP failed (it is retried if the error may heal).
    EipBindFailed,
    /// Pausing writes on the local Redis (`CLIENT PAUSE ... WRITE`) failed while fenced: an isolated
    /// master may keep acknowledging writes that the failover then discards.
    PauseFailed,
}

impl AlertKind {
    /// The snake_case name used in bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Acquired => "acquired",
            AlertKind::Released => "released",
            AlertKind::Fenced => "fenced",
            AlertKind::Unfenced => "unfenced",
            AlertKind::ClaimFailed => "claim_failed",
            AlertKind::ReleaseFailed => "release_failed",
            AlertKind::CloudUnconfirmed => "cloud_unconfirmed",
            AlertKind::CloudMismatch => "cloud_mismatch",
            AlertKind::EipMismatch => "eip_mismatch",
            AlertKind::EipBindFailed => "eip_bind_failed",
            AlertKind::PauseFailed => "pause_failed",
        }
    }

    /// `info` for the normal course of a failover, `warning` for fencing, `critical` when the VIP may be
    /// unreachable or in the wrong place.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::Acquired | AlertKind::Released | AlertKind::Unfenced => "info",
            AlertKind::Fenced | AlertKind::CloudMismatch => "warning",
            // The VIP still works inside the VPC; only clients outside it (through the EIP) are cut off.
            AlertKind::EipMismatch | AlertKind::EipBindFailed => "warning",
            // Acknowledged writes may be lost.
            AlertKind::ClaimFailed
            | AlertKind::ReleaseFailed
            | AlertKind::CloudUnconfirmed
            | AlertKind::PauseFailed => "critical",
        }
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// What happened.
    pub event: AlertKind,
    /// The HAVIP id.
    pub havip_id: String,
    /// The VIP.
    pub vip: String,
    /// The Sentinel master name.
    pub master: String,
    /// This node's name.
    pub node: String,
    /// The failover id tying together everything one switch caused.
    pub failover_id: Option<String>,
    /// A human-readable line: what and why.
    pub message: String,
    /// When it happened.
    pub at: SystemTime,
}

/// The generic JSON body:
/// `{"source":"havip-agent","event","severity","havip_id","vip","master","node","failover_id","message","at"}`
/// with `at` in RFC 3339 (UTC) and `failover_id` null when there is none.
pub fn json_body(a: &Alert) -> Value {
    json!({
        "source": "havip-agent",
        "event": a.event,
        "severity": a.event.severity(),
        "havip_id": a.havip_id,
        "vip": a.vip,
        "master": a.master,
        "node": a.node,
        "failover_id": a.failover_id,
        "message": a.message,
        "at": crate::status::rfc3339(a.at),
    })
}

/// WeCom's limits on `content`, in bytes (text 2048, markdown 4096).
const WECOM_TEXT_LIMIT: usize = 2048;
const WECOM_MARKDOWN_LIMIT: usize = 4096;

/// The WeCom group-robot body: `{"msgtype":"text","text":{"content":..}}` or
/// `{"msgtype":"markdown","markdown":{"content":..}}`, content cut to WeCom's size limit.
pub fn wecom_body(a: &Alert, msgtype: WecomMsgType) -> Value {
    let failover = a.failover_id.as_deref().unwrap_or("-");
    let at = crate::status::rfc3339(a.at);
    match msgtype {
        WecomMsgType::Text => {
            let content = format!(
                "[havip-agent] {} {} on {}\nVIP {} (master {})\nfailover {failover} at {at}\n{}",
                a.event.as_str(),
                a.havip_id,
                a.node,
                a.vip,
                a.master,
                a.message
            );
            json!({"msgtype": "text", "text": {"content": truncate(content, WECOM_TEXT_LIMIT)}})
        }
        WecomMsgType::Markdown => {
            // WeCom markdown knows three font colours: info (green), comment (grey), warning (orange).
            let color = match a.event.severity() {
                "info" => "info",
                _ => "warning",
            };
            let content = format!(
                "**havip-agent: <font color=\"{color}\">{}</font>** {}\n\
                 > VIP: {}\n> master: {}\n> node: {}\n> failover: {failover}\n> at: {at}\n\n{}",
                a.event.as_str(),
                a.havip_id,
                a.vip,
                a.master,
                a.node,
                a.message
            );
            json!({"msgtype": "markdown", "markdown": {"content": truncate(content, WECOM_MARKDOWN_LIMIT)}})
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max.saturating_sub(3);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Delivery tuning.
#[derive(Debug, Clone, Copy)]
pub struct AlerterOptions {
    /// Alerts that may wait per sink.
    pub queue: usize,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
}

impl Default for AlerterOptions {
    fn default() -> Self {
        Self {
            queue: 256,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Why one delivery attempt failed. Never contains the URL.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No HTTP answer (connect, TLS, timeout).
    #[error("no answer: {0}")]
    Transport(String),
    /// The attempt's timeout passed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A non-2xx answer.
    #[error("HTTP {0}")]
    Http(u16),
    /// WeCom answered with `errcode != 0`.
    #[error("WeCom errcode {errcode}: {errmsg}")]
    Wecom {
        /// WeCom's error code.
        errcode: i64,
        /// WeCom's message.
        errmsg: String,
    },
    /// A WeCom answer without a readable `errcode`.
    #[error("WeCom answer is not {{\"errcode\":..}}: {0}")]
    WecomReply(String),
    /// The HTTP client could not be built.
    #[error("http client unavailable: {0}")]
    Client(String),
}

impl DeliveryError {
    /// Whether another attempt may succeed. Client errors (bad URL or key, bad message) will not heal.
    pub fn is_retryable(&self) -> bool {
        match self {
            DeliveryError::Transport(_) | DeliveryError::Timeout(_) => true,
            DeliveryError::Http(code) => *code >= 500 || *code == 429 || *code == 408,
            // -1: system busy; 45009: rate limit (20 messages a minute per robot).
            DeliveryError::Wecom { errcode, .. } => *errcode == -1 || *errcode == 45009,
            DeliveryError::WecomReply(_) => true,
            DeliveryError::Client(_) => false,
        }
    }
}

/// One configured webhook.
struct Sink {
    name: String,
    url: Secret,
    /// Scrubs the URL and its key out of everything an attempt reports.
    redactor: Redactor,
    format: AlertFormat,
    msgtype: WecomMsgType,
    timeout: Duration,
    attempts: u32,
}

impl Sink {
    fn body(&self, a: &Alert) -> Value {
        match self.format {
            AlertFormat::Json => json_body(a),
            AlertFormat::Wecom => wecom_body(a, self.msgtype),
        }
    }
}

enum Msg {
    Send(Alert),
    Flush(oneshot::Sender<()>),
}

struct SinkHandle {
    name: String,
    tx: mpsc::Sender<Msg>,
}

/// The alert dispatcher. Cheap to clone; each sink's worker stops once every clone is dropped and its
/// queue is done.
#[derive(Clone)]
pub struct Alerter {
    sinks: Arc<Vec<SinkHandle>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sinks.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Alerter").field("sinks", &names).finish()
    }
}

impl Alerter {
    /// One sink per `[[alert]]`, named `alert[N]` in logs and metrics. Must be called within a Tokio
    /// runtime when any sink is configured (it spawns the workers).
    pub fn new(configs: &[AlertConfig], metrics: Metrics) -> Alerter {
        Self::with_options(configs, metrics, AlerterOptions::default())
    }

    /// Like [`Alerter::new`], with explicit queue and backoff settings.
    pub fn with_options(
        configs: &[AlertConfig],
        metrics: Metrics,
        opts: AlerterOptions,
    ) -> Alerter {
        let client = if configs.is_empty() {
            None
        } else {
            crate::tls::install_provider();
            match reqwest::Client::builder()
                .tls_backend_preconfigured(crate::tls::client_config())
                .connect_timeout(Duration::from_secs(5))
                .build()
            {
                Ok(c) => Some(c),
                Err(e) => {
                    let error = e.without_url().to_string();
                    tracing::error!(
                        error,
                        "cannot build the http client for alerts; every alert will fail"
                    );
                    None
                }
            }
        };
        let sinks = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let sink = Sink {
                    name: format!("alert[{i}]"),
                    url: c.url.clone(),
                    redactor: Redactor::for_url(&c.url),
                    format: c.format,
                    msgtype: c.msgtype,
                    timeout: c.timeout.get(),
                    attempts: c.attempts.max(1),
                };
                let (tx, rx) = mpsc::channel(opts.queue.max(1));
                let name = sink.name.clone();
                tokio::spawn(worker(sink, rx, client.clone(), metrics.clone(), opts));
                SinkHandle { name, tx }
            })
            .collect();
        Alerter {
            sinks: Arc::new(sinks),
            metrics,
        }
    }

    /// Queues `alert` for every sink and returns at once. A sink whose queue is full drops it (logged,
    /// counted in `havip_agent_alert_dropped_total`).
    pub fn notify(&self, alert: Alert) {
        for sink in self.sinks.iter() {
            if let Err(e) = sink.tx.try_send(Msg::Send(alert.clone())) {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "worker stopped",
                };
                tracing::warn!(
                    sink = sink.name,
                    event = alert.event.as_str(),
                    havip = alert.havip_id,
                    failover_id = alert.failover_id.as_deref().unwrap_or(""),
                    why,
                    "alert dropped"
                );
                self.metrics.inc_alert_dropped(&sink.name);
            }
        }
    }

    /// Waits until every alert queued before this call was delivered or given up on, at most `within`.
    /// Returns whether it was. For shutdown and tests.
    pub async fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut waits = Vec::new();
        for sink in self.sinks.iter() {
            let (done_tx, done_rx) = oneshot::channel();
            match tokio::time::timeout_at(deadline, sink.tx.send(Msg::Flush(done_tx))).await {
                Ok(Ok(())) => waits.push(done_rx),
                _ => return false,
            }
        }
        for w in waits {
            if !matches!(tokio::time::timeout_at(deadline, w).await, Ok(Ok(()))) {
                return false;
            }
        }
        true
    }
}

async fn worker(
    sink: Sink,
    mut rx: mpsc::Receiver<Msg>,
    client: Option<reqwest::Client>,
    metrics: Metrics,
    opts: AlerterOptions,
) {
    while let Some(msg) = rx.recv().await {
        let alert = match msg {
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Msg::Send(a) => a,
        };
        let body = sink.body(&alert);
        let mut backoff = opts.backoff;
        for attempt in 1..=sink.attempts {
            let result = match &client {
                Some(c) => deliver(c, &sink, &body).await,
                None => Err(DeliveryError::Client("not built".to_owned())),
            };
            let error = match result {
                Ok(()) => {
                    tracing::debug!(
                        sink = sink.name,
                        event = alert.event.as_str(),
                        attempt,
                        "alert delivered"
                    );
                    break;
                }
                Err(e) => e,
            };
            let last = attempt == sink.attempts || !error.is_retryable();
            if last {
                tracing::warn!(
                    sink = sink.name,
                    event = alert.event.as_str(),
                    havip = alert.havip_id,
                    failover_id = alert.failover_id.as_deref().unwrap_or(""),
                    attempt,
                    error = %error,
                    "alert delivery failed; giving up"
                );
                metrics.inc_alert_failure(&sink.name);
                break;
            }
            tracing::info!(
                sink = sink.name,
                event = alert.event.as_str(),
                attempt,
                error = %error,
                retry_in_ms = backoff.as_millis() as u64,
                "alert delivery failed; retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(opts.backoff_max);
        }
    }
}

/// One attempt. Errors never carry the URL or its key: reqwest's errors are taken `without_url()`, and
/// everything the webhook or a library says is passed through the sink's [`Redactor`] (a WeCom error
/// can echo the bare key).
async fn deliver(client: &reqwest::Client, sink: &Sink, body: &Value) -> Result<(), DeliveryError> {
    let scrub = |text: String| sink.redactor.redact(&text);
    let attempt = async {
        let resp = client
            .post(sink.url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                DeliveryError::Transport(scrub(crate::logging::error_chain(&e.without_url())))
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(DeliveryError::Http(status.as_u16()));
        }
        if sink.format == AlertFormat::Wecom {
            // WeCom answers HTTP 200 even for errors; the verdict is the errcode.
            let bytes = resp.bytes().await.map_err(|e| {
                DeliveryError::Transport(scrub(crate::logging::error_chain(&e.without_url())))
            })?;
            let reply: Value = serde_json::from_slice(&bytes)
                .map_err(|e| DeliveryError::WecomReply(scrub(e.to_string())))?;
            let errcode = reply
                .get("errcode")
                .and_then(Value::as_i64)
                .ok_or_else(|| {
                    // Scrub before cutting, so a cut cannot leave half a key behind.
                    DeliveryError::WecomReply(truncate(scrub(reply.to_string()), 200))
                })?;
            if errcode != 0 {
                let errmsg = reply
                    .get("errmsg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                // WeCom's errmsg may quote request details, the key among them ("invalid webhook url,
                // hint: [..]"): keep it short and free of the key.
                let errmsg = truncate(scrub(errmsg), 200);
                return Err(DeliveryError::Wecom { errcode, errmsg });
            }
        }
        Ok(())
    };
    match tokio::time::timeout(sink.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DeliveryError::Timeout(sink.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            event: AlertKind::Fenced,
            havip_id: "havip-1".into(),
            vip: "172.16.2.250/24".into(),
            master: "mymaster".into(),
            node: "redis-a".into(),
            failover_id: Some("f-1".into()),
            message: "lost sight of the sentinel majority".into(),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn wecom_content_is_cut_to_the_limit_on_a_char_boundary() {
        let mut a = alert();
        a.message = "漂".repeat(2000);
        let body = wecom_body(&a, WecomMsgType::Text);
        let content = body["text"]["content"].as_str().unwrap();
        assert!(content.len() <= WECOM_TEXT_LIMIT, "{}", content.len());
        assert!(content.ends_with("..."));
    }

    #[test]
    fn only_healable_errors_are_retried() {
        assert!(DeliveryError::Http(500).is_retryable());
        assert!(DeliveryError::Http(429).is_retryable());
        assert!(!DeliveryError::Http(404).is_retryable());
        assert!(
            !DeliveryError::Wecom {
                errcode: 93000,
                errmsg: String::new()
            }
            .is_retryable()
        );
        assert!(
            DeliveryError::Wecom {
                errcode: 45009,
                errmsg: String::new()
            }
            .is_retryable()
        );
    }

    #[test]
    fn severities_follow_the_kind() {
        assert_eq!(AlertKind::Acquired.severity(), "info");
        assert_eq!(AlertKind::Fenced.severity(), "warning");
        assert_eq!(AlertKind::ClaimFailed.severity(), "critical");
        assert_eq!(AlertKind::PauseFailed.severity(), "critical");
        assert_eq!(AlertKind::PauseFailed.as_str(), "pause_failed");
        assert_eq!(json_body(&alert())["event"], "fenced");
    }
}

//! A fake CVM instance metadata service: one wiremock server per simulated CVM.
//!
//! Owns: the metadata paths the agent reads (`instance-id`, `local-ipv4`, `mac`, `placement/*`,
//! `network/interfaces/macs/` and `network/interfaces/macs/<mac>/*` including `eni-id`, for eth0's primary
//! ENI and any secondary ENIs), `cam/security-credentials/...`), role credentials that tests change
//! at run time (to exercise refresh), 404 for anything else, and hit counters. It does not know about the
//! VPC API (see `vpc`); a test wires the role credentials into [`super::FakeCloud`] itself.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use havip_agent::secret::Secret;

/// The path prefix of the metadata tree.
pub const BASE_PATH: &str = "/latest/meta-data/";

/// Temporary credentials of a CAM role, as `cam/security-credentials/<role>` returns them.
#[derive(Debug, Clone)]
pub struct RoleCredentials {
    /// The role name (`cam/security-credentials/` lists it).
    pub role: String,
    /// `TmpSecretId`.
    pub tmp_secret_id: String,
    /// `TmpSecretKey`.
    pub tmp_secret_key: Secret,
    /// `Token` (sent as `X-TC-Token`).
    pub token: Secret,
    /// `ExpiredTime`, Unix seconds; `Expiration` is derived from it (RFC 3339, UTC).
    pub expired_time: i64,
    /// `Code`: `Success` unless a test wants a failure.
    pub code: String,
}

impl RoleCredentials {
    /// Credentials with `Code: Success`.
    pub fn new(
        role: &str,
        tmp_secret_id: &str,
        tmp_secret_key: &str,
        token: &str,
        expired_time: i64,
    ) -> Self {
        Self {
            role: role.to_owned(),
            tmp_secret_id: tmp_secret_id.to_owned(),
            tmp_secret_key: Secret::new(tmp_secret_key),
            token: Secret::new(token),
            expired_time,
            code: "Success".to_owned(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let expiration = chrono::DateTime::from_timestamp(self.expired_time, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        json!({
            "TmpSecretId": self.tmp_secret_id,
            "TmpSecretKey": self.tmp_secret_key.expose(),
            "ExpiredTime": self.expired_time,
            "Expiration": expiration,
            "Token": self.token.expose(),
            "Code": self.code,
        })
    }
}

/// What one simulated CVM's metadata says.
#[derive(Debug, Clone)]
pub struct MetadataSpec {
    /// `instance-id`.
    pub instance_id: String,
    /// `local-ipv4` (eth0's address).
    pub local_ipv4: Ipv4Addr,
    /// eth0's MAC; `mac` prints it uppercase with colons.
    pub mac: [u8; 6],
    /// `placement/region`.
    pub region: String,
    /// `placement/zone`.
    pub zone: String,
    /// `network/interfaces/macs/<mac>/vpc-id`.
    pub vpc_id: String,
    /// `network/interfaces/macs/<mac>/subnet-id`.
    pub subnet_id: String,
    /// `network/interfaces/macs/<mac>/eni-id` of eth0: the primary ENI (default
    /// [`crate::fake::eni_id_for`]`(instance_id)`, as the fake VPC names it).
    pub eni_id: String,
    /// Secondary ENIs attached to this CVM, each under `network/interfaces/macs/<its mac>/`.
    pub secondary_enis: Vec<MetadataEni>,
    /// The bound CAM role, if any.
    pub role: Option<RoleCredentials>,
}

/// A secondary ENI as the metadata lists it.
#[derive(Debug, Clone)]
pub struct MetadataEni {
    /// Its MAC.
    pub mac: [u8; 6],
    /// `eni-id`.
    pub eni_id: String,
    /// `primary-local-ipv4`.
    pub local_ipv4: Ipv4Addr,
}

impl MetadataSpec {
    /// A CVM in `ap-guangzhou-3` without a role.
    pub fn new(instance_id: &str, local_ipv4: Ipv4Addr, mac: [u8; 6]) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            local_ipv4,
            mac,
            region: "ap-guangzhou".to_owned(),
            zone: "ap-guangzhou-3".to_owned(),
            vpc_id: "vpc-fake0001".to_owned(),
            subnet_id: "subnet-fake0001".to_owned(),
            eni_id: crate::fake::eni_id_for(instance_id),
            secondary_enis: Vec::new(),
            role: None,
        }
    }

    /// Attaches a secondary ENI (listed under its own MAC, with its `eni-id`).
    pub fn with_eni(mut self, mac: [u8; 6], eni_id: &str, local_ipv4: Ipv4Addr) -> Self {
        self.secondary_enis.push(MetadataEni {
            mac,
            eni_id: eni_id.to_owned(),
            local_ipv4,
        });
        self
    }

    /// Binds a CAM role.
    pub fn with_role(mut self, role: RoleCredentials) -> Self {
        self.role = Some(role);
        self
    }
}

/// A MAC as metadata prints it: `52:54:00:AB:CD:EF`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

struct State {
    spec: MetadataSpec,
    hits: HashMap<String, usize>,
    delay: Option<Duration>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake metadata service for one CVM. Clones share it; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct FakeMetadata {
    server: Arc<MockServer>,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FakeMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeMetadata")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl FakeMetadata {
    /// Starts one on 127.0.0.1 with a free port.
    pub async fn start(spec: MetadataSpec) -> Self {
        Self::serve(
            MockServer::builder()
                .disable_request_recording()
                .start()
                .await,
            spec,
        )
        .await
    }

    /// Starts one on an already bound listener.
    pub async fn start_on(listener: std::net::TcpListener, spec: MetadataSpec) -> Self {
        let server = MockServer::builder()
            .listener(listener)
            .disable_request_recording()
            .start()
            .await;
        Self::serve(server, spec).await
    }

    async fn serve(server: MockServer, spec: MetadataSpec) -> Self {
        let state = Arc::new(Mutex::new(State {
            spec,
            hits: HashMap::new(),
            delay: None,
        }));
        Mock::given(any())
            .respond_with(Responder {
                state: state.clone(),
            })
            .named("fake metadata")
            .mount(&server)
            .await;
        Self {
            server: Arc::new(server),
            state,
        }
    }

    /// The metadata base URL, e.g. `http://127.0.0.1:41234/latest/meta-data/`.
    pub fn endpoint(&self) -> String {
        format!("{}{BASE_PATH}", self.server.uri())
    }

    /// Binds, replaces or (with `None`) unbinds the CAM role credentials.
    pub fn set_role_credentials(&self, role: Option<RoleCredentials>) {
        lock(&self.state).spec.role = role;
    }

    /// Holds every answer back this long (`None`: answer at once), to test client timeouts.
    pub fn set_delay(&self, delay: Option<Duration>) {
        lock(&self.state).delay = delay;
    }

    /// How many requests asked for `path`, relative to the base (e.g. `instance-id`,
    /// `cam/security-credentials/`), including those answered 404.
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.state).hits.get(path).copied().unwrap_or(0)
    }

    /// The spec as it is now.
    pub fn spec(&self) -> MetadataSpec {
        lock(&self.state).spec.clone()
    }
}

struct Responder {
    state: Arc<Mutex<State>>,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut st = lock(&self.state);
        let path = request.url.path();
        let rel = path.strip_prefix(BASE_PATH).unwrap_or(path).to_owned();
        *st.hits.entry(rel.clone()).or_default() += 1;
        let body = if request.method.as_str() == "GET" {
            answer(&st.spec, &rel)
        } else {
            None
        };
        let mut t = match body {
            Some((text, mime)) => ResponseTemplate::new(200).set_body_raw(text.into_bytes(), mime),
            None => {
                ResponseTemplate::new(404).set_body_raw(b"404 - Not Found".to_vec(), "text/plain")
            }
        };
        if let Some(d) = st.delay {
            t = t.set_delay(d);
        }
        t
    }
}

fn answer(spec: &MetadataSpec, rel: &str) -> Option<(String, &'static str)> {
    let text = |s: String| Some((s, "text/plain"));
    let mac = format_mac(spec.mac);
    match rel {
        "instance-id" => return text(spec.instance_id.clone()),
        "local-ipv4" => return text(spec.local_ipv4.to_string()),
        "mac" => return text(mac),
        "placement/region" => return text(spec.region.clone()),
        "placement/zone" => return text(spec.zone.clone()),
        "cam/security-credentials/" | "cam/security-credentials" => {
            return spec.role.as_ref().and_then(|r| text(r.role.clone()));
        }
        _ => {}
    }
    if let Some(role) = rel.strip_prefix("cam/security-credentials/") {
        let creds = spec.role.as_ref().filter(|r| r.role == role)?;
        return Some((creds.to_json().to_string(), "application/json"));
    }
    if rel == "network/interfaces/macs/" || rel == "network/interfaces/macs" {
        // One directory per ENI, eth0's first (the documented listing: `52:54:00:BF:B3:51/`).
        let mut list = format!("{mac}/\n");
        for e in &spec.secondary_enis {
            list.push_str(&format!("{}/\n", format_mac(e.mac)));
        }
        return text(list);
    }
    if let Some(rest) = rel.strip_prefix("network/interfaces/macs/") {
        let (m, leaf) = rest.split_once('/')?;
        let (m_text, eni_id, ipv4) = if m.eq_ignore_ascii_case(&mac) {
            (mac.clone(), spec.eni_id.clone(), spec.local_ipv4)
        } else {
            let e = spec
                .secondary_enis
                .iter()
                .find(|e| m.eq_ignore_ascii_case(&format_mac(e.mac)))?;
            (format_mac(e.mac), e.eni_id.clone(), e.local_ipv4)
        };
        return match leaf {
            "mac" => text(m_text),
            "eni-id" => text(eni_id),
            "primary-local-ipv4" | "local-ipv4s" => text(ipv4.to_string()),
            "vpc-id" => text(spec.vpc_id.clone()),
            "subnet-id" => text(spec.subnet_id.clone()),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_uppercase_with_colons() {
        assert_eq!(
            format_mac([0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]),
            "52:54:00:AB:CD:0F"
        );
    }

    #[test]
    fn role_credentials_carry_every_field_the_sdks_read() {
        let r = RoleCredentials::new("redis-ha", "AKIDtmp", "tmpkey", "tok", 1_700_000_000);
        let v = r.to_json();
        assert_eq!(v["TmpSecretId"], "AKIDtmp");
        assert_eq!(v["TmpSecretKey"], "tmpkey");
        assert_eq!(v["Token"], "tok");
        assert_eq!(v["ExpiredTime"], 1_700_000_000);
        assert_eq!(v["Expiration"], "2023-11-14T22:13:20Z");
        assert_eq!(v["Code"], "Success");
    }

    #[test]
    fn every_eni_is_listed_under_its_mac_with_its_eni_id() {
        let spec = MetadataSpec::new("ins-a", Ipv4Addr::new(198, 18, 0, 10), [2, 0, 0, 0, 0, 1])
            .with_eni(
                [2, 0, 0, 0, 0, 0xab],
                "eni-second01",
                Ipv4Addr::new(198, 18, 0, 11),
            );
        let get = |p: &str| answer(&spec, p).map(|(t, _)| t);

        assert_eq!(
            get("network/interfaces/macs/").as_deref(),
            Some("02:00:00:00:00:01/\n02:00:00:00:00:AB/\n")
        );
        assert_eq!(
            get("network/interfaces/macs/02:00:00:00:00:01/eni-id"),
            Some(crate::fake::eni_id_for("ins-a")),
            "eth0 is the primary ENI, named as the fake VPC names it"
        );
        assert_eq!(
            get("network/interfaces/macs/02:00:00:00:00:ab/eni-id").as_deref(),
            Some("eni-second01"),
            "MACs match in either case"
        );
        assert_eq!(
            get("network/interfaces/macs/02:00:00:00:00:AB/primary-local-ipv4").as_deref(),
            Some("198.18.0.11")
        );
        assert_eq!(
            get("network/interfaces/macs/02:00:00:00:00:99/eni-id"),
            None
        );
    }

    #[test]
    fn debug_of_role_credentials_hides_key_and_token() {
        let r = RoleCredentials::new("redis-ha", "AKIDtmp", "tmpkey-SECRET", "tok-SECRET", 1);
        let s = format!("{r:?}");
        assert!(!s.contains("SECRET"), "{s}");
    }
}

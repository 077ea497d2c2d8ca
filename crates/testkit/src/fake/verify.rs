//! An independent TC3-HMAC-SHA256 verifier, as the Tencent Cloud API front end would run it.
//!
//! Owns: parsing `Authorization`, re-deriving the canonical request, the string to sign and the signature
//! from the raw request bytes, and the checks around them (credential scope, clock skew, SecretId, token).
//! It deliberately shares no code with `havip_agent::tc3`: a bug in the signer must not be able to hide behind
//! the same bug in the checker. It does not know about actions or HAVIPs (see `vpc`).

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use havip_agent::secret::Secret;

/// The only algorithm TC3 defines.
const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// How far `X-TC-Timestamp` may be from the server's clock (TC3: 5 minutes).
pub const MAX_SKEW_SECONDS: i64 = 300;

/// The raw parts of an HTTP request, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// Request path, e.g. `/`.
    pub path: &'a str,
    /// Raw query string without `?` (empty for POST).
    pub query: &'a str,
    /// Header names (any case) and values, as received.
    pub headers: &'a [(String, String)],
    /// The body bytes exactly as received.
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(self.headers, name)
    }
}

/// The first value of a header in a list, by case-insensitive name.
pub fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What the server knows about one SecretId.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The secret key the HMAC chain starts from.
    pub secret_key: Secret,
    /// For temporary (role) credentials: the token that must arrive as `X-TC-Token`.
    pub token: Option<Secret>,
}

/// Every intermediate value the verifier derived, for diagnostics and vector tests. Holds no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    /// Lowercase hex SHA-256 of the body as received.
    pub hashed_payload: String,
    /// TC3 step 1, as the server rebuilt it.
    pub canonical_request: String,
    /// Lowercase hex SHA-256 of the canonical request.
    pub hashed_canonical_request: String,
    /// TC3 step 2.
    pub string_to_sign: String,
    /// TC3 step 3: the signature the server expects.
    pub expected_signature: String,
}

/// A request whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The SecretId from the credential scope.
    pub secret_id: String,
    /// The credential scope date (`YYYY-MM-DD`).
    pub date: String,
    /// `X-TC-Timestamp`.
    pub timestamp: i64,
    /// The signed header names, in the order given.
    pub signed_headers: Vec<String>,
    /// How the signature was derived.
    pub derivation: Derivation,
}

/// Why a request was refused: a real Tencent Cloud error code and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// E.g. `AuthFailure.SignatureFailure`.
    pub code: &'static str,
    /// Human-readable reason (never contains key material).
    pub message: String,
    /// The server-side derivation, when the verifier got that far.
    pub derivation: Option<Box<Derivation>>,
}

impl VerifyError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            derivation: None,
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for VerifyError {}

/// Error codes the verifier returns (the real ones).
pub mod codes {
    /// `Authorization` missing or not in the TC3 format.
    pub const INVALID_AUTHORIZATION: &str = "AuthFailure.InvalidAuthorization";
    /// SecretId empty or not well formed.
    pub const INVALID_SECRET_ID: &str = "AuthFailure.InvalidSecretId";
    /// `X-TC-Timestamp` more than 5 minutes off the server clock.
    pub const SIGNATURE_EXPIRE: &str = "AuthFailure.SignatureExpire";
    /// The signature (or its scope) does not match.
    pub const SIGNATURE_FAILURE: &str = "AuthFailure.SignatureFailure";
    /// Unknown SecretId.
    pub const SECRET_ID_NOT_FOUND: &str = "AuthFailure.SecretIdNotFound";
    /// Temporary key without its token, or a wrong token.
    pub const TOKEN_FAILURE: &str = "AuthFailure.TokenFailure";
    /// A required header is missing.
    pub const MISSING_PARAMETER: &str = "MissingParameter";
    /// A header has a value of the wrong shape.
    pub const INVALID_PARAMETER_VALUE: &str = "InvalidParameterValue";
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The UTC calendar date (`YYYY-MM-DD`) of a Unix timestamp, or `None` if out of range.
pub fn utc_date(timestamp: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(timestamp, 0).map(|t| t.format("%Y-%m-%d").to_string())
}

/// The parsed `Authorization` header.
struct Authorization<'a> {
    secret_id: &'a str,
    date: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, VerifyError> {
    let bad = |why: String| VerifyError::new(codes::INVALID_AUTHORIZATION, why);
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| bad(format!("Authorization must start with `{ALGORITHM} `")))?;
    // TC3 step 4: the three parts are separated by a comma and a space.
    let parts: Vec<&str> = rest.split(", ").collect();
    let [credential, signed, signature] = parts.as_slice() else {
        return Err(bad(format!(
            "Authorization must have 3 parts separated by \", \" (Credential, SignedHeaders, Signature), found {}",
            parts.len()
        )));
    };
    let credential = credential
        .strip_prefix("Credential=")
        .ok_or_else(|| bad("Authorization part 1 must be `Credential=...`".into()))?;
    let signed = signed
        .strip_prefix("SignedHeaders=")
        .ok_or_else(|| bad("Authorization part 2 must be `SignedHeaders=...`".into()))?;
    let signature = signature
        .strip_prefix("Signature=")
        .ok_or_else(|| bad("Authorization part 3 must be `Signature=...`".into()))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [secret_id, date, service, terminator] = scope.as_slice() else {
        return Err(bad(format!(
            "Credential must be `<SecretId>/<date>/<service>/tc3_request`, got {} parts",
            scope.len()
        )));
    };
    if *terminator != "tc3_request" {
        return Err(bad(format!(
            "Credential scope must end in `tc3_request`, got `{terminator}`"
        )));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad("Signature must be 64 lowercase hex digits".into()));
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    for name in &signed_headers {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(format!(
                "SignedHeaders must be lowercase names separated by `;`, got `{signed}`"
            )));
        }
    }
    if !signed_headers.windows(2).all(|w| w[0] < w[1]) {
        return Err(bad(format!(
            "SignedHeaders must be sorted and without duplicates, got `{signed}`"
        )));
    }
    for required in ["content-type", "host"] {
        if !signed_headers.contains(&required) {
            return Err(bad(format!(
                "SignedHeaders must include `{required}`, got `{signed}`"
            )));
        }
    }
    Ok(Authorization {
        secret_id,
        date,
        service,
        signed_headers,
        signature,
    })
}

/// Checks a TC3-HMAC-SHA256 request as the API would.
///
/// `service` is the service this endpoint serves (`vpc`), `now_unix` the server's clock, and `lookup`
/// finds the key record for a SecretId. Checks in order: Authorization format, credential scope service,
/// `X-TC-Timestamp` within [`MAX_SKEW_SECONDS`], scope date == UTC date of the timestamp, SecretId known,
/// signature, token.
pub fn verify(
    req: &SignedRequest<'_>,
    service: &str,
    now_unix: i64,
    lookup: &dyn Fn(&str) -> Option<KeyRecord>,
) -> Result<Verified, VerifyError> {
    let auth_value = req.header("authorization").ok_or_else(|| {
        VerifyError::new(
            codes::INVALID_AUTHORIZATION,
            "the Authorization header is missing",
        )
    })?;
    let auth = parse_authorization(auth_value)?;
    if auth.service != service {
        return Err(VerifyError::new(
            codes::SIGNATURE_FAILURE,
            format!(
                "Credential scope service is `{}` but this endpoint serves `{service}`",
                auth.service
            ),
        ));
    }
    let ts_raw = req.header("x-tc-timestamp").ok_or_else(|| {
        VerifyError::new(
            codes::MISSING_PARAMETER,
            "the X-TC-Timestamp header is missing",
        )
    })?;
    let timestamp: i64 = ts_raw.trim().parse().map_err(|_| {
        VerifyError::new(
            codes::INVALID_PARAMETER_VALUE,
            format!("X-TC-Timestamp must be integer seconds, got `{ts_raw}`"),
        )
    })?;
    if (now_unix - timestamp).abs() > MAX_SKEW_SECONDS {
        return Err(VerifyError::new(
            codes::SIGNATURE_EXPIRE,
            format!(
                "Signature expired: X-TC-Timestamp {timestamp} is more than {MAX_SKEW_SECONDS} s away from the server time {now_unix}"
            ),
        ));
    }
    // TC3 step 2: the scope date is the UTC date of the timestamp.
    let expected_date = utc_date(timestamp).ok_or_else(|| {
        VerifyError::new(
            codes::INVALID_PARAMETER_VALUE,
            format!("X-TC-Timestamp {timestamp} is out of range"),
        )
    })?;
    if auth.date != expected_date {
        return Err(VerifyError::new(
            codes::SIGNATURE_FAILURE,
            format!(
                "Credential date `{}` is not the UTC date `{expected_date}` of X-TC-Timestamp {timestamp}",
                auth.date
            ),
        ));
    }
    if auth.secret_id.is_empty()
        || !auth
            .secret_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'*')
    {
        return Err(VerifyError::new(
            codes::INVALID_SECRET_ID,
            "the SecretId in the credential scope is empty or malformed",
        ));
    }
    let record = lookup(auth.secret_id).ok_or_else(|| {
        VerifyError::new(
            codes::SECRET_ID_NOT_FOUND,
            format!("SecretId `{}` is not found", auth.secret_id),
        )
    })?;

    // TC3 step 1: canonical headers from the values as received, lowercased and trimmed.
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let value = req.header(name).ok_or_else(|| {
            VerifyError::new(
                codes::SIGNATURE_FAILURE,
                format!("signed header `{name}` is not in the request"),
            )
        })?;
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(&value.trim().to_ascii_lowercase());
        canonical_headers.push('\n');
    }
    let signed_headers = auth.signed_headers.join(";");
    let hashed_payload = sha256_hex(req.body);
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method, req.path, req.query, canonical_headers, signed_headers, hashed_payload
    );
    let hashed_canonical_request = sha256_hex(canonical_request.as_bytes());
    let string_to_sign = format!(
        "{ALGORITHM}\n{timestamp}\n{}/{service}/tc3_request\n{hashed_canonical_request}",
        auth.date
    );
    // TC3 step 3: the key chain.
    let k_date = hmac(
        format!("TC3{}", record.secret_key.expose()).as_bytes(),
        auth.date.as_bytes(),
    );
    let k_service = hmac(&k_date, service.as_bytes());
    let k_signing = hmac(&k_service, b"tc3_request");
    let expected_signature = hex::encode(hmac(&k_signing, string_to_sign.as_bytes()));
    let derivation = Derivation {
        hashed_payload,
        canonical_request,
        hashed_canonical_request,
        string_to_sign,
        expected_signature,
    };
    if !constant_time_eq(
        derivation.expected_signature.as_bytes(),
        auth.signature.as_bytes(),
    ) {
        return Err(VerifyError {
            code: codes::SIGNATURE_FAILURE,
            message: "The provided credentials could not be validated: the signature does not match \
                      (check the canonical request: method, headers, signed Content-Type, body bytes)"
                .into(),
            derivation: Some(Box::new(derivation)),
        });
    }
    let sent_token = req.header("x-tc-token").filter(|t| !t.is_empty());
    match (&record.token, sent_token) {
        (Some(_), None) => {
            return Err(VerifyError::new(
                codes::TOKEN_FAILURE,
                "temporary credentials need X-TC-Token, which is missing",
            ));
        }
        (Some(want), Some(got)) if want.expose() != got => {
            return Err(VerifyError::new(
                codes::TOKEN_FAILURE,
                "X-TC-Token does not match the temporary SecretId",
            ));
        }
        (None, Some(_)) => {
            return Err(VerifyError::new(
                codes::TOKEN_FAILURE,
                "X-TC-Token was sent with a long-term SecretId",
            ));
        }
        _ => {}
    }
    Ok(Verified {
        secret_id: auth.secret_id.to_owned(),
        date: auth.date.to_owned(),
        timestamp,
        signed_headers: auth
            .signed_headers
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        derivation,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY_AB: &[u8] = br#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
    const BODY_C: &[u8] = br#"{"HaVipIds": ["havip-9o233uri"]}"#;
    const BODY_D: &[u8] = br#"{"HaVipAssociationSet": [{"InstanceId": "ins-nkgrfbic", "HaVipId": "havip-crb65sya", "InstanceType": "CVM"}]}"#;

    struct Vector {
        host: &'static str,
        service: &'static str,
        action: &'static str,
        content_type: &'static str,
        timestamp: i64,
        body: &'static [u8],
        secret_id: &'static str,
        secret_key: &'static str,
        token: Option<&'static str>,
        signed: &'static str,
        signature: &'static str,
    }

    impl Vector {
        fn headers(&self) -> Vec<(String, String)> {
            let date = utc_date(self.timestamp).unwrap();
            let mut h = vec![
                ("Host".to_owned(), self.host.to_owned()),
                ("Content-Type".to_owned(), self.content_type.to_owned()),
                ("X-TC-Action".to_owned(), self.action.to_owned()),
                ("X-TC-Timestamp".to_owned(), self.timestamp.to_string()),
                ("X-TC-Version".to_owned(), "2017-03-12".to_owned()),
                ("X-TC-Region".to_owned(), "ap-guangzhou".to_owned()),
                (
                    "Authorization".to_owned(),
                    format!(
                        "TC3-HMAC-SHA256 Credential={}/{date}/{}/tc3_request, SignedHeaders={}, Signature={}",
                        self.secret_id, self.service, self.signed, self.signature
                    ),
                ),
            ];
            if let Some(t) = self.token {
                h.push(("X-TC-Token".to_owned(), t.to_owned()));
            }
            h
        }

        fn lookup(&self) -> impl Fn(&str) -> Option<KeyRecord> + '_ {
            move |id| {
                (id == self.secret_id).then(|| KeyRecord {
                    secret_key: Secret::new(self.secret_key),
                    token: self.token.map(Secret::new),
                })
            }
        }

        fn check(
            &self,
            headers: &[(String, String)],
            body: &[u8],
        ) -> Result<Verified, VerifyError> {
            let req = SignedRequest {
                method: "POST",
                path: "/",
                query: "",
                headers,
                body,
            };
            verify(&req, self.service, self.timestamp, &self.lookup())
        }
    }

    fn vector_b() -> Vector {
        Vector {
            host: "cvm.tencentcloudapi.com",
            service: "cvm",
            action: "DescribeInstances",
            content_type: "application/json; charset=utf-8",
            timestamp: 1551113065,
            body: BODY_AB,
            secret_id: "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
            secret_key: "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            token: None,
            signed: "content-type;host",
            signature: "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168",
        }
    }

    fn vector_c() -> Vector {
        Vector {
            host: "vpc.tencentcloudapi.com",
            service: "vpc",
            action: "DescribeHaVips",
            content_type: "application/json",
            timestamp: 1551113065,
            body: BODY_C,
            secret_id: "AKIDEXAMPLE",
            secret_key: "secretkeyEXAMPLE",
            token: Some("tokenEXAMPLE"),
            signed: "content-type;host",
            signature: "42361b7fd71cbf19569c8e3b9850b044b5b9a4dab3895125d03528eba9cd301e",
        }
    }

    fn vector_d() -> Vector {
        Vector {
            host: "vpc.tencentcloudapi.com",
            service: "vpc",
            action: "AssociateHaVipInstance",
            content_type: "application/json",
            timestamp: 1700000000,
            body: BODY_D,
            secret_id: "AKIDEXAMPLE",
            secret_key: "secretkeyEXAMPLE",
            token: None,
            signed: "content-type;host",
            signature: "5da45239937771ef28f91199496474089be1da5c1a1b3391e84bc33c6ba6f687",
        }
    }

    #[test]
    fn accepts_vector_b_with_every_stage_matching() {
        let v = vector_b();
        let ok = v.check(&v.headers(), v.body).expect("vector B must verify");
        let d = &ok.derivation;
        assert_eq!(
            d.hashed_payload, "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064",
            "hashed payload"
        );
        assert_eq!(
            d.hashed_canonical_request,
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031",
            "hashed canonical request"
        );
        assert_eq!(d.expected_signature, v.signature, "signature");
        assert_eq!(ok.date, "2019-02-25");
    }

    #[test]
    fn accepts_vector_b_with_x_tc_action_signed() {
        let v = Vector {
            signed: "content-type;host;x-tc-action",
            signature: "644be983de9a8a3f00db8eadaba61467c3b429e2215758ba897b738ca469fd26",
            ..vector_b()
        };
        let ok = v
            .check(&v.headers(), v.body)
            .expect("vector B with x-tc-action must verify");
        assert_eq!(ok.signed_headers, ["content-type", "host", "x-tc-action"]);
    }

    #[test]
    fn accepts_vector_a_with_masked_keys() {
        let key = "*".repeat(32);
        let id: &'static str = Box::leak(format!("AKID{key}").into_boxed_str());
        let v = Vector {
            secret_id: id,
            secret_key: Box::leak(key.into_boxed_str()),
            signed: "content-type;host;x-tc-action",
            signature: "10b1a37a7301a02ca19a647ad722d5e43b4b3cff309d421d85b46093f6ab6c4f",
            ..vector_b()
        };
        let ok = v.check(&v.headers(), v.body).expect("vector A must verify");
        assert_eq!(
            ok.derivation.hashed_canonical_request,
            "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84",
            "hashed canonical request"
        );
    }

    #[test]
    fn accepts_vector_c_with_its_token() {
        let v = vector_c();
        let ok = v.check(&v.headers(), v.body).expect("vector C must verify");
        assert_eq!(
            ok.derivation.hashed_payload,
            "874fd0f5105b5030722deefeba59eb0a5358acfca4febb352190fb8b062f3aeb"
        );
        assert_eq!(
            ok.derivation.hashed_canonical_request,
            "c329a1eb55b82e452b9d38203508a6407a453f4b347e43c7ebe0980f9654f14e"
        );
    }

    #[test]
    fn accepts_vector_d() {
        let v = vector_d();
        let ok = v.check(&v.headers(), v.body).expect("vector D must verify");
        assert_eq!(
            ok.derivation.hashed_payload,
            "d467f6974998128e2885e08420ac767abc798036b67271c8b8c13a70d7e1ef76"
        );
        assert_eq!(
            ok.derivation.hashed_canonical_request,
            "9be5eef0531c5c5c1a6c52a38c048892a8ef28f7ea36b5f6537407ebe7f9a3a0"
        );
        assert_eq!(ok.date, "2023-11-14");
    }

    fn code_of(r: Result<Verified, VerifyError>) -> &'static str {
        match r {
            Ok(_) => "accepted",
            Err(e) => e.code,
        }
    }

    #[test]
    fn rejects_a_body_changed_by_one_byte_after_signing() {
        let v = vector_d();
        let mut body = v.body.to_vec();
        body[20] ^= 0x01;
        let err = v.check(&v.headers(), &body).unwrap_err();
        assert_eq!(err.code, codes::SIGNATURE_FAILURE, "{err}");
        assert_ne!(
            err.derivation.unwrap().hashed_payload,
            "d467f6974998128e2885e08420ac767abc798036b67271c8b8c13a70d7e1ef76"
        );
    }

    #[test]
    fn rejects_a_credential_date_that_is_not_the_utc_date_of_the_timestamp() {
        // Regression guard: signing with the local (UTC+8) date between 00:00 and 08:00.
        let v = vector_d();
        let headers: Vec<_> = v
            .headers()
            .into_iter()
            .map(|(n, val)| (n, val.replace("/2023-11-14/", "/2023-11-15/")))
            .collect();
        let err = v.check(&headers, v.body).unwrap_err();
        assert_eq!(err.code, codes::SIGNATURE_FAILURE);
        assert!(err.message.contains("2023-11-14"), "{err}");
    }

    #[test]
    fn rejects_a_content_type_that_differs_from_the_signed_one() {
        let v = vector_d();
        let headers: Vec<_> = v
            .headers()
            .into_iter()
            .map(|(n, val)| {
                if n == "Content-Type" {
                    (n, "application/json; charset=utf-8".to_owned())
                } else {
                    (n, val)
                }
            })
            .collect();
        assert_eq!(code_of(v.check(&headers, v.body)), codes::SIGNATURE_FAILURE);
    }

    #[test]
    fn rejects_a_one_character_change_in_the_signature() {
        let v = Vector {
            signature: "5da45239937771ef28f91199496474089be1da5c1a1b3391e84bc33c6ba6f688",
            ..vector_d()
        };
        assert_eq!(
            code_of(v.check(&v.headers(), v.body)),
            codes::SIGNATURE_FAILURE
        );
    }

    #[test]
    fn rejects_a_timestamp_more_than_five_minutes_off() {
        let v = vector_d();
        let req_headers = v.headers();
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &req_headers,
            body: v.body,
        };
        let lookup = v.lookup();
        assert_eq!(
            code_of(verify(&req, "vpc", v.timestamp + 301, &lookup)),
            codes::SIGNATURE_EXPIRE
        );
        assert_eq!(
            code_of(verify(&req, "vpc", v.timestamp - 301, &lookup)),
            codes::SIGNATURE_EXPIRE
        );
        assert_eq!(
            code_of(verify(&req, "vpc", v.timestamp + 300, &lookup)),
            "accepted"
        );
    }

    #[test]
    fn rejects_an_unknown_secret_id() {
        let v = Vector {
            secret_key: "other",
            ..vector_d()
        };
        let headers = v.headers();
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: v.body,
        };
        assert_eq!(
            code_of(verify(&req, "vpc", v.timestamp, &|_| None)),
            codes::SECRET_ID_NOT_FOUND
        );
    }

    #[test]
    fn rejects_a_temporary_key_without_or_with_a_wrong_token() {
        let v = vector_c();
        let without: Vec<_> = v
            .headers()
            .into_iter()
            .filter(|(n, _)| n != "X-TC-Token")
            .collect();
        assert_eq!(code_of(v.check(&without, v.body)), codes::TOKEN_FAILURE);
        let wrong: Vec<_> = v
            .headers()
            .into_iter()
            .map(|(n, val)| {
                if n == "X-TC-Token" {
                    (n, "tokenOTHER".to_owned())
                } else {
                    (n, val)
                }
            })
            .collect();
        assert_eq!(code_of(v.check(&wrong, v.body)), codes::TOKEN_FAILURE);
    }

    #[test]
    fn rejects_malformed_authorization_headers() {
        let v = vector_d();
        let good = v.headers();
        let with_auth = |auth: String| -> Vec<(String, String)> {
            good.iter()
                .map(|(n, val)| {
                    if n == "Authorization" {
                        (n.clone(), auth.clone())
                    } else {
                        (n.clone(), val.clone())
                    }
                })
                .collect()
        };
        let cred = "Credential=AKIDEXAMPLE/2023-11-14/vpc/tc3_request";
        let sig = format!("Signature={}", v.signature);
        let cases = [
            format!("TC3-HMAC-SHA1 {cred}, SignedHeaders=content-type;host, {sig}"),
            format!("TC3-HMAC-SHA256 {cred},SignedHeaders=content-type;host,{sig}"),
            format!("TC3-HMAC-SHA256 {cred}, SignedHeaders=host, {sig}"),
            format!("TC3-HMAC-SHA256 {cred}, SignedHeaders=host;content-type, {sig}"),
            format!(
                "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/vpc, SignedHeaders=content-type;host, {sig}"
            ),
        ];
        for auth in cases {
            assert_eq!(
                code_of(v.check(&with_auth(auth.clone()), v.body)),
                codes::INVALID_AUTHORIZATION,
                "{auth}"
            );
        }
        let no_auth: Vec<_> = good
            .iter()
            .filter(|(n, _)| n != "Authorization")
            .cloned()
            .collect();
        assert_eq!(
            code_of(v.check(&no_auth, v.body)),
            codes::INVALID_AUTHORIZATION
        );
    }

    #[test]
    fn rejects_a_scope_for_another_service() {
        let v = vector_b();
        let headers = v.headers();
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: v.body,
        };
        assert_eq!(
            code_of(verify(&req, "vpc", v.timestamp, &v.lookup())),
            codes::SIGNATURE_FAILURE
        );
    }
}

//! TC3-HMAC-SHA256, Tencent Cloud API v3 request signing, as a pure function.
//!
//! Owns the four signing steps (canonical request, string to sign, key derivation, signature) and the
//! `Authorization` header value. It does no I/O and reads no clock: the caller passes the timestamp, the exact
//! body bytes and the exact `Content-Type` it will send, and gets every intermediate stage back so tests can
//! compare them with published vectors. It does not build or send requests (see `cloud`) and does not find
//! credentials (see `credentials`).

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The algorithm name, first token of the `Authorization` header and first line of the string to sign.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";

/// What is signed: the parts of one request. All values are taken exactly as they will be sent.
#[derive(Debug, Clone, Copy)]
pub struct SigningInput<'a> {
    /// HTTP method, e.g. `POST`. Only POST with an empty query string is supported: the canonical query is
    /// always empty.
    pub method: &'a str,
    /// The `Host` header value, with `:port` when the port is not the scheme's default.
    pub host: &'a str,
    /// The `Content-Type` header value, exactly as sent (e.g. `application/json`).
    pub content_type: &'a str,
    /// The request body, exactly the bytes sent.
    pub payload: &'a [u8],
    /// The service, e.g. `vpc`.
    pub service: &'a str,
    /// The action (`X-TC-Action`), e.g. `DescribeHaVips`. Only signed when `sign_action` is set.
    pub action: &'a str,
    /// `X-TC-Timestamp`: Unix seconds.
    pub timestamp: i64,
    /// Also sign `x-tc-action` (`SignedHeaders=content-type;host;x-tc-action`).
    pub sign_action: bool,
}

/// Every stage of one signature. The strings are the exact texts hashed or sent.
///
/// `Debug` masks the derived keys: they are derived from the secret key and valid for a whole day.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    /// Step 1: lowercase hex SHA-256 of the payload.
    pub hashed_payload: String,
    /// Step 1: the canonical request.
    pub canonical_request: String,
    /// Step 2: lowercase hex SHA-256 of the canonical request.
    pub hashed_canonical_request: String,
    /// Step 2: the UTC date (`YYYY-MM-DD`) of the timestamp.
    pub date: String,
    /// Step 2: the string to sign.
    pub string_to_sign: String,
    /// Step 3: `HMAC_SHA256("TC3" + SecretKey, date)`.
    pub k_date: [u8; 32],
    /// Step 3: `HMAC_SHA256(kDate, service)`.
    pub k_service: [u8; 32],
    /// Step 3: `HMAC_SHA256(kService, "tc3_request")`.
    pub k_signing: [u8; 32],
    /// Step 3: lowercase hex `HMAC_SHA256(kSigning, string_to_sign)`.
    pub signature: String,
    /// `content-type;host` or `content-type;host;x-tc-action`.
    pub signed_headers: String,
    /// Step 4: the `Authorization` header value.
    pub authorization: String,
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("hashed_payload", &self.hashed_payload)
            .field("canonical_request", &self.canonical_request)
            .field("hashed_canonical_request", &self.hashed_canonical_request)
            .field("date", &self.date)
            .field("string_to_sign", &self.string_to_sign)
            .field("k_date", &"***")
            .field("k_service", &"***")
            .field("k_signing", &"***")
            .field("signature", &self.signature)
            .field("signed_headers", &self.signed_headers)
            .field("authorization", &self.authorization)
            .finish()
    }
}

/// Signs one request. Pure: the same inputs always give the same output.
pub fn sign(input: &SigningInput, secret_id: &str, secret_key: &Secret) -> Signature {
    // Step 1: canonical request. Header names are lowercase, values trimmed, lines sorted by name (the
    // fixed order below is already sorted), each line ends in '\n'. x-tc-action's value is lowercased.
    let hashed_payload = sha256_hex(input.payload);
    let action_lower = input.action.trim().to_ascii_lowercase();
    let mut canonical_headers = format!(
        "content-type:{}\nhost:{}\n",
        input.content_type.trim(),
        input.host.trim()
    );
    let signed_headers = if input.sign_action {
        canonical_headers.push_str(&format!("x-tc-action:{action_lower}\n"));
        "content-type;host;x-tc-action"
    } else {
        "content-type;host"
    };
    let canonical_request = format!(
        "{method}\n/\n\n{canonical_headers}\n{signed_headers}\n{hashed_payload}",
        method = input.method.trim().to_ascii_uppercase(),
    );

    // Step 2: string to sign. The date is the UTC date of the timestamp, not the local one: between 00:00
    // and 08:00 UTC+8 the two differ.
    let date = utc_date(input.timestamp);
    let service = input.service.trim();
    let credential_scope = format!("{date}/{service}/tc3_request");
    let hashed_canonical_request = sha256_hex(canonical_request.as_bytes());
    let string_to_sign = format!(
        "{ALGORITHM}\n{timestamp}\n{credential_scope}\n{hashed_canonical_request}",
        timestamp = input.timestamp,
    );

    // Step 3: derived keys and the signature.
    let mut tc3_key = Vec::with_capacity(3 + secret_key.expose().len());
    tc3_key.extend_from_slice(b"TC3");
    tc3_key.extend_from_slice(secret_key.expose().as_bytes());
    let k_date = hmac_sha256(&tc3_key, date.as_bytes());
    let k_service = hmac_sha256(&k_date, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    let signature = hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()));

    // Step 4: comma *and* space between the parts.
    let authorization = format!(
        "{ALGORITHM} Credential={secret_id}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}"
    );

    Signature {
        hashed_payload,
        canonical_request,
        hashed_canonical_request,
        date,
        string_to_sign,
        k_date,
        k_service,
        k_signing,
        signature,
        signed_headers: signed_headers.to_owned(),
        authorization,
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("hmac takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The UTC calendar date (`YYYY-MM-DD`) of a Unix timestamp. Total for every `i64`: a timestamp outside
/// chrono's range (beyond about ±262,000 years) is clamped to its edge, so signing never fails; the API
/// rejects such a request as `SignatureExpire` anyway.
pub fn utc_date(timestamp: i64) -> String {
    let lo = chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp();
    let hi = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp();
    chrono::DateTime::from_timestamp(timestamp.clamp(lo, hi), 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Body of examples A and B: ASCII with literal `\u` escapes, 86 bytes.
    const AB_BODY: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
    const B_SECRET_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
    const B_SECRET_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";

    fn cvm_input(sign_action: bool, content_type: &'static str) -> SigningInput<'static> {
        SigningInput {
            method: "POST",
            host: "cvm.tencentcloudapi.com",
            content_type,
            payload: AB_BODY.as_bytes(),
            service: "cvm",
            action: "DescribeInstances",
            timestamp: 1_551_113_065,
            sign_action,
        }
    }

    fn vpc_input(
        action: &'static str,
        timestamp: i64,
        body: &'static str,
    ) -> SigningInput<'static> {
        SigningInput {
            method: "POST",
            host: "vpc.tencentcloudapi.com",
            content_type: "application/json",
            payload: body.as_bytes(),
            service: "vpc",
            action,
            timestamp,
            sign_action: false,
        }
    }

    #[test]
    fn example_b_tencents_published_vector() {
        assert_eq!(
            AB_BODY.len(),
            86,
            "the A/B body is 86 bytes with literal \\u escapes"
        );
        let sig = sign(
            &cvm_input(false, "application/json; charset=utf-8"),
            B_SECRET_ID,
            &Secret::new(B_SECRET_KEY),
        );
        assert_eq!(
            sig.hashed_payload, "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064",
            "B: hashed payload"
        );
        assert_eq!(
            sig.canonical_request,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\n\
             content-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064",
            "B: canonical request"
        );
        assert_eq!(
            sig.hashed_canonical_request,
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031",
            "B: hashed canonical request"
        );
        assert_eq!(sig.date, "2019-02-25", "B: date");
        assert_eq!(
            sig.string_to_sign,
            "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n\
             5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031",
            "B: string to sign"
        );
        assert_eq!(
            sig.signature, "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168",
            "B: signature"
        );
        assert_eq!(sig.signed_headers, "content-type;host", "B: signed headers");
        assert_eq!(
            sig.authorization,
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, \
             SignedHeaders=content-type;host, \
             Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168",
            "B: authorization"
        );
    }

    #[test]
    fn example_b_with_x_tc_action_signed() {
        let sig = sign(
            &cvm_input(true, "application/json; charset=utf-8"),
            B_SECRET_ID,
            &Secret::new(B_SECRET_KEY),
        );
        assert_eq!(
            sig.hashed_payload, "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064",
            "B+action: hashed payload"
        );
        assert_eq!(
            sig.canonical_request,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\
             x-tc-action:describeinstances\n\ncontent-type;host;x-tc-action\n\
             35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064",
            "B+action: canonical request (action value lowercased)"
        );
        // Example A's published hashed canonical request is this same request: only the keys differ.
        assert_eq!(
            sig.hashed_canonical_request,
            "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84",
            "B+action: hashed canonical request"
        );
        assert_eq!(
            sig.signed_headers, "content-type;host;x-tc-action",
            "B+action: signed headers"
        );
        assert_eq!(
            sig.signature, "644be983de9a8a3f00db8eadaba61467c3b429e2215758ba897b738ca469fd26",
            "B+action: signature"
        );
        assert!(
            sig.authorization
                .contains(", SignedHeaders=content-type;host;x-tc-action, "),
            "B+action: authorization names the signed headers: {}",
            sig.authorization
        );
    }

    #[test]
    fn example_a_current_chinese_doc_with_masked_keys() {
        let secret_id = format!("AKID{}", "*".repeat(32));
        let sig = sign(
            &cvm_input(true, "application/json; charset=utf-8"),
            &secret_id,
            &Secret::new("*".repeat(32)),
        );
        assert_eq!(
            sig.hashed_payload, "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064",
            "A: hashed payload"
        );
        assert_eq!(
            sig.hashed_canonical_request,
            "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84",
            "A: hashed canonical request"
        );
        assert_eq!(
            hex::encode(sig.k_date),
            "da98fb70dcf6b112dc21038d1eeeb3a95c74b4dcb12c1131f864f6066bd02be0",
            "A: kDate"
        );
        assert_eq!(
            hex::encode(sig.k_service),
            "8d70cbefb03939f929db64d32dc2ba89b1095620119fe3e050e2b18c5bd2752f",
            "A: kService"
        );
        assert_eq!(
            hex::encode(sig.k_signing),
            "b596b923aad85185e2d1f6659d2a062e0a86731226e021e61bfe06f7ed05f5af",
            "A: kSigning"
        );
        assert_eq!(
            sig.signature, "10b1a37a7301a02ca19a647ad722d5e43b4b3cff309d421d85b46093f6ab6c4f",
            "A: signature"
        );
    }

    #[test]
    fn example_c_vpc_describe_havips_from_the_python_sdk() {
        let sig = sign(
            &vpc_input(
                "DescribeHaVips",
                1_551_113_065,
                r#"{"HaVipIds": ["havip-9o233uri"]}"#,
            ),
            "AKIDEXAMPLE",
            &Secret::new("secretkeyEXAMPLE"),
        );
        assert_eq!(
            sig.hashed_payload, "874fd0f5105b5030722deefeba59eb0a5358acfca4febb352190fb8b062f3aeb",
            "C: hashed payload"
        );
        assert_eq!(
            sig.hashed_canonical_request,
            "c329a1eb55b82e452b9d38203508a6407a453f4b347e43c7ebe0980f9654f14e",
            "C: hashed canonical request"
        );
        assert_eq!(sig.date, "2019-02-25", "C: date");
        assert_eq!(sig.signed_headers, "content-type;host", "C: signed headers");
        assert_eq!(
            sig.signature, "42361b7fd71cbf19569c8e3b9850b044b5b9a4dab3895125d03528eba9cd301e",
            "C: signature"
        );
        assert_eq!(
            sig.authorization,
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2019-02-25/vpc/tc3_request, SignedHeaders=content-type;host, \
             Signature=42361b7fd71cbf19569c8e3b9850b044b5b9a4dab3895125d03528eba9cd301e",
            "C: authorization (the token is sent as X-TC-Token, never signed)"
        );
    }

    #[test]
    fn example_d_vpc_associate_from_the_python_sdk() {
        let sig = sign(
            &vpc_input(
                "AssociateHaVipInstance",
                1_700_000_000,
                r#"{"HaVipAssociationSet": [{"InstanceId": "ins-nkgrfbic", "HaVipId": "havip-crb65sya", "InstanceType": "CVM"}]}"#,
            ),
            "AKIDEXAMPLE",
            &Secret::new("secretkeyEXAMPLE"),
        );
        assert_eq!(
            sig.hashed_payload, "d467f6974998128e2885e08420ac767abc798036b67271c8b8c13a70d7e1ef76",
            "D: hashed payload"
        );
        assert_eq!(
            sig.hashed_canonical_request,
            "9be5eef0531c5c5c1a6c52a38c048892a8ef28f7ea36b5f6537407ebe7f9a3a0",
            "D: hashed canonical request"
        );
        assert_eq!(sig.date, "2023-11-14", "D: date");
        assert_eq!(
            sig.signature, "5da45239937771ef28f91199496474089be1da5c1a1b3391e84bc33c6ba6f687",
            "D: signature"
        );
    }

    #[test]
    fn date_is_the_utc_date_of_the_timestamp() {
        // 2019-02-25T23:30:00Z is already 2019-02-26 07:30 in UTC+8: the UTC date must be used.
        let late_utc = 1_551_137_400;
        assert_eq!(
            utc_date(late_utc),
            "2019-02-25",
            "23:30 UTC is still the 25th"
        );
        let mut input = vpc_input("DescribeHaVips", late_utc, "{}");
        let sig = sign(&input, "AKIDEXAMPLE", &Secret::new("k"));
        assert_eq!(sig.date, "2019-02-25", "signature date at 23:30 UTC");
        assert!(
            sig.string_to_sign
                .contains("\n2019-02-25/vpc/tc3_request\n")
        );
        // 2019-02-26T00:00:00Z, 08:00 in UTC+8: the first second of the next UTC day.
        input.timestamp = 1_551_139_200;
        assert_eq!(
            sign(&input, "AKIDEXAMPLE", &Secret::new("k")).date,
            "2019-02-26"
        );
        assert_eq!(
            utc_date(1_551_139_199),
            "2019-02-25",
            "last second of the UTC day"
        );
        // Calendar edges.
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(
            utc_date(951_782_400),
            "2000-02-29",
            "leap day of a century leap year"
        );
        assert_eq!(
            utc_date(4_107_542_400),
            "2100-03-01",
            "2100 is not a leap year"
        );
        // Never panics, even far outside any sane range.
        let _ = utc_date(i64::MAX);
        let _ = utc_date(i64::MIN);
    }

    #[test]
    fn authorization_has_the_documented_format() {
        let sig = sign(
            &vpc_input("DescribeHaVips", 1_551_113_065, "{}"),
            "AKIDEXAMPLE",
            &Secret::new("k"),
        );
        let expected = format!(
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2019-02-25/vpc/tc3_request, SignedHeaders=content-type;host, Signature={}",
            sig.signature
        );
        assert_eq!(
            sig.authorization, expected,
            "comma and space between the parts"
        );
        assert_eq!(sig.signature.len(), 64, "signature is 32 bytes of hex");
        assert!(
            sig.signature
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "signature is lowercase hex: {}",
            sig.signature
        );
    }

    #[test]
    fn debug_masks_the_derived_keys() {
        let sig = sign(
            &vpc_input("DescribeHaVips", 1_551_113_065, "{}"),
            "AKIDEXAMPLE",
            &Secret::new("secretkeyEXAMPLE"),
        );
        let debug = format!("{sig:?}");
        for (name, key) in [
            ("kDate", sig.k_date),
            ("kService", sig.k_service),
            ("kSigning", sig.k_signing),
        ] {
            let hex_key = hex::encode(key);
            assert!(
                !debug.contains(&hex_key),
                "{name} as hex in Debug output: {debug}"
            );
            assert!(
                !debug.contains(&format!("{key:?}")),
                "{name} as bytes in Debug output: {debug}"
            );
        }
        for field in ["k_date", "k_service", "k_signing"] {
            assert!(
                debug.contains(&format!("{field}: \"***\"")),
                "{field} shown masked: {debug}"
            );
        }
        assert!(!debug.contains("secretkeyEXAMPLE"));
        assert!(
            debug.contains(&sig.signature),
            "the signature itself is public and shown"
        );
    }
}

//! TLS for every HTTPS client of the agent (the VPC API, the metadata service, alert webhooks, `status`),
//! and the crypto provider for every TLS connection (those clients and Redis/Sentinel over TLS).
//!
//! Owns two process-wide things: rustls' `ring` provider, installed once, and the system's CA roots, read
//! once and only at the first certificate check. reqwest's own set-up reads the roots again for every
//! client it builds (about 5 ms each here, before anything else can happen): `migrate-havip` built two
//! clients before its first GARP, and a process that speaks only `http://` (the lab, the metadata service)
//! never needs the roots at all. The check itself is `rustls-platform-verifier`'s, as before.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Installs rustls' `ring` crypto provider as the process default, once. reqwest is built without a
/// default provider and refuses to build a client before one is installed; a provider installed earlier
/// by someone else is kept.
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The provider every connection uses (the process default, see [`install_provider`]).
fn provider() -> Arc<CryptoProvider> {
    install_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A rustls client configuration for reqwest (`ClientBuilder::tls_backend_preconfigured`): the provider's
/// safe protocol versions, no client certificate, and the system's roots checked by
/// `rustls-platform-verifier`, loaded at the first handshake of the process.
pub fn client_config() -> rustls::ClientConfig {
    let provider = provider();
    let verifier = Arc::new(LazyRoots {
        algorithms: provider.signature_verification_algorithms,
    });
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// The platform verifier, built (roots read) by the first certificate check of the process. A failure to
/// build it (no roots on the system) is kept and fails every check, with the same message.
static PLATFORM: OnceLock<Result<Arc<rustls_platform_verifier::Verifier>, rustls::Error>> =
    OnceLock::new();

fn platform() -> Result<&'static Arc<rustls_platform_verifier::Verifier>, rustls::Error> {
    PLATFORM
        .get_or_init(|| rustls_platform_verifier::Verifier::new(provider()).map(Arc::new))
        .as_ref()
        .map_err(Clone::clone)
}

/// Certificates are checked by the platform verifier, built on first use; handshake signatures (which need
/// no roots) by the provider's algorithms, so a ClientHello never waits for the roots.
#[derive(Debug)]
struct LazyRoots {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        platform()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether the roots have been read in this process (for tests and benchmarks).
pub fn roots_loaded() -> bool {
    PLATFORM.get().is_some()
}

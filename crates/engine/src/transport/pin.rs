//! Certificate pinning on the client: the server is trusted because its certificate's
//! fingerprint is one we expect, not because a certificate authority signed it.
//!
//! The pin alone is not enough: a certificate is public, so anyone could present it. The
//! verifier therefore still checks the handshake signatures with the certificate's key, which
//! only the real server holds.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::identity::{Fingerprint, fingerprint_of};

/// Accepts a server certificate whose fingerprint is in `accepted` (or any, when `accepted` is
/// empty: first use), and remembers the fingerprint it saw.
#[derive(Debug)]
pub(super) struct PinVerifier {
    accepted: Vec<Fingerprint>,
    seen: Mutex<Option<Fingerprint>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    pub(super) fn new(accepted: Vec<Fingerprint>, provider: &CryptoProvider) -> Arc<PinVerifier> {
        Arc::new(PinVerifier {
            accepted,
            seen: Mutex::new(None),
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// The fingerprint of the certificate the server presented, once it did.
    pub(super) fn seen(&self) -> Option<Fingerprint> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the server presented a certificate that is not one we accept.
    pub(super) fn rejected(&self) -> bool {
        self.seen()
            .is_some_and(|seen| !self.accepted.is_empty() && !self.accepted.contains(&seen))
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint_of(end_entity.as_ref());
        let accepted = self.accepted.is_empty() || self.accepted.contains(&seen);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen);
        if accepted {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
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

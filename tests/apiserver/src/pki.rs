//! The test cluster's PKI: a self-signed CA (kept in the state dir so kubeconfigs survive a
//! restart), the serving certificate, client certificates for test users, CSR signing, and
//! the verification of presented client certificates (done per request, so an expired or
//! foreign certificate gets a 401 like upstream rather than a failed handshake).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName as TlsDn, SignatureScheme};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::error::{Error, Result};

/// The cluster CA and what it signs.
pub struct Pki {
    ca_cert_pem: String,
    ca_key_pem: String,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// Subject and SANs of a parsed certificate request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsrInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
    /// DER of the SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

fn offset(d: Duration, past: bool) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let d = time::Duration::try_from(d).unwrap_or(time::Duration::hours(1));
    if past {
        now - d
    } else {
        now + d
    }
}

impl Pki {
    /// A new CA (ECDSA P-256, 10 years).
    pub fn generate() -> Result<Pki> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "kubernetes");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        params.not_before = offset(Duration::from_secs(3600), true);
        params.not_after = offset(Duration::from_secs(10 * 365 * 86400), false);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let ca_cert_pem = cert.pem();
        let ca_key_pem = key.serialize_pem();
        Self::load(&ca_cert_pem, &ca_key_pem)
    }

    /// Load a CA from PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Pki> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let ca_der =
            pem_to_der(cert_pem).ok_or_else(|| Error::Pki("CA certificate is not PEM".into()))?;
        Ok(Pki {
            ca_cert_pem: cert_pem.to_string(),
            ca_key_pem: key_pem.to_string(),
            ca_der,
            issuer,
        })
    }

    /// Load `ca.crt`/`ca.key` from `dir`, or generate and save them there.
    pub fn load_or_generate(dir: Option<&Path>) -> Result<Pki> {
        if let Some(dir) = dir {
            let (c, k) = (dir.join("ca.crt"), dir.join("ca.key"));
            if c.exists() && k.exists() {
                return Self::load(&std::fs::read_to_string(c)?, &std::fs::read_to_string(k)?);
            }
            std::fs::create_dir_all(dir)?;
            let pki = Self::generate()?;
            std::fs::write(c, &pki.ca_cert_pem)?;
            std::fs::write(k, &pki.ca_key_pem)?;
            return Ok(pki);
        }
        Self::generate()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The serving certificate chain and key (SANs: 127.0.0.1, localhost, kubernetes.default…).
    pub fn server_cert(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into()?),
            SanType::DnsName("kubernetes".try_into()?),
            SanType::DnsName("kubernetes.default".try_into()?),
            SanType::DnsName("kubernetes.default.svc".try_into()?),
            SanType::DnsName("kubernetes.default.svc.cluster.local".try_into()?),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = offset(Duration::from_secs(3600), true);
        params.not_after = offset(Duration::from_secs(365 * 86400), false);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((
            vec![
                cert.der().clone(),
                CertificateDer::from(self.ca_der.clone()),
            ],
            key_der,
        ))
    }

    /// A client certificate (PEM cert, PEM PKCS#8 key) for `CN=cn, O=orgs`.
    pub fn issue_client_cert(
        &self,
        cn: &str,
        orgs: &[&str],
        ttl: Duration,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        for o in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = offset(Duration::from_secs(300), true);
        params.not_after = offset(ttl, false);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Sign a certificate request: subject and SANs from the request, usages from the CSR
    /// object, validity backdated 5 minutes (like the upstream signer) and `ttl` long.
    pub fn sign_csr(&self, info: &CsrInfo, usages: &[String], ttl: Duration) -> Result<String> {
        let spki = SubjectPublicKeyInfo::from_der(&info.spki_der)?;
        let mut params = CertificateParams::default();
        for o in &info.organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, o.as_str());
        }
        if !info.common_name.is_empty() {
            params
                .distinguished_name
                .push(DnType::CommonName, info.common_name.as_str());
        }
        for d in &info.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into()?));
        }
        for ip in &info.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for u in usages {
            match u.as_str() {
                "digital signature" => params.key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "client auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                _ => {}
            }
        }
        params.not_before = offset(Duration::from_secs(300), true);
        params.not_after = offset(ttl, false);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&spki, &self.issuer)?;
        Ok(cert.pem())
    }

    /// Verify a presented client certificate: signed by the CA and currently valid.
    /// Returns (CN, O...).
    pub fn verify_client(&self, der: &[u8]) -> std::result::Result<(String, Vec<String>), String> {
        let (_, ca) = X509Certificate::from_der(&self.ca_der).map_err(|e| e.to_string())?;
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        if cert.issuer().as_raw() != ca.subject().as_raw() {
            return Err("certificate signed by unknown authority".into());
        }
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| "certificate signed by unknown authority".to_string())?;
        if !cert.validity().is_valid() {
            return Err("certificate has expired or is not yet valid".into());
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or("")
            .to_string();
        let orgs = cert
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect();
        Ok((cn, orgs))
    }
}

/// PEM → DER of the first block.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let p = ::pem::parse(pem).ok()?;
    Some(p.contents().to_vec())
}

/// Parse and verify a PEM certificate request (`spec.request` of a CSR).
pub fn parse_csr(pem_bytes: &[u8]) -> std::result::Result<CsrInfo, String> {
    let text = std::str::from_utf8(pem_bytes)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    let block =
        ::pem::parse(text).map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(block.contents())
            .map_err(|e| format!("asn1: structure error: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "x509: ECDSA verification failure".to_string())?;
    let info = &csr.certification_request_info;
    let mut out = CsrInfo {
        common_name: info
            .subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or("")
            .to_string(),
        organizations: info
            .subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect(),
        spki_der: info.subject_pki.raw.to_vec(),
        ..Default::default()
    };
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => out.dns_names.push(d.to_string()),
                        GeneralName::IPAddress(b) if b.len() == 4 => out
                            .ip_addresses
                            .push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                        GeneralName::IPAddress(b) if b.len() == 16 => out
                            .ip_addresses
                            .push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))),
                        GeneralName::RFC822Name(e) => out.emails.push(e.to_string()),
                        GeneralName::URI(u) => out.uris.push(u.to_string()),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Accepts any client certificate at the TLS layer (the HTTP layer authenticates it, so a bad
/// certificate yields 401 as upstream) while asking clients for certificates from our CA.
#[derive(Debug)]
pub struct AnyClientCert {
    hints: Vec<TlsDn>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl AnyClientCert {
    pub fn new(ca_der: &[u8], provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        let hints = X509Certificate::from_der(ca_der)
            .map(|(_, c)| vec![TlsDn::from(c.subject().as_raw().to_vec())])
            .unwrap_or_default();
        AnyClientCert { hints, provider }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[TlsDn] {
        &self.hints
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

//! The kubelet server's TLS: the serving certificate (`tlsCertFile`/
//! `tlsPrivateKeyFile`, or a self-signed `<cert-dir>/kubelet.{crt,key}` made once
//! and reused, as upstream does without serverTLSBootstrap) and client
//! certificates verified against `authentication.x509.clientCAFile`.
//! `tlsMinVersion` and `tlsCipherSuites` take upstream's names (component-base
//! `cli/flag/ciphersuites_flag.go`); rustls speaks TLS 1.2 and 1.3 only, so
//! TLS 1.0/1.1 are never served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
    /// A PEM file held no usable certificate or key.
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    /// Generating the self-signed certificate failed.
    #[error("generating the serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A `tlsCipherSuites` entry that is no cipher suite name (upstream's message).
    #[error("Cipher suite {0} not supported or doesn't exist")]
    CipherSuite(String),
    /// A `tlsMinVersion` that is none of VersionTLS10..13 (upstream's message).
    #[error("unknown tls version {0:?}")]
    Version(String),
}

pub type Result<T, E = TlsError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.display().to_string(), source }
}

/// Where the serving certificate and key are.
pub struct ServingFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The configured files, or the self-signed pair under `cert_dir` (created once:
/// CN `<node>@<unix time>`, SANs the node name, `localhost`, 127.0.0.1 and `ips`).
pub fn serving_files(configured: Option<(PathBuf, PathBuf)>, cert_dir: &Path, node: &str, ips: &[String]) -> Result<ServingFiles> {
    if let Some((cert, key)) = configured {
        return Ok(ServingFiles { cert, key });
    }
    let (cert, key) = (cert_dir.join("kubelet.crt"), cert_dir.join("kubelet.key"));
    if cert.is_file() && key.is_file() {
        return Ok(ServingFiles { cert, key });
    }
    std::fs::create_dir_all(cert_dir).map_err(io(cert_dir))?;
    let mut sans = vec![node.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(ips.iter().cloned());
    sans.dedup();
    let mut params = rcgen::CertificateParams::new(sans)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("{node}@{}", chrono::Utc::now().timestamp()));
    params.distinguished_name = dn;
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let c = params.self_signed(&key_pair)?;
    write_private(&key, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, c.pem()).map_err(io(&cert))?;
    Ok(ServingFiles { cert, key })
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(io(path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(|c| c.ok()).collect();
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.display().to_string(), message: "no certificate found".into() });
    }
    Ok(certs)
}

/// The serving certificate the server presents; replaced on rotation.
#[derive(Debug, Default)]
pub struct Resolver {
    current: std::sync::RwLock<Option<Arc<rustls::sign::CertifiedKey>>>,
}

impl Resolver {
    /// Presents the pair in PEM (certificates, key) from now on.
    pub fn set_pem(&self, certs_pem: &[u8], key_pem: &[u8], what: &str) -> Result<()> {
        let chain: Vec<_> = CertificateDer::pem_slice_iter(certs_pem).filter_map(|c| c.ok()).collect();
        if chain.is_empty() {
            return Err(TlsError::Pem { path: what.into(), message: "no certificate found".into() });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem { path: what.into(), message: e.to_string() })?;
        let signer = rustls::crypto::ring::default_provider().key_provider.load_private_key(key).map_err(|e| TlsError::Config(e.to_string()))?;
        if let Ok(mut g) = self.current.write() {
            *g = Some(Arc::new(rustls::sign::CertifiedKey::new(chain, signer)));
        }
        Ok(())
    }

    /// Presents the pair in `files`.
    pub fn set_files(&self, files: &ServingFiles) -> Result<()> {
        let certs = std::fs::read(&files.cert).map_err(io(&files.cert))?;
        let key = std::fs::read(&files.key).map_err(io(&files.key))?;
        self.set_pem(&certs, &key, &files.cert.display().to_string())
    }

    /// Whether there is a certificate to present yet.
    pub fn ready(&self) -> bool {
        self.current.read().map(|g| g.is_some()).unwrap_or(false)
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok()?.clone()
    }
}

/// Cipher suite names upstream accepts (Go's `tls.CipherSuites()` and
/// `tls.InsecureCipherSuites()`, with the two legacy CHACHA20 aliases) that
/// rustls does not implement: accepted with a warning and left out.
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The serving TLS settings (`tlsCipherSuites`, `tlsMinVersion`), checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The TLS 1.2 suites allowed, by rustls name; `None`: rustls's defaults.
    /// TLS 1.3 suites are not configurable (as in Go).
    pub tls12_suites: Option<Vec<String>>,
    /// Serve TLS 1.3 only (`VersionTLS13`).
    pub tls13_only: bool,
    /// Names accepted but not served (Go-only suites, TLS 1.0/1.1 minimums):
    /// logged once at start.
    pub ignored: Vec<String>,
}

/// Go's name for a rustls suite (`TLS13_AES_128_GCM_SHA256` → `TLS_AES_128_GCM_SHA256`;
/// the TLS 1.2 names are the same).
fn go_name(s: rustls::SupportedCipherSuite) -> String {
    let n = format!("{:?}", s.suite());
    n.strip_prefix("TLS13_").map(|rest| format!("TLS_{rest}")).unwrap_or(n)
}

/// Checks `tlsCipherSuites` and `tlsMinVersion` as upstream's
/// `cliflag.TLSCipherSuites`/`TLSVersion` do (same names, same errors).
pub fn settings(cipher_suites: &[String], min_version: Option<&str>) -> Result<Settings> {
    let mut out = Settings::default();
    match min_version.unwrap_or("") {
        "" | "VersionTLS12" => {}
        "VersionTLS13" => out.tls13_only = true,
        v @ ("VersionTLS10" | "VersionTLS11") => out.ignored.push(format!("tlsMinVersion {v}: TLS 1.2 is the minimum rkubelet serves")),
        v => return Err(TlsError::Version(v.to_string())),
    }
    if cipher_suites.is_empty() {
        return Ok(out);
    }
    let all = rustls::crypto::ring::default_provider().cipher_suites;
    let mut tls12 = Vec::new();
    for name in cipher_suites {
        // Go's legacy aliases of the CHACHA20 suites.
        let canonical = match name.as_str() {
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => format!("{name}_SHA256"),
            _ => name.clone(),
        };
        match all.iter().find(|s| go_name(**s) == canonical) {
            Some(s) if s.tls13().is_some() => {} // always on, as in Go
            Some(s) => tls12.push(format!("{:?}", s.suite())),
            None if GO_ONLY_SUITES.contains(&name.as_str()) => out.ignored.push(format!("tlsCipherSuites {name}: not implemented by rustls")),
            None => return Err(TlsError::CipherSuite(name.clone())),
        }
    }
    out.tls12_suites = Some(tls12);
    Ok(out)
}

/// The rustls server configuration: the resolver's serving pair and, with a client
/// CA, verification of client certificates (optional: bearer tokens still work).
pub fn server_config(resolver: Arc<Resolver>, client_ca: Option<&Path>, tls: &Settings) -> Result<Arc<rustls::ServerConfig>> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(allowed) = &tls.tls12_suites {
        provider.cipher_suites.retain(|s| s.tls13().is_some() || allowed.contains(&format!("{:?}", s.suite())));
    }
    let provider = Arc::new(provider);
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.tls13_only { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_loads() {
        let t = tempfile::tempdir().unwrap();
        let a = serving_files(None, t.path(), "n1", &["192.0.2.1".into()]).unwrap();
        let first = std::fs::read(&a.cert).unwrap();
        let b = serving_files(None, t.path(), "n1", &[]).unwrap();
        assert_eq!(std::fs::read(&b.cert).unwrap(), first, "reused, not regenerated");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&a.key).unwrap().permissions().mode() & 0o777, 0o600);
        let r = Arc::new(Resolver::default());
        assert!(!r.ready());
        r.set_files(&a).unwrap();
        assert!(r.ready());
        server_config(r.clone(), None, &Settings::default()).unwrap();
        server_config(r, Some(&a.cert), &Settings::default()).unwrap();
    }

    #[test]
    fn cipher_suites_and_min_version_take_upstreams_names_and_errors() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(settings(&[], None).unwrap(), Settings::default());
        let s = settings(&names(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", "TLS_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_128_GCM_SHA256"]), Some("VersionTLS12")).unwrap();
        assert_eq!(s.tls12_suites.as_deref(), Some(&names(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"])[..]), "TLS 1.3 names always on, Go-only ones left out");
        assert_eq!(s.ignored.len(), 1, "{:?}", s.ignored);
        assert!(!s.tls13_only);
        assert!(settings(&[], Some("VersionTLS13")).unwrap().tls13_only);
        assert_eq!(settings(&[], Some("VersionTLS10")).unwrap().ignored.len(), 1, "1.0 asked: 1.2 served, said once");
        assert_eq!(settings(&names(&["TLS_BOGUS"]), None).unwrap_err().to_string(), "Cipher suite TLS_BOGUS not supported or doesn't exist");
        assert_eq!(settings(&[], Some("TLS1.2")).unwrap_err().to_string(), r#"unknown tls version "TLS1.2""#);
        let r = Arc::new(Resolver::default());
        let cfg = server_config(r, None, &s).unwrap();
        let suites: Vec<String> = cfg.crypto_provider().cipher_suites.iter().map(|c| format!("{:?}", c.suite())).collect();
        assert!(suites.contains(&"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_string()) && suites.contains(&"TLS13_AES_256_GCM_SHA384".to_string()), "{suites:?}");
        assert!(!suites.contains(&"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".to_string()), "{suites:?}");
    }
}

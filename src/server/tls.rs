//! The kubelet server's TLS: the serving certificate (`tlsCertFile`/
//! `tlsPrivateKeyFile`, or a self-signed `<cert-dir>/kubelet.{crt,key}` made once
//! and reused, as upstream does without serverTLSBootstrap) and client
//! certificates verified against `authentication.x509.clientCAFile`.

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

/// The rustls server configuration: the resolver's serving pair and, with a client
/// CA, verification of client certificates (optional: bearer tokens still work).
pub fn server_config(resolver: Arc<Resolver>, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
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
        server_config(r.clone(), None).unwrap();
        server_config(r, Some(&a.cert)).unwrap();
    }
}

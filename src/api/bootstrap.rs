//! Kubelet TLS bootstrap and client certificate rotation, after upstream's
//! `pkg/kubelet/certificate/bootstrap` (`LoadClientCert`) and client-go's
//! `util/certificate` (the certificate store and manager).
//!
//! **Bootstrap** ([`load_client_cert`]): when `--kubeconfig` is missing, unreadable or
//! its client certificate has expired, and `--bootstrap-kubeconfig` is given, the agent
//! generates an ECDSA P-256 key, sends a `certificates.k8s.io/v1` CertificateSigningRequest
//! for signer `kubernetes.io/kube-apiserver-client-kubelet` and subject
//! `CN=system:node:<node>, O=system:nodes` with the bootstrap credentials, waits (list,
//! then watch, logging every 30 s) until it is signed, denied or failed, stores key and
//! certificate in the [`CertStore`] under `--cert-dir` and writes `--kubeconfig` pointing
//! at `<cert-dir>/kubelet-client-current.pem`. The bootstrap kubeconfig is not needed
//! afterwards (kubeadm deletes it).
//!
//! **Rotation** ([`client`] with `rotateCertificates`): a background task renews the
//! certificate at a random point in 70–90 % of its lifetime through the same CSR flow,
//! authenticated with the current certificate, and swaps the store's symlink. The
//! [`kube::Client`] handed to the rest of the agent delegates every request to an inner
//! client built from the current certificate; rotation builds a new inner client and
//! swaps it in. New requests therefore use the new certificate on new connections,
//! while requests already running (a watch) finish on their old connection, which the
//! old inner client closes when the last of them ends.
//!
//! One deviation from upstream: the lifetime that the 70–90 % applies to starts at the
//! later of `notBefore` and the time the certificate was stored. Signers backdate
//! `notBefore` (kube-controller-manager and the test server by 5 minutes), which for a
//! short-lived certificate would put the deadline in the past and rotate in a loop.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{AuthInfo, Cluster, KubeConfigOptions, Kubeconfig, NamedAuthInfo};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;

/// The signer of kubelet client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The store's file name prefix: `kubelet-client-current.pem`, `kubelet-client-<date>.pem`.
pub const PAIR_PREFIX: &str = "kubelet-client";
/// The serving certificate store's file prefix (`serverTLSBootstrap`).
pub const SERVING_PREFIX: &str = "kubelet-server";
/// The signer of kubelet serving certificates.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// Where the bootstrap key waits for its certificate (reused if the agent restarts meanwhile).
const TMP_KEY_FILE: &str = "kubelet-client.key.tmp";
/// How long a rotation waits for its CSR (upstream's `certificateWaitTimeout`).
const ROTATION_WAIT: Duration = Duration::from_secs(15 * 60);
/// How often a pending CSR is reported in the log.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// How long the bootstrap waits for the API server's /healthz before sending the CSR.
const SERVER_WAIT: Duration = Duration::from_secs(60);
/// Name of the identity that [`client_with_identity`] puts into the kubeconfig.
const ROTATED_USER: &str = "rkubelet-client-certificate";

/// Errors of the TLS bootstrap and of certificate rotation.
#[derive(Debug, Error)]
pub enum BootstrapError {
    /// No `--kubeconfig` was given.
    #[error("no --kubeconfig given")]
    NoKubeconfig,
    /// The bootstrap kubeconfig is missing or unusable.
    #[error("unable to load bootstrap kubeconfig {}: {message}", path.display())]
    BootstrapKubeconfig {
        /// The `--bootstrap-kubeconfig` path.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A kubeconfig (ours or the bootstrap one) has no usable current context.
    #[error("kubeconfig {}: {message}", path.display())]
    Kubeconfig {
        /// The kubeconfig path.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// An API client could not be built.
    #[error(transparent)]
    Client(#[from] super::ApiError),
    /// Key generation or CSR encoding failed.
    #[error("cannot generate the private key or certificate request: {0}")]
    Crypto(#[from] rcgen::Error),
    /// Reading or writing the certificate directory or the kubeconfig failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done (`write`, `read`, `create the symlink`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file in the certificate store is not a usable certificate and key.
    #[error("certificate store: {}: {message}", path.display())]
    Store {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Creating the CSR failed (server unreachable, bootstrap token rejected, …).
    #[error("cannot create a CertificateSigningRequest at {server}: {source}")]
    Create {
        /// The API server URL.
        server: String,
        #[source]
        source: kube::Error,
    },
    /// Listing or watching the CSR failed.
    #[error("cannot watch CertificateSigningRequest {name}: {source}")]
    Watch {
        /// The CSR's name.
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The CSR was denied.
    #[error("CertificateSigningRequest {name} was denied: {reason}: {message}")]
    Denied {
        /// The CSR's name.
        name: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// The signer failed the CSR.
    #[error("CertificateSigningRequest {name} failed: {reason}: {message}")]
    Failed {
        /// The CSR's name.
        name: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// The CSR was deleted (or replaced by another of the same name) while waiting.
    #[error("CertificateSigningRequest {name} was deleted while waiting for its certificate")]
    Gone {
        /// The CSR's name.
        name: String,
    },
    /// Nobody approved and signed the CSR in time.
    #[error("timed out after {waited:?} waiting for CertificateSigningRequest {name} to be approved and signed (kubectl certificate approve {name})")]
    Timeout {
        /// The CSR's name.
        name: String,
        /// How long the agent waited.
        waited: Duration,
    },
    /// The issued certificate cannot be used.
    #[error("the certificate issued for CertificateSigningRequest {name} is unusable: {message}")]
    BadCertificate {
        /// The CSR's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
}

type Result<T, E = BootstrapError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BootstrapError + 'a {
    move |source| BootstrapError::Io { op, path: path.to_path_buf(), source }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ------------------------------------------------------------------ certificates

/// A certificate chain and its private key, as one PEM file holds them.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The `CERTIFICATE` blocks, leaf first.
    pub certs_pem: String,
    /// The private key block.
    pub key_pem: String,
    /// The leaf's `notBefore`.
    pub not_before: SystemTime,
    /// The earliest `notAfter` of the chain.
    pub not_after: SystemTime,
    /// When the pair was stored (the file's mtime), or now.
    pub obtained: SystemTime,
}

fn asn1_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs <= 0 {
        SystemTime::UNIX_EPOCH
    } else {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    }
}

/// Parses `CERTIFICATE` blocks: (PEM text, leaf notBefore, earliest notAfter).
pub(crate) fn parse_certs(pem_data: &[u8]) -> Result<(String, SystemTime, SystemTime), String> {
    let blocks = pem::parse_many(pem_data).map_err(|e| format!("invalid PEM: {e}"))?;
    let certs: Vec<&pem::Pem> = blocks.iter().filter(|b| b.tag() == "CERTIFICATE").collect();
    if certs.is_empty() {
        return Err("no certificate found".into());
    }
    let mut not_before = SystemTime::UNIX_EPOCH;
    let mut not_after: Option<SystemTime> = None;
    for (i, c) in certs.iter().enumerate() {
        let (_, x) = x509_parser::parse_x509_certificate(c.contents()).map_err(|e| format!("invalid certificate: {e}"))?;
        if i == 0 {
            not_before = asn1_time(x.validity().not_before);
        }
        let na = asn1_time(x.validity().not_after);
        not_after = Some(not_after.map_or(na, |cur| cur.min(na)));
    }
    let text = pem::encode_many_config(&certs.into_iter().cloned().collect::<Vec<_>>(), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF));
    Ok((text, not_before, not_after.unwrap_or(SystemTime::UNIX_EPOCH)))
}

impl CertPair {
    /// Parses a combined PEM (certificates and one private key, in any order).
    pub fn parse(data: &[u8], obtained: SystemTime) -> Result<CertPair, String> {
        let (certs_pem, not_before, not_after) = parse_certs(data)?;
        let blocks = pem::parse_many(data).map_err(|e| format!("invalid PEM: {e}"))?;
        let key = blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY")).ok_or("no private key found")?;
        let key_pem = pem::encode_config(key, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF));
        Ok(CertPair { certs_pem, key_pem, not_before, not_after, obtained })
    }

    /// True once the (earliest) `notAfter` has passed.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    /// When to renew: `start + (0.7 + 0.2 × jitter) × (notAfter − start)`, where `start`
    /// is the later of `notBefore` and the time the pair was stored (see the module docs),
    /// and `jitter` is in [0, 1].
    pub fn rotation_deadline(&self, jitter: f64) -> SystemTime {
        let start = self.not_before.max(self.obtained.min(self.not_after));
        let total = self.not_after.duration_since(start).unwrap_or_default();
        start + total.mul_f64(0.7 + 0.2 * jitter.clamp(0.0, 1.0))
    }

    /// The file contents: certificates, then the key (upstream's order).
    fn file_contents(&self) -> String {
        format!("{}{}", self.certs_pem, self.key_pem)
    }
}

/// client-go's certificate file store: `<dir>/kubelet-client-<YYYY-MM-DD-HH-MM-SS>.pem`
/// files (certificates then key, mode 0600) and the symlink `kubelet-client-current.pem`
/// to the one in use, replaced atomically through `kubelet-client-updated.pem`.
#[derive(Debug, Clone)]
pub struct CertStore {
    dir: PathBuf,
    prefix: &'static str,
}

impl CertStore {
    /// The client certificate store (`kubelet-client-*`).
    pub fn new(dir: &Path) -> CertStore {
        CertStore { dir: dir.to_path_buf(), prefix: PAIR_PREFIX }
    }

    /// The serving certificate store (`kubelet-server-*`).
    pub fn serving(dir: &Path) -> CertStore {
        CertStore { dir: dir.to_path_buf(), prefix: SERVING_PREFIX }
    }

    /// `<dir>/kubelet-client-current.pem`, the path kubeconfigs point at.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(format!("{}-current.pem", self.prefix))
    }

    fn updated_path(&self) -> PathBuf {
        self.dir.join(format!("{}-updated.pem", self.prefix))
    }

    /// Finishes a swap interrupted between creating `-updated` and renaming it (upstream's `recover`).
    fn recover(&self) -> Result<()> {
        let (current, updated) = (self.current_path(), self.updated_path());
        if current.exists() {
            return Ok(());
        }
        match std::fs::symlink_metadata(&updated) {
            Ok(m) if m.file_type().is_symlink() => std::fs::rename(&updated, &current).map_err(io_err("rename", &updated)),
            Ok(_) => Err(BootstrapError::Store { path: updated, message: "expected a symlink but it is a file".into() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("stat", &updated)(e)),
        }
    }

    /// The pair `kubelet-client-current.pem` points at; `None` when there is none.
    pub fn current(&self) -> Result<Option<CertPair>> {
        self.recover()?;
        let p = self.current_path();
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        let obtained = std::fs::metadata(&p).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
        CertPair::parse(&data, obtained).map(Some).map_err(|message| BootstrapError::Store { path: p, message })
    }

    /// Stores a new pair under a dated name and points `-current` at it.
    pub fn update(&self, certs_pem: &str, key_pem: &str) -> Result<CertPair> {
        let pair = CertPair::parse(format!("{certs_pem}\n{key_pem}").as_bytes(), SystemTime::now())
            .map_err(|message| BootstrapError::Store { path: self.dir.clone(), message })?;
        std::fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
        let name = format!("{}-{}.pem", self.prefix, chrono::Local::now().format("%Y-%m-%d-%H-%M-%S"));
        let path = self.dir.join(&name);
        write_private(&self.dir.join(format!(".{name}.tmp")), &path, pair.file_contents().as_bytes())?;
        self.update_symlink(&path)?;
        info!(path = %path.display(), expiration = %rfc3339(pair.not_after), "stored the certificate");
        Ok(pair)
    }

    fn update_symlink(&self, target: &Path) -> Result<()> {
        let (current, updated) = (self.current_path(), self.updated_path());
        if let Ok(m) = std::fs::symlink_metadata(&current) {
            if !m.file_type().is_symlink() {
                return Err(BootstrapError::Store { path: current, message: "expected a symlink but it is a file".into() });
            }
        }
        match std::fs::symlink_metadata(&updated) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&updated).map_err(io_err("remove", &updated))?,
            Ok(_) => return Err(BootstrapError::Store { path: updated, message: "expected a symlink but it is a file".into() }),
            Err(_) => {}
        }
        let abs = if target.is_absolute() {
            target.to_path_buf()
        } else {
            std::env::current_dir().map_err(io_err("resolve", target))?.join(target)
        };
        std::os::unix::fs::symlink(&abs, &updated).map_err(io_err("create the symlink", &updated))?;
        std::fs::rename(&updated, &current).map_err(io_err("rename", &updated))
    }
}

/// Writes `data` to `tmp` (mode 0600) and renames it to `path`.
fn write_private(tmp: &Path, path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(tmp).map_err(io_err("write", tmp))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io_err("write", tmp))?;
    std::fs::rename(tmp, path).map_err(io_err("rename", tmp))
}

/// A new ECDSA P-256 key (what upstream generates for kubelet client certificates).
fn generate_key() -> Result<rcgen::KeyPair> {
    Ok(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// The PEM CSR for `CN=system:node:<node>, O=system:nodes`, no SANs (upstream's `MakeCSR`).
pub fn node_csr_pem(key: &rcgen::KeyPair, node: &str) -> Result<String> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.pem()?)
}

// ------------------------------------------------------------------ kubeconfigs

/// The current context's cluster and user of a kubeconfig.
pub(crate) fn current_entries(kc: &Kubeconfig) -> std::result::Result<(Cluster, Option<AuthInfo>), String> {
    let ctx_name = kc.current_context.clone().ok_or("no current-context")?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| format!("context {ctx_name:?} not found"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| format!("cluster {:?} not found", ctx.cluster))?;
    if cluster.server.as_deref().unwrap_or("").is_empty() {
        return Err(format!("cluster {:?} has no server", ctx.cluster));
    }
    let user = ctx.user.as_ref().and_then(|u| kc.auth_infos.iter().find(|a| &a.name == u)).and_then(|a| a.auth_info.clone());
    Ok((cluster, user))
}

/// Inline data (base64) or a file.
fn load_data(data: Option<&str>, file: Option<&str>) -> std::result::Result<Option<Vec<u8>>, String> {
    if let Some(d) = data.filter(|d| !d.is_empty()) {
        return base64::engine::general_purpose::STANDARD.decode(d.trim()).map(Some).map_err(|e| format!("invalid base64: {e}"));
    }
    match file.filter(|f| !f.is_empty()) {
        Some(f) => std::fs::read(f).map(Some).map_err(|e| format!("{f}: {e}")),
        None => Ok(None),
    }
}

/// A client certificate (PEM) and its key (PEM).
type Identity = (Vec<u8>, Vec<u8>);

/// The client certificate and key of the kubeconfig's current user, if it has both.
fn kubeconfig_identity(path: &Path) -> std::result::Result<Option<Identity>, String> {
    let kc = Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    let (_, user) = current_entries(&kc)?;
    let Some(user) = user else { return Ok(None) };
    let cert = load_data(user.client_certificate_data.as_deref(), user.client_certificate.as_deref())?;
    let key = {
        use secrecy::ExposeSecret;
        let data = user.client_key_data.as_ref().map(|s| s.expose_secret().to_string());
        load_data(data.as_deref(), user.client_key.as_deref())?
    };
    Ok(cert.zip(key))
}

/// When the kubeconfig's client certificate expires (the earliest of its chain);
/// `None` when its user has no client certificate (e.g. a token).
pub fn client_cert_not_after(path: &Path) -> std::result::Result<Option<SystemTime>, String> {
    let kc = Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    let (_, user) = current_entries(&kc)?;
    let Some(u) = user else { return Ok(None) };
    match load_data(u.client_certificate_data.as_deref(), u.client_certificate.as_deref())? {
        Some(pem) => parse_certs(&pem).map(|(_, _, not_after)| Some(not_after)),
        None => Ok(None),
    }
}

/// Upstream's `isClientConfigStillValid`: the kubeconfig exists, loads, and its client
/// certificates are all unexpired. A missing file is `Ok(false)`; an unreadable one an error.
pub fn kubeconfig_is_valid(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("read", path)(e)),
        Ok(_) => {}
    }
    let kc = match Kubeconfig::read_from(path) {
        Ok(kc) => kc,
        Err(e) => {
            warn!(kubeconfig = %path.display(), error = %e, "unable to read the existing kubeconfig; bootstrapping");
            return Ok(false);
        }
    };
    let user = match current_entries(&kc) {
        Ok((_, u)) => u,
        Err(e) => {
            warn!(kubeconfig = %path.display(), error = %e, "the existing kubeconfig has no usable context; bootstrapping");
            return Ok(false);
        }
    };
    let cert = user.as_ref().map(|u| load_data(u.client_certificate_data.as_deref(), u.client_certificate.as_deref())).transpose();
    let cert = match cert {
        Ok(Some(Some(c))) => c,
        Ok(_) => {
            warn!(kubeconfig = %path.display(), "the existing kubeconfig has no client certificate; bootstrapping");
            return Ok(false);
        }
        Err(e) => {
            warn!(kubeconfig = %path.display(), error = %e, "unable to load the client certificate of the existing kubeconfig; bootstrapping");
            return Ok(false);
        }
    };
    match parse_certs(&cert) {
        Ok((_, _, not_after)) if SystemTime::now() > not_after => {
            warn!(kubeconfig = %path.display(), expired = %rfc3339(not_after), "part of the existing client certificate is expired; bootstrapping");
            Ok(false)
        }
        Ok(_) => Ok(true),
        Err(e) => {
            warn!(kubeconfig = %path.display(), error = %e, "unable to parse the client certificate of the existing kubeconfig; bootstrapping");
            Ok(false)
        }
    }
}

/// Writes the kubeconfig upstream's `writeKubeconfigFromBootstrapping` writes: the
/// bootstrap kubeconfig's server and CA, and `client-certificate`/`client-key` both
/// pointing at the store's current pair.
fn write_kubeconfig(path: &Path, cluster: &Cluster, pem_path: &Path) -> Result<()> {
    let mut c = serde_json::Map::new();
    c.insert("server".into(), cluster.server.clone().unwrap_or_default().into());
    if cluster.insecure_skip_tls_verify == Some(true) {
        c.insert("insecure-skip-tls-verify".into(), true.into());
    }
    if let Some(f) = cluster.certificate_authority.as_ref().filter(|f| !f.is_empty()) {
        c.insert("certificate-authority".into(), f.clone().into());
    } else if let Some(d) = cluster.certificate_authority_data.as_ref().filter(|d| !d.is_empty()) {
        c.insert("certificate-authority-data".into(), d.clone().into());
    }
    let pem = pem_path.display().to_string();
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": c}],
        "contexts": [{"name": "default-context", "context": {"cluster": "default-cluster", "namespace": "default", "user": "default-auth"}}],
        "current-context": "default-context",
        "preferences": {},
        "users": [{"name": "default-auth", "user": {"client-certificate": pem, "client-key": pem}}],
    });
    let text = serde_yaml::to_string(&doc).map_err(|e| BootstrapError::Kubeconfig { path: path.to_path_buf(), message: e.to_string() })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "kubeconfig".into());
    write_private(&path.with_file_name(format!(".{name}.tmp")), path, text.as_bytes())
}

/// A client from `kc` with the user agent of [`super::user_agent`].
async fn client_from(kc: Kubeconfig, opts: &KubeConfigOptions, path: &Path) -> Result<kube::Client> {
    let p = path.display().to_string();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, opts)
        .await
        .map_err(|source| super::ApiError::Kubeconfig { path: p.clone(), source })?;
    if let Ok(v) = http::HeaderValue::from_str(&super::user_agent()) {
        cfg.headers.push((http::header::USER_AGENT, v));
    }
    Ok(kube::Client::try_from(cfg).map_err(|source| super::ApiError::Client { path: p, source })?)
}

/// A client for the kubeconfig's cluster that authenticates with `pair` (whatever
/// credentials the kubeconfig itself holds), like upstream's rotating transport.
async fn client_with_identity(kubeconfig: &Path, pair: &CertPair) -> Result<kube::Client> {
    let mut kc = Kubeconfig::read_from(kubeconfig).map_err(|source| super::ApiError::Kubeconfig { path: kubeconfig.display().to_string(), source })?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let named: NamedAuthInfo = serde_json::from_value(serde_json::json!({
        "name": ROTATED_USER,
        "user": {"client-certificate-data": b64(&pair.certs_pem), "client-key-data": b64(&pair.key_pem)},
    }))
    .map_err(|e| BootstrapError::Kubeconfig { path: kubeconfig.to_path_buf(), message: e.to_string() })?;
    kc.auth_infos.retain(|a| a.name != ROTATED_USER);
    kc.auth_infos.push(named);
    let opts = KubeConfigOptions { user: Some(ROTATED_USER.into()), ..Default::default() };
    client_from(kc, &opts, kubeconfig).await
}

// ------------------------------------------------------------------ the CSR flow

/// Waits (bounded) until the API server's /healthz answers, like upstream's `waitForServer`;
/// carries on either way (the CSR request then reports the error).
async fn wait_for_server(client: &kube::Client, server: &str, max: Duration) {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let req = http::Request::get("/healthz").body(Vec::new());
        let Ok(req) = req else { return };
        match client.request_text(req).await {
            Ok(_) | Err(kube::Error::Api(_)) => return,
            Err(e) => info!(server, error = %e, "failed to connect to the API server; retrying"),
        }
        if tokio::time::Instant::now() + Duration::from_secs(2) > deadline {
            warn!(server, "timed out waiting to connect to the API server");
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What a CSR's status says: `Some(certificate PEM)` once issued, `None` while pending.
fn csr_outcome(csr: &CertificateSigningRequest, name: &str, uid: &str) -> Result<Option<String>> {
    if csr.metadata.uid.as_deref() != Some(uid) {
        return Err(BootstrapError::Gone { name: name.to_string() });
    }
    let Some(st) = &csr.status else { return Ok(None) };
    let conds = st.conditions.as_deref().unwrap_or_default();
    for c in conds {
        let (reason, message) = (c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default());
        match c.type_.as_str() {
            "Denied" => return Err(BootstrapError::Denied { name: name.to_string(), reason, message }),
            "Failed" => return Err(BootstrapError::Failed { name: name.to_string(), reason, message }),
            _ => {}
        }
    }
    let approved = conds.iter().any(|c| c.type_ == "Approved");
    match &st.certificate {
        Some(c) if approved && !c.0.is_empty() => {
            String::from_utf8(c.0.clone()).map(Some).map_err(|_| BootstrapError::BadCertificate { name: name.to_string(), message: "not PEM text".into() })
        }
        _ => Ok(None),
    }
}

/// Upstream's `WaitForCertificate`: list the CSR by name, then watch it, until it is
/// issued, denied or failed, or `timeout` passes. Logs every [`LOG_EVERY`].
async fn wait_for_certificate(client: &kube::Client, name: &str, uid: &str, timeout: Duration) -> Result<String> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let selector = format!("metadata.name={name}");
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let watch_err = |source| BootstrapError::Watch { name: name.to_string(), source };
    let mut next_log = started + LOG_EVERY;
    loop {
        let list = api.list(&ListParams::default().fields(&selector)).await.map_err(watch_err)?;
        match list.items.first() {
            Some(csr) => {
                if let Some(cert) = csr_outcome(csr, name, uid)? {
                    return Ok(cert);
                }
            }
            None => return Err(BootstrapError::Gone { name: name.to_string() }),
        }
        let rv = list.metadata.resource_version.unwrap_or_default();
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wp = WatchParams::default().fields(&selector).timeout(remaining.as_secs().clamp(1, 300) as u32);
        let mut stream = api.watch(&wp, &rv).await.map_err(watch_err)?.boxed();
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(WatchEvent::Added(csr) | WatchEvent::Modified(csr))) => {
                        if let Some(cert) = csr_outcome(&csr, name, uid)? {
                            return Ok(cert);
                        }
                    }
                    Some(Ok(WatchEvent::Deleted(_))) => return Err(BootstrapError::Gone { name: name.to_string() }),
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    Some(Ok(WatchEvent::Error(s))) => {
                        debug!(csr = name, code = s.code, message = %s.message, "CSR watch ended; listing again");
                        break;
                    }
                    Some(Err(e)) => {
                        warn!(csr = name, error = %e, "CSR watch failed; listing again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(next_log) => {
                    info!(csr = name, waited = ?started.elapsed(), "waiting for the CertificateSigningRequest to be approved and signed");
                    next_log += LOG_EVERY;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(BootstrapError::Timeout { name: name.to_string(), waited: timeout });
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BootstrapError::Timeout { name: name.to_string(), waited: timeout });
        }
    }
}

/// Sends the node's client CSR for `key` and waits for its certificate (PEM).
pub async fn request_node_certificate(client: &kube::Client, server: &str, key: &rcgen::KeyPair, node: &str, timeout: Duration) -> Result<String> {
    // "key encipherment" is for RSA keys only; this key is ECDSA.
    request_certificate(client, server, node_csr_pem(key, node)?, KUBELET_CLIENT_SIGNER, &["digital signature", "client auth"], node, timeout).await
}

/// The PEM CSR for the node's serving certificate: the node subject plus DNS and IP
/// SANs (upstream's serving certificate manager).
pub fn serving_csr_pem(key: &rcgen::KeyPair, node: &str, dns: &[String], ips: &[std::net::IpAddr]) -> Result<String> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    for d in dns {
        params.subject_alt_names.push(rcgen::SanType::DnsName(d.clone().try_into()?));
    }
    for ip in ips {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(*ip));
    }
    Ok(params.serialize_request(key)?.pem()?)
}

/// Requests a serving certificate (`kubernetes.io/kubelet-serving`) and waits up to
/// `timeout` for it: (certificate PEM, key PEM).
pub async fn request_serving_certificate(client: &kube::Client, node: &str, dns: &[String], ips: &[std::net::IpAddr], timeout: Duration) -> Result<(String, String)> {
    let key = generate_key()?;
    let csr = serving_csr_pem(&key, node, dns, ips)?;
    let cert = request_certificate(client, "the API server", csr, KUBELET_SERVING_SIGNER, &["digital signature", "server auth"], node, timeout).await?;
    Ok((cert, key.serialize_pem()))
}

async fn request_certificate(client: &kube::Client, server: &str, csr_pem: String, signer: &str, usages: &[&str], node: &str, timeout: Duration) -> Result<String> {
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some("csr-".into()), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.into_bytes()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api.create(&PostParams::default(), &csr).await.map_err(|source| BootstrapError::Create { server: server.to_string(), source })?;
    let name = created.metadata.name.clone().unwrap_or_default();
    let uid = created.metadata.uid.clone().unwrap_or_default();
    info!(csr = %name, signer, subject = %format!("CN=system:node:{node},O=system:nodes"), "created a CertificateSigningRequest; waiting for its certificate");
    let cert = wait_for_certificate(client, &name, &uid, timeout).await?;
    match parse_certs(cert.as_bytes()) {
        Ok((_, _, not_after)) if SystemTime::now() > not_after => {
            Err(BootstrapError::BadCertificate { name, message: format!("it expired at {}", rfc3339(not_after)) })
        }
        Ok(_) => {
            info!(csr = %name, "the CertificateSigningRequest was approved and signed");
            Ok(cert)
        }
        Err(message) => Err(BootstrapError::BadCertificate { name, message }),
    }
}

/// The bootstrap kubeconfig's cluster and a client with its credentials.
async fn bootstrap_client(bootstrap: &Path) -> Result<(Cluster, kube::Client)> {
    let berr = |message: String| BootstrapError::BootstrapKubeconfig { path: bootstrap.to_path_buf(), message };
    let kc = Kubeconfig::read_from(bootstrap).map_err(|e| berr(e.to_string()))?;
    let (cluster, _) = current_entries(&kc).map_err(berr)?;
    let client = client_from(kc, &KubeConfigOptions::default(), bootstrap).await.map_err(|e| berr(e.to_string()))?;
    Ok((cluster, client))
}

/// Upstream's `LoadClientCert`: if `kubeconfig` is missing or its certificate expired,
/// request a client certificate with the bootstrap credentials, store it under
/// `cert_dir` and write `kubeconfig` pointing at it.
pub async fn load_client_cert(kubeconfig: &Path, bootstrap: &Path, cert_dir: &Path, node: &str, timeout: Duration) -> Result<()> {
    if kubeconfig_is_valid(kubeconfig)? {
        info!(kubeconfig = %kubeconfig.display(), "the kubeconfig exists and is valid; skipping the TLS bootstrap");
        return Ok(());
    }
    info!(bootstrap_kubeconfig = %bootstrap.display(), node, "requesting a client certificate with the bootstrap kubeconfig");
    let (cluster, client) = bootstrap_client(bootstrap).await?;
    let server = cluster.server.clone().unwrap_or_default();
    let store = CertStore::new(cert_dir);
    std::fs::create_dir_all(cert_dir).map_err(io_err("create", cert_dir))?;
    // Reuse the key of an expired pair, or the one a previous attempt left, like upstream.
    let tmp_key = cert_dir.join(TMP_KEY_FILE);
    let existing = store.current().ok().flatten().and_then(|p| rcgen::KeyPair::from_pem(&p.key_pem).ok());
    let key = match existing {
        Some(k) => k,
        None => match std::fs::read_to_string(&tmp_key).ok().and_then(|s| rcgen::KeyPair::from_pem(&s).ok()) {
            Some(k) => k,
            None => {
                let k = generate_key()?;
                write_private(&cert_dir.join(format!("{TMP_KEY_FILE}.new")), &tmp_key, k.serialize_pem().as_bytes())?;
                k
            }
        },
    };
    wait_for_server(&client, &server, SERVER_WAIT.min(timeout)).await;
    let cert = request_node_certificate(&client, &server, &key, node, timeout).await?;
    let pair = store.update(&cert, &key.serialize_pem())?;
    if let Err(e) = std::fs::remove_file(&tmp_key) {
        if e.kind() != std::io::ErrorKind::NotFound {
            debug!(path = %tmp_key.display(), error = %e, "cannot remove the temporary key");
        }
    }
    write_kubeconfig(kubeconfig, &cluster, &store.current_path())?;
    info!(kubeconfig = %kubeconfig.display(), cert = %store.current_path().display(), expiration = %rfc3339(pair.not_after), "TLS bootstrap complete");
    Ok(())
}

// ------------------------------------------------------------------ the agent's client

/// A `tower` service that sends each request through the current inner client, so that
/// certificate rotation can swap the client under every clone of the outer one.
#[derive(Clone)]
struct Swappable(Arc<RwLock<kube::Client>>);

impl Swappable {
    fn current(&self) -> kube::Client {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set(&self, c: kube::Client) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = c;
    }
}

impl tower_service::Service<http::Request<kube::client::Body>> for Swappable {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, kube::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), kube::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let client = self.current();
        Box::pin(async move { client.send(req).await })
    }
}

/// The API client for the agent (what `--kubeconfig` and friends ask for): runs the TLS
/// bootstrap first when `--bootstrap-kubeconfig` is given and needed, and with
/// `rotateCertificates` returns a client whose certificate a background task renews
/// (until `cancel`).
pub async fn client(cfg: &Config, cancel: &CancellationToken) -> Result<kube::Client> {
    let kubeconfig = cfg.kubeconfig.clone().ok_or(BootstrapError::NoKubeconfig)?;
    if let Some(b) = &cfg.bootstrap_kubeconfig {
        load_client_cert(&kubeconfig, b, &cfg.cert_dir, &cfg.node_name, cfg.tls_bootstrap_timeout).await?;
    }
    if !cfg.rotate_certificates {
        return Ok(super::client_from_kubeconfig(&kubeconfig).await?);
    }
    let store = CertStore::new(&cfg.cert_dir);
    let now = SystemTime::now();
    let (pair, force) = match store.current()? {
        Some(p) if !p.is_expired(now) => (p, false),
        _ => match kubeconfig_identity(&kubeconfig) {
            // Like upstream's getCurrentCertificateOrBootstrap: a kubeconfig with its own
            // certificate (kubeadm's control plane) seeds the store and is rotated out at once.
            Ok(Some((cert, key))) => {
                let (cert, key) = (String::from_utf8_lossy(&cert).to_string(), String::from_utf8_lossy(&key).to_string());
                (store.update(&cert, &key)?, true)
            }
            Ok(None) => {
                warn!(kubeconfig = %kubeconfig.display(), "client certificate rotation is on, but the kubeconfig has no client certificate; not rotating");
                return Ok(super::client_from_kubeconfig(&kubeconfig).await?);
            }
            Err(message) => return Err(BootstrapError::Kubeconfig { path: kubeconfig, message }),
        },
    };
    let inner = client_with_identity(&kubeconfig, &pair).await?;
    let default_ns = inner.default_namespace().to_string();
    let swap = Swappable(Arc::new(RwLock::new(inner)));
    let rotator = Rotator { kubeconfig, bootstrap: cfg.bootstrap_kubeconfig.clone(), store, node: cfg.node_name.clone(), swap: swap.clone() };
    tokio::spawn(rotator.run(pair, force, cancel.clone()));
    Ok(kube::Client::new(swap, default_ns))
}

/// The client certificate manager: renews the pair before it expires.
struct Rotator {
    kubeconfig: PathBuf,
    bootstrap: Option<PathBuf>,
    store: CertStore,
    node: String,
    swap: Swappable,
}

impl Rotator {
    async fn run(self, mut pair: CertPair, mut force: bool, cancel: CancellationToken) {
        loop {
            let deadline = if force { SystemTime::now() } else { pair.rotation_deadline(rand::random::<f64>()) };
            force = false;
            let wait = deadline.duration_since(SystemTime::now()).unwrap_or_default();
            info!(expiration = %rfc3339(pair.not_after), deadline = %rfc3339(deadline), wait = ?wait, "waiting for the next client certificate rotation");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            // Upstream: exponential back-off from 2 s, then every 32 s.
            let mut backoff = Duration::from_secs(2);
            loop {
                match self.rotate_once(&pair).await {
                    Ok(p) => {
                        pair = p;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?backoff, "client certificate rotation failed");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(32));
                    }
                }
            }
        }
    }

    async fn rotate_once(&self, current: &CertPair) -> Result<CertPair> {
        info!(node = %self.node, "rotating the client certificate");
        // The current certificate authenticates the request; once it has expired, the
        // bootstrap credentials do, if they are still there (upstream's clientsetFn).
        let (client, server) = match &self.bootstrap {
            Some(b) if current.is_expired(SystemTime::now()) && b.exists() => {
                let (cluster, c) = bootstrap_client(b).await?;
                (c, cluster.server.unwrap_or_default())
            }
            _ => {
                let server = Kubeconfig::read_from(&self.kubeconfig)
                    .ok()
                    .and_then(|kc| current_entries(&kc).ok())
                    .and_then(|(c, _)| c.server)
                    .unwrap_or_default();
                (self.swap.current(), server)
            }
        };
        let key = generate_key()?;
        let cert = request_node_certificate(&client, &server, &key, &self.node, ROTATION_WAIT).await?;
        let pair = self.store.update(&cert, &key.serialize_pem())?;
        self.swap.set(client_with_identity(&self.kubeconfig, &pair).await?);
        info!(cert = %self.store.current_path().display(), expiration = %rfc3339(pair.not_after), "client certificate rotated; new requests use it");
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(cn: &str, not_before: SystemTime, not_after: SystemTime) -> (String, String) {
        let key = generate_key().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.not_before = time::OffsetDateTime::from(not_before);
        p.not_after = time::OffsetDateTime::from(not_after);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rkubelet-bootstrap-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn csr_has_the_node_subject_and_no_sans() {
        let key = generate_key().unwrap();
        let pem_text = node_csr_pem(&key, "node-1").unwrap();
        let block = pem::parse(&pem_text).unwrap();
        assert_eq!(block.tag(), "CERTIFICATE REQUEST");
        let (_, csr) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(block.contents()).unwrap();
        let subj = &csr.certification_request_info.subject;
        assert_eq!(subj.iter_common_name().next().unwrap().as_str().unwrap(), "system:node:node-1");
        assert_eq!(subj.iter_organization().next().unwrap().as_str().unwrap(), "system:nodes");
        assert!(csr.requested_extensions().map(|e| e.count()).unwrap_or(0) == 0);
    }

    #[test]
    fn the_store_writes_dated_files_and_swaps_the_symlink() {
        let dir = tmpdir("store");
        let store = CertStore::new(&dir);
        assert!(store.current().unwrap().is_none());
        let now = SystemTime::now();
        let (c1, k1) = self_signed("a", now - Duration::from_secs(60), now + Duration::from_secs(3600));
        let p1 = store.update(&c1, &k1).unwrap();
        let link = std::fs::read_link(store.current_path()).unwrap();
        let name = link.file_name().unwrap().to_string_lossy().to_string();
        assert!(link.is_absolute() && name.starts_with("kubelet-client-2") && name.ends_with(".pem") && name.len() == "kubelet-client-YYYY-MM-DD-HH-MM-SS.pem".len(), "{name}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&link).unwrap().permissions().mode() & 0o777, 0o600);
        let cur = store.current().unwrap().unwrap();
        assert_eq!(cur.certs_pem, p1.certs_pem);
        assert!(cur.key_pem.contains("PRIVATE KEY"));
        assert!(!cur.is_expired(SystemTime::now()));
        // The same second: the dated file is replaced, the symlink still resolves.
        let (c2, k2) = self_signed("b", now - Duration::from_secs(60), now + Duration::from_secs(7200));
        store.update(&c2, &k2).unwrap();
        assert_eq!(store.current().unwrap().unwrap().key_pem, pem::encode_config(&pem::parse(&k2).unwrap(), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)));
        // An interrupted swap (only -updated left) is recovered.
        std::fs::rename(store.current_path(), store.updated_path()).unwrap();
        assert!(store.current().unwrap().is_some());
        assert!(store.current_path().exists() && !store.updated_path().exists());
        // A regular file where the symlink belongs is refused.
        std::fs::remove_file(store.current_path()).unwrap();
        std::fs::write(store.current_path(), "x").unwrap();
        assert!(matches!(store.update(&c1, &k1), Err(BootstrapError::Store { .. })));
    }

    #[test]
    fn rotation_happens_at_70_to_90_percent_of_the_lifetime() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let pair = CertPair { certs_pem: String::new(), key_pem: String::new(), not_before: nb, not_after: nb + Duration::from_secs(1000), obtained: nb };
        assert_eq!(pair.rotation_deadline(0.0), nb + Duration::from_secs(700));
        assert_eq!(pair.rotation_deadline(1.0), nb + Duration::from_secs(900));
        // A backdated notBefore: the lifetime counts from when the pair was stored.
        let backdated = CertPair { not_before: nb - Duration::from_secs(300), obtained: nb, ..pair.clone() };
        assert_eq!(backdated.rotation_deadline(0.5), nb + Duration::from_secs(800));
        assert!(pair.is_expired(nb + Duration::from_secs(1001)) && !pair.is_expired(nb + Duration::from_secs(999)));
    }

    #[test]
    fn kubeconfig_validity_follows_upstream() {
        let dir = tmpdir("valid");
        let kc = dir.join("kubelet.conf");
        assert!(!kubeconfig_is_valid(&kc).unwrap(), "missing: bootstrap");
        let store = CertStore::new(&dir.join("pki"));
        let now = SystemTime::now();
        let (c, k) = self_signed("system:node:n", now - Duration::from_secs(60), now + Duration::from_secs(3600));
        store.update(&c, &k).unwrap();
        let cluster: Cluster = serde_json::from_value(serde_json::json!({"server": "https://127.0.0.1:6443", "certificate-authority-data": "Y2E="})).unwrap();
        write_kubeconfig(&kc, &cluster, &store.current_path()).unwrap();
        let text = std::fs::read_to_string(&kc).unwrap();
        assert!(text.contains("client-certificate: ") && text.contains("kubelet-client-current.pem") && text.contains("certificate-authority-data: Y2E="), "{text}");
        assert!(kubeconfig_is_valid(&kc).unwrap());
        let (id_cert, _) = kubeconfig_identity(&kc).unwrap().unwrap();
        assert!(String::from_utf8_lossy(&id_cert).contains("BEGIN CERTIFICATE"));
        // An expired certificate: bootstrap again.
        let (c, k) = self_signed("system:node:n", now - Duration::from_secs(7200), now - Duration::from_secs(60));
        store.update(&c, &k).unwrap();
        assert!(!kubeconfig_is_valid(&kc).unwrap());
        // Garbage: bootstrap again, no error.
        std::fs::write(&kc, "not: [a kubeconfig").unwrap();
        assert!(!kubeconfig_is_valid(&kc).unwrap());
    }
}

//! `rkubelet-test-apiserver`: a small, strict Kubernetes API server for rkubelet's tests.
//!
//! It is test support only (never part of the shipped agent). It follows the real
//! kube-apiserver's rules where a kubelet can observe them — resourceVersion and UID
//! preconditions, status subresources, strategic merge patch, graceful pod deletion,
//! watches with bookmarks/streaming lists/410 Gone, NodeRestriction, CSR signing — and where
//! the real server would silently drop or ignore part of a request it still does so, but
//! records a *violation* ([`TestApiServer::violations`]) so agent tests can assert a clean run.
//!
//! ```no_run
//! # async fn demo() -> rkubelet_test_apiserver::Result<()> {
//! use rkubelet_test_apiserver::{Options, TestApiServer, User};
//! let srv = TestApiServer::start(Options::default()).await?;
//! srv.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"), &User::Node("node-1".into()))?;
//! assert!(srv.violations().is_empty());
//! # Ok(()) }
//! ```
//!
//! Modules: [`store`] (objects, resourceVersions, history), [`watch`], [`patch`],
//! [`auth`], [`tables`], [`discovery`], [`csr`], [`pki`], [`strategy`] (per-resource
//! rules), [`state`] (the API operations), [`server`] (HTTPS + routing).

pub mod auth;
pub mod csr;
pub mod discovery;
pub mod error;
pub mod meta;
pub mod node_authz;
pub mod nodeproxy;
pub mod noderestriction;
pub mod patch;
pub mod podspec;
pub mod pki;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod state;
pub mod store;
pub mod strategy;
pub mod tables;
pub mod typed;
pub mod watch;
pub mod wsstream;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

pub use error::{ApiError, Error, Result};
pub use state::RequestRecord;

use auth::UserInfo;
use state::{DeleteOpts, Shared};

/// A static bearer token (for [`User::Token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticToken {
    pub token: String,
    pub user: String,
    pub groups: Vec<String>,
}

/// Server options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Port on 127.0.0.1; 0 picks a free one (kept across [`TestApiServer::restart`]).
    pub port: u16,
    /// Keeps the CA, the admin token and (on stop) the objects; reused on the next start.
    pub state_dir: Option<PathBuf>,
    /// Lifetime of certificates signed for CSRs (capped by `spec.expirationSeconds`).
    pub cert_ttl: Duration,
    /// Approve kubelet client CSRs like kube-controller-manager's approver (default on).
    pub auto_approve_csrs: bool,
    /// Interval of BOOKMARK events on watches with `allowWatchBookmarks=true`.
    pub bookmark_interval: Duration,
    /// How many changes watches can resume from; older resourceVersions get 410 Gone.
    pub watch_history: usize,
    /// Emulate the ServiceAccount admission plugin (default SA + projected token volume).
    pub service_account_admission: bool,
    /// The bootstrap token (`<id>.<secret>`); user `system:bootstrap:<id>`.
    pub bootstrap_token: String,
    /// Extra bearer tokens.
    pub static_tokens: Vec<StaticToken>,
    /// Users that SubjectAccessReviews allow to use the kubelet API (`nodes/proxy`,
    /// `nodes/log`, …), like a binding to `system:kubelet-api-admin`.
    pub kubelet_api_users: Vec<String>,
    /// Where `pods/log` connects instead of the node's InternalIP (tests may only
    /// talk to loopback; kube-apiserver's `--kubelet-preferred-address-types` plays
    /// this part for real). The node's kubelet port is kept.
    pub kubelet_dial_address: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: 0,
            state_dir: None,
            cert_ttl: Duration::from_secs(3600),
            auto_approve_csrs: true,
            bookmark_interval: Duration::from_secs(1),
            watch_history: 1000,
            service_account_admission: true,
            bootstrap_token: "abcdef.0123456789abcdef".into(),
            static_tokens: Vec::new(),
            kubelet_api_users: Vec::new(),
            kubelet_dial_address: None,
        }
    }
}

/// Identities for kubeconfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// Client certificate `CN=kubernetes-admin, O=system:masters`.
    Admin,
    /// Client certificate `CN=system:node:<name>, O=system:nodes`.
    Node(String),
    /// The bootstrap token (`system:bootstrap:<id>` in `system:bootstrappers`).
    BootstrapToken,
    /// Any bearer token (unknown tokens get 401).
    Token(String),
    /// A client certificate with this CN and these organizations.
    Cert { cn: String, groups: Vec<String> },
}

/// A running (or stopped) test API server.
pub struct TestApiServer {
    shared: Arc<Shared>,
    port: u16,
    running: Option<server::Running>,
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer")
            .field("port", &self.port)
            .field("running", &self.running.is_some())
            .finish()
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn lookup(resource: &str) -> Result<&'static resources::ResourceDef> {
    resources::lookup(resource).ok_or_else(|| Error::UnknownResource(resource.to_string()))
}

fn admin() -> UserInfo {
    UserInfo::new("kubernetes-admin", &["system:masters"])
}

impl TestApiServer {
    /// Start on 127.0.0.1 with HTTPS.
    pub async fn start(opts: Options) -> Result<TestApiServer> {
        let dir = opts.state_dir.clone();
        let pki = pki::Pki::load_or_generate(dir.as_deref())?;
        let admin_token = match &dir {
            Some(d) if d.join("admin.token").exists() => {
                std::fs::read_to_string(d.join("admin.token"))?
                    .trim()
                    .to_string()
            }
            _ => {
                let t = format!("admin-{}", uuid::Uuid::new_v4().simple());
                if let Some(d) = &dir {
                    std::fs::write(d.join("admin.token"), &t)?;
                }
                t
            }
        };
        let shared = Arc::new(Shared::new(pki, opts.clone(), admin_token));
        if let Some(d) = &dir {
            let f = d.join("state.json");
            if f.exists() {
                let snap: store::Snapshot = serde_json::from_slice(&std::fs::read(f)?)?;
                shared.store().restore(snap);
            }
        }
        shared.seed();
        let listener = server::bind(opts.port)?;
        let port = listener.local_addr()?.port();
        shared.set_server_address(format!("127.0.0.1:{port}"));
        let tls = server::tls_config(&shared.pki)?;
        let running = server::spawn(listener, shared.clone(), tls);
        tracing::info!("test apiserver listening on https://127.0.0.1:{port}");
        Ok(TestApiServer {
            shared,
            port,
            running: Some(running),
        })
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn ca_pem(&self) -> String {
        self.shared.pki.ca_pem().to_string()
    }
    pub fn admin_token(&self) -> String {
        self.shared.admin_token.clone()
    }
    pub fn bootstrap_token(&self) -> String {
        self.shared.opts.bootstrap_token.clone()
    }
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// A client certificate signed by the cluster CA: (cert PEM, PKCS#8 key PEM).
    pub fn issue_client_cert(
        &self,
        cn: &str,
        orgs: &[&str],
        ttl: Duration,
    ) -> Result<(String, String)> {
        self.shared.pki.issue_client_cert(cn, orgs, ttl)
    }

    /// A kubeconfig (YAML) for `user`, with the CA inline.
    pub fn kubeconfig(&self, user: &User) -> Result<String> {
        let year = Duration::from_secs(365 * 86400);
        let (name, creds) = match user {
            User::Admin => {
                let (c, k) =
                    self.issue_client_cert("kubernetes-admin", &["system:masters"], year)?;
                (
                    "kubernetes-admin".to_string(),
                    json!({"client-certificate-data": b64(&c), "client-key-data": b64(&k)}),
                )
            }
            User::Node(n) => {
                let (c, k) =
                    self.issue_client_cert(&format!("system:node:{n}"), &["system:nodes"], year)?;
                (
                    format!("system:node:{n}"),
                    json!({"client-certificate-data": b64(&c), "client-key-data": b64(&k)}),
                )
            }
            User::Cert { cn, groups } => {
                let g: Vec<&str> = groups.iter().map(String::as_str).collect();
                let (c, k) = self.issue_client_cert(cn, &g, year)?;
                (
                    cn.clone(),
                    json!({"client-certificate-data": b64(&c), "client-key-data": b64(&k)}),
                )
            }
            User::BootstrapToken => (
                "tls-bootstrap-token-user".to_string(),
                json!({"token": self.bootstrap_token()}),
            ),
            User::Token(t) => ("token-user".to_string(), json!({"token": t})),
        };
        let cfg = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubernetes", "cluster": {"server": self.url(), "certificate-authority-data": b64(&self.ca_pem())}}],
            "users": [{"name": name, "user": creds}],
            "contexts": [{"name": format!("{name}@kubernetes"), "context": {"cluster": "kubernetes", "user": name}}],
            "current-context": format!("{name}@kubernetes"),
            "preferences": {},
        });
        Ok(serde_yaml::to_string(&cfg)?)
    }

    /// Write [`Self::kubeconfig`] to `path` (mode 0600).
    pub fn write_kubeconfig(&self, path: &Path, user: &User) -> Result<()> {
        let s = self.kubeconfig(user)?;
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(path, s)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    /// Stop serving: close the listener and every connection (watches end). State is kept
    /// (and saved to the state dir, if any).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), r.task).await;
        }
        if let Err(e) = self.save_state() {
            tracing::warn!("saving state: {e}");
        }
    }

    /// Start again on the same port with the same state (and CA, so kubeconfigs stay valid).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match server::bind(self.port) {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("rebinding port {}: {e}", self.port);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let tls = server::tls_config(&self.shared.pki)?;
        self.running = Some(server::spawn(listener, self.shared.clone(), tls));
        Ok(())
    }

    /// Save the objects to `<state_dir>/state.json` (no-op without a state dir).
    pub fn save_state(&self) -> Result<()> {
        if let Some(d) = &self.shared.opts.state_dir {
            let snap = self.shared.store().snapshot();
            let tmp = d.join("state.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(&snap)?)?;
            std::fs::rename(tmp, d.join("state.json"))?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- CSRs

    /// Approve a CSR (condition `Approved`, reason `KubectlApprove`) and sign it with the CA;
    /// a request that does not conform to its signer gets a `Failed` condition instead.
    pub fn approve_csr(&self, name: &str) -> Result<()> {
        Ok(self.shared.approve(
            name,
            "KubectlApprove",
            "This CSR was approved by kubectl certificate approve.",
        )?)
    }

    pub fn set_auto_approve_csrs(&self, on: bool) {
        self.shared.auto_approve.store(on, Ordering::SeqCst);
    }

    // ---------------------------------------------------------------- observation

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.records()
    }
    pub fn clear_requests(&self) {
        self.shared.clear_records()
    }
    /// Requests with this verb on this resource (`"pods"`, `"pods/status"`, `"leases"`).
    pub fn count_requests(&self, verb: &str, resource: &str) -> usize {
        let (r, s) = resource.split_once('/').unwrap_or((resource, ""));
        self.requests()
            .iter()
            .filter(|x| x.verb == verb && x.resource == r && x.subresource == s)
            .count()
    }

    /// Things a correct client must not do that the real server would reject or silently drop.
    pub fn violations(&self) -> Vec<String> {
        self.shared.violations()
    }
    pub fn clear_violations(&self) {
        self.shared.clear_violations()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    // ---------------------------------------------------------------- direct state access

    /// An object as stored. `resource` is a plural, singular, short name or kind
    /// (`pods`, `po`, `Pod`, `leases.coordination.k8s.io`).
    pub fn get(&self, resource: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let def = resources::lookup(resource)?;
        self.shared
            .store()
            .get(&def.qualified(), ns.unwrap_or(""), name)
            .map(|v| (*v).clone())
    }

    /// All objects of a resource (in a namespace, or all).
    pub fn list(&self, resource: &str, ns: Option<&str>) -> Vec<Value> {
        let Some(def) = resources::lookup(resource) else {
            return Vec::new();
        };
        self.shared
            .store()
            .list(&def.qualified(), ns)
            .into_iter()
            .map(|v| (*v).clone())
            .collect()
    }

    /// Create as the cluster admin, through the same defaulting/validation as a POST.
    pub fn create(&self, resource: &str, ns: Option<&str>, obj: Value) -> Result<Value> {
        let def = lookup(resource)?;
        Ok(self.shared.create(&admin(), def, ns.unwrap_or(""), obj)?)
    }

    /// Create or replace an object as given (status included; kind and apiVersion pick the
    /// resource). A backdoor for test setup: no admission, no status reset.
    pub fn apply(&self, obj: Value) -> Result<Value> {
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("v1");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let def = resources::by_kind(av, kind)
            .ok_or_else(|| Error::UnknownResource(format!("{av}/{kind}")))?;
        Ok(self.shared.apply_raw(def, obj)?)
    }

    /// Create a pod and bind it to `node` as the scheduler would (spec.nodeName +
    /// PodScheduled=True). Returns the bound pod.
    pub fn create_pod_on_node(&self, ns: &str, pod: Value, node: &str) -> Result<Value> {
        let created = self.shared.create(&admin(), state::res("pods"), ns, pod)?;
        let name = meta::name(&created).to_string();
        self.bind_pod(ns, &name, node)?;
        self.get("pods", Some(ns), &name)
            .ok_or_else(|| Error::Other(format!("pod {ns}/{name} vanished")))
    }

    /// The binding subresource (what the scheduler does).
    pub fn bind_pod(&self, ns: &str, name: &str, node: &str) -> Result<()> {
        self.shared
            .bind(ns, name, &json!({"target": {"kind": "Node", "name": node}}))?;
        Ok(())
    }

    /// DELETE as the admin (graceful for bound pods, like `kubectl delete`).
    pub fn delete(
        &self,
        resource: &str,
        ns: Option<&str>,
        name: &str,
        grace_period_seconds: Option<i64>,
    ) -> Result<Value> {
        let def = lookup(resource)?;
        let opts = DeleteOpts {
            grace_period_seconds,
            ..Default::default()
        };
        Ok(self
            .shared
            .delete(&admin(), def, ns.unwrap_or(""), name, &opts)?)
    }

    /// Wait (bounded) until the object satisfies `pred`; returns it, or None on timeout.
    /// `pred` also sees `None` (object absent), so it can wait for deletion.
    pub async fn wait_for<F>(
        &self,
        resource: &str,
        ns: Option<&str>,
        name: &str,
        timeout: Duration,
        pred: F,
    ) -> Option<Option<Value>>
    where
        F: Fn(Option<&Value>) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let cur = self.get(resource, ns, name);
            if pred(cur.as_ref()) {
                return Some(cur);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.cancel.cancel();
            r.task.abort();
        }
    }
}

//! Helpers for tests against the in-repo test API server: start it with an admin
//! and a node kubeconfig, drive it with the real `kubectl`.

use std::path::{Path, PathBuf};
use std::process::Command;

use rkubelet_test_apiserver::{Options, TestApiServer, User};
use serde_json::Value;

use super::NODE;

pub struct Api {
    pub srv: TestApiServer,
    pub admin: PathBuf,
    pub node: PathBuf,
}

pub async fn api_server(dir: &Path) -> Api {
    std::fs::create_dir_all(dir).unwrap();
    let srv = TestApiServer::start(Options::default()).await.expect("test API server");
    let admin = dir.join("admin.kubeconfig");
    let node = dir.join("node.kubeconfig");
    srv.write_kubeconfig(&admin, &User::Admin).unwrap();
    srv.write_kubeconfig(&node, &User::Node(NODE.to_string())).unwrap();
    Api { srv, admin, node }
}

/// The requests of a node user the server refused with 403 (the Node authorizer
/// or NodeRestriction), as `verb resource/subresource ns/name`.
pub fn node_forbidden(srv: &TestApiServer) -> Vec<String> {
    srv.requests()
        .iter()
        .filter(|r| r.user.starts_with("system:node:") && r.code == 403)
        .map(|r| format!("{} {}{} {}/{}", r.verb, r.resource, if r.subresource.is_empty() { String::new() } else { format!("/{}", r.subresource) }, r.namespace, r.name))
        .collect()
}

/// Nothing the real server would reject or drop, and no request of the node
/// that the Node authorizer or NodeRestriction refused.
pub fn assert_api_clean(srv: &TestApiServer) {
    assert!(srv.violations().is_empty(), "requests the real server would reject: {:?}", srv.violations());
    assert_eq!(node_forbidden(srv), Vec::<String>::new(), "requests of the node that a real server's Node authorizer or NodeRestriction refuses");
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args).output().expect("kubectl");
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

pub fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(&a).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Deletes every pod through the API (so the agent cleans up) before the agent is dropped.
pub struct DeletePods(pub PathBuf);
impl Drop for DeletePods {
    fn drop(&mut self) {
        let _ = kubectl(&self.0, &["delete", "pods", "--all", "-n", "default", "--wait=false"]);
    }
}

pub fn create(admin: &Path, dir: &Path, file: &str, yaml: &str) {
    let f = dir.join(file);
    std::fs::write(&f, yaml).unwrap();
    let (ok, out) = kubectl(admin, &["create", "--validate=false", "-f", f.to_str().unwrap()]);
    assert!(ok, "{out}");
}

/// A pod's or node's condition `t` as (status, reason, message).
pub fn condition(obj: &Value, t: &str) -> Option<(String, String, String)> {
    let c = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == t)?;
    Some((c["status"].as_str()?.into(), c["reason"].as_str().unwrap_or("").into(), c["message"].as_str().unwrap_or("").into()))
}

pub fn pod_phase(admin: &Path, name: &str) -> Option<Value> {
    kubectl_json(admin, &["get", "pod", name])
}

/// A test API server for kubelet-API tests: it proxies to the kubelet on 127.0.0.1
/// (pods/log, exec, attach, portforward) and its SubjectAccessReviews allow
/// `apiserver-kubelet-client` and its own kubelet client; the admin and node
/// kubeconfigs and its CA (`ca.crt`, for `--client-ca-file`) are written into `dir`.
pub struct KubeletApi {
    pub srv: TestApiServer,
    pub admin: PathBuf,
    pub node: PathBuf,
    pub ca: PathBuf,
}

pub async fn kubelet_api_server(dir: &Path) -> KubeletApi {
    std::fs::create_dir_all(dir).unwrap();
    let srv = TestApiServer::start(Options {
        kubelet_api_users: vec!["apiserver-kubelet-client".into(), rkubelet_test_apiserver::nodeproxy::KUBELET_CLIENT.into()],
        kubelet_dial_address: Some("127.0.0.1".into()),
        ..Options::default()
    })
    .await
    .unwrap();
    let (admin, node, ca) = (dir.join("admin.kubeconfig"), dir.join("node.kubeconfig"), dir.join("ca.crt"));
    srv.write_kubeconfig(&admin, &User::Admin).unwrap();
    srv.write_kubeconfig(&node, &User::Node(NODE.to_string())).unwrap();
    std::fs::write(&ca, srv.ca_pem()).unwrap();
    KubeletApi { srv, admin, node, ca }
}

/// A TLS connection to this node's kubelet API on 127.0.0.1:10250 with the client
/// certificate in `cert_args` (curl's: `--cert FILE --key FILE`).
pub async fn kubelet_tls(cert_args: &[&str]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (crt, key) = (std::fs::read(cert_args[1]).unwrap(), std::fs::read(cert_args[3]).unwrap());
    let cfg = rkubelet_test_apiserver::nodeproxy::kubelet_client_tls(&crt, &key).unwrap();
    let tcp = tokio::net::TcpStream::connect("127.0.0.1:10250").await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap()
}

//! The kubelet TLS bootstrap and client certificate rotation against the test API
//! server: the agent starts with only a bootstrap token (`--bootstrap-kubeconfig`) and a
//! `--kubeconfig` path that does not exist yet, requests its client certificate with a
//! CSR shaped like upstream's (checked against the golden request of a real kubelet
//! 1.36), writes the kubeconfig and the certificate store, registers the node as
//! `system:node:rk-test`, reuses the result on restart, renews the certificate before it
//! expires, and fails clearly when the bootstrap cannot work.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use common::api::assert_api_clean;
use rkubelet_test_apiserver::{Options, TestApiServer, User};
use serde_json::Value;

const GOLDEN_CSR: &str = include_str!("data/upstream-kubelet-1.36/create-certificatesigningrequests.json");

/// A directory for the kubeconfigs (like /etc/kubernetes), outside the agent's root.
fn etc_dir(name: &str) -> PathBuf {
    let d = PathBuf::from("/var/lib/rkubelet-test/agents").join(format!("{name}-etc"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn csrs(srv: &TestApiServer) -> Vec<Value> {
    let mut v = srv.list("certificatesigningrequests", None);
    v.sort_by_key(|c| c["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string());
    v
}

fn csr_name(c: &Value) -> String {
    c["metadata"]["name"].as_str().unwrap().to_string()
}

fn pki(agent: &Agent) -> PathBuf {
    agent.state_dir().join("pki")
}

/// The dated file `kubelet-client-current.pem` points at.
fn current_target(agent: &Agent) -> Option<PathBuf> {
    std::fs::read_link(pki(agent).join("kubelet-client-current.pem")).ok()
}

fn lease_renew_time(srv: &TestApiServer) -> Option<String> {
    srv.get("leases", Some("kube-node-lease"), NODE).and_then(|l| l["spec"]["renewTime"].as_str().map(String::from))
}

/// The CSR the agent sent has the shape of the golden request of the upstream kubelet.
fn assert_csr_like_upstream(csr: &Value) {
    let golden: Value = serde_json::from_str(GOLDEN_CSR).unwrap();
    let g = &golden["requestObject"];
    assert_eq!(csr["metadata"]["generateName"], g["metadata"]["generateName"], "generateName csr-");
    assert!(csr_name(csr).starts_with("csr-"));
    assert_eq!(csr["spec"]["signerName"], g["spec"]["signerName"]);
    assert_eq!(csr["spec"]["usages"], g["spec"]["usages"], "an ECDSA key: digital signature + client auth");
    assert!(csr["spec"].get("expirationSeconds").is_none(), "expirationSeconds is left to the signer");
    let info = rkubelet_test_apiserver::csr::request_info(csr).expect("a valid PEM CSR");
    assert_eq!(info.common_name, format!("system:node:{NODE}"));
    assert_eq!(info.organizations, vec!["system:nodes".to_string()]);
    assert!(info.dns_names.is_empty() && info.ip_addresses.is_empty() && info.emails.is_empty() && info.uris.is_empty());
    // The golden request is an ECDSA P-256 key too (same SPKI algorithm prefix).
    let golden_info = rkubelet_test_apiserver::csr::request_info(&serde_json::json!({"spec": g["spec"]})).unwrap();
    assert_eq!(info.spki_der[..26], golden_info.spki_der[..26], "ECDSA P-256 public key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_bootstrap_from_a_token_writes_the_kubeconfig_and_registers_as_the_node() {
    let srv = TestApiServer::start(Options::default()).await.expect("test API server");
    srv.set_auto_approve_csrs(false);
    let etc = etc_dir("b1");
    let bootstrap = etc.join("bootstrap-kubelet.conf");
    let kubeconfig = etc.join("kubelet.conf");
    srv.write_kubeconfig(&bootstrap, &User::BootstrapToken).unwrap();
    let (b, k) = (bootstrap.to_str().unwrap().to_string(), kubeconfig.to_str().unwrap().to_string());
    let mut agent = tokio::task::block_in_place(|| {
        Agent::with_options("b1", &[], &["--bootstrap-kubeconfig", &b, "--kubeconfig", &k, "--node-lease-duration-seconds", "8"])
    });
    tokio::task::block_in_place(|| {
        // The CSR, sent with the bootstrap token.
        let csr = wait_for(Duration::from_secs(30), "a CSR", &agent, || csrs(&srv).into_iter().next());
        assert_csr_like_upstream(&csr);
        assert_eq!(csr["spec"]["username"], "system:bootstrap:abcdef");
        let name = csr_name(&csr);
        let create = srv.requests().into_iter().find(|r| r.verb == "create" && r.resource == "certificatesigningrequests").unwrap();
        assert!(create.user_agent.starts_with("kubelet/v1.36"), "{}", create.user_agent);
        // Nothing is written while the CSR waits for approval.
        std::thread::sleep(Duration::from_secs(2));
        assert!(!kubeconfig.exists(), "no kubeconfig before the certificate is issued");
        assert!(agent.is_running(), "the agent waits:\n{}", agent.log_tail(20));
        srv.approve_csr(&name).unwrap();

        // The kubeconfig and the certificate store.
        wait_for(Duration::from_secs(20), "the kubeconfig", &agent, || kubeconfig.exists().then_some(()));
        let kc: Value = serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
        let current = pki(&agent).join("kubelet-client-current.pem");
        assert_eq!(kc["users"][0]["user"]["client-certificate"], current.to_str().unwrap());
        assert_eq!(kc["users"][0]["user"]["client-key"], current.to_str().unwrap());
        assert_eq!(kc["clusters"][0]["cluster"]["server"], srv.url().as_str());
        assert!(kc["clusters"][0]["cluster"]["certificate-authority-data"].is_string(), "the CA comes from the bootstrap kubeconfig");
        let target = current_target(&agent).expect("kubelet-client-current.pem is a symlink");
        let file = target.file_name().unwrap().to_string_lossy().to_string();
        assert!(file.starts_with("kubelet-client-20") && file.ends_with(".pem") && target.starts_with(pki(&agent)), "{}", target.display());
        let pem = std::fs::read_to_string(&target).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"), "certificate and key in one file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!pki(&agent).join("kubelet-client.key.tmp").exists(), "the pending key is cleaned up");

        // The node registers with its new identity.
        wait_for(Duration::from_secs(30), "the Node", &agent, || srv.get("nodes", None, NODE));
        let reqs = srv.requests();
        let create_node = reqs.iter().find(|r| r.verb == "create" && r.resource == "nodes").expect("create nodes");
        assert_eq!(create_node.user, format!("system:node:{NODE}"));
        wait_for(Duration::from_secs(20), "the Lease", &agent, || lease_renew_time(&srv));

        // kubeadm deletes the bootstrap kubeconfig; a restart uses the kubeconfig as is.
        std::fs::remove_file(&bootstrap).unwrap();
        agent.stop();
        let before = lease_renew_time(&srv);
        srv.clear_requests();
        agent.start();
        wait_for(Duration::from_secs(30), "the Lease renewed after the restart", &agent, || {
            srv.requests()
                .iter()
                .any(|r| r.resource == "leases" && r.verb == "update" && r.code == 200 && r.user == format!("system:node:{NODE}"))
                .then_some(())
        });
        assert_ne!(lease_renew_time(&srv), before);
        assert_eq!(csrs(&srv).len(), 1, "no second CSR with a valid kubeconfig");
        assert_eq!(srv.count_requests("create", "certificatesigningrequests"), 0);
        assert_eq!(current_target(&agent), Some(target), "the same certificate");
        assert!(agent.log_tail(400).contains("skipping the TLS bootstrap"), "{}", agent.log_tail(40));
    });
    assert_api_clean(&srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_the_client_certificate_is_rotated_before_it_expires() {
    let srv = TestApiServer::start(Options { cert_ttl: Duration::from_secs(20), ..Default::default() }).await.expect("test API server");
    let etc = etc_dir("b2");
    let bootstrap = etc.join("bootstrap-kubelet.conf");
    let kubeconfig = etc.join("kubelet.conf");
    srv.write_kubeconfig(&bootstrap, &User::BootstrapToken).unwrap();
    let (b, k) = (bootstrap.to_str().unwrap().to_string(), kubeconfig.to_str().unwrap().to_string());
    let agent = tokio::task::block_in_place(|| {
        Agent::with_options("b2", &[], &["--bootstrap-kubeconfig", &b, "--kubeconfig", &k, "--rotate-certificates", "--node-lease-duration-seconds", "8"])
    });
    tokio::task::block_in_place(|| {
        // Bootstrap (auto-approved, as kube-controller-manager does), then delete the token.
        wait_for(Duration::from_secs(30), "the kubeconfig", &agent, || kubeconfig.exists().then_some(()));
        std::fs::remove_file(&bootstrap).unwrap();
        let first = current_target(&agent).unwrap();
        let issued = Instant::now();
        assert_eq!(csrs(&srv).len(), 1);
        wait_for(Duration::from_secs(30), "the Lease", &agent, || lease_renew_time(&srv));

        // At 70-90% of the 20 s lifetime (14-18 s), a second CSR, by the node itself.
        let second = wait_for(Duration::from_secs(40), "a second CSR", &agent, || csrs(&srv).into_iter().nth(1));
        assert!(issued.elapsed() >= Duration::from_secs(10), "rotated too early: {:?}", issued.elapsed());
        assert_eq!(second["spec"]["username"], format!("system:node:{NODE}"), "the renewal is authenticated with the current certificate");
        assert_csr_like_upstream(&second);
        let moved = wait_for(Duration::from_secs(20), "the symlink to move", &agent, || current_target(&agent).filter(|t| *t != first));
        assert!(moved.file_name().unwrap().to_string_lossy().starts_with("kubelet-client-20"));
        assert!(first.exists(), "the previous pair is kept, like upstream");

        // Past the first certificate's expiry, the agent still talks to the API server.
        let expired_at = issued + Duration::from_secs(21);
        while Instant::now() < expired_at {
            std::thread::sleep(Duration::from_millis(200));
        }
        srv.clear_requests();
        let before = lease_renew_time(&srv);
        wait_for(Duration::from_secs(20), "the Lease renewed with the new certificate", &agent, || {
            let ok = srv.requests().iter().any(|r| r.resource == "leases" && r.verb == "update" && r.code == 200 && r.user == format!("system:node:{NODE}"));
            (ok && lease_renew_time(&srv) != before).then_some(())
        });
        let unauthorized: Vec<_> = srv.requests().into_iter().filter(|r| r.code == 401).collect();
        assert!(unauthorized.is_empty(), "requests with an expired certificate: {unauthorized:?}");
        assert!(agent.log_tail(400).contains("client certificate rotated"), "{}", agent.log_tail(40));
    });
    assert_api_clean(&srv);
}

fn wait_exit(agent: &mut Agent, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !agent.is_running() {
            return agent.log_tail(40);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the agent did not exit within {timeout:?}:\n{}", agent.log_tail(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_bootstrap_failures_are_clear_errors() {
    let srv = TestApiServer::start(Options::default()).await.expect("test API server");
    srv.set_auto_approve_csrs(false);
    let etc = etc_dir("b3");
    let kubeconfig = etc.join("kubelet.conf");
    let k = kubeconfig.to_str().unwrap().to_string();

    // A bootstrap kubeconfig that is not one.
    let garbage = etc.join("garbage.conf");
    std::fs::write(&garbage, "clusters: [this is not\n").unwrap();
    let g = garbage.to_str().unwrap().to_string();
    let mut agent = tokio::task::block_in_place(|| Agent::with_options("b3", &[], &["--bootstrap-kubeconfig", &g, "--kubeconfig", &k]));
    let log = tokio::task::block_in_place(|| wait_exit(&mut agent, Duration::from_secs(30)));
    assert!(log.contains(&format!("unable to load bootstrap kubeconfig {}", garbage.display())), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(agent);

    // An API server that is not there.
    let unreachable = etc.join("unreachable.conf");
    let text = srv.kubeconfig(&User::BootstrapToken).unwrap().replace(&srv.url(), "https://127.0.0.1:1");
    std::fs::write(&unreachable, text).unwrap();
    let u = unreachable.to_str().unwrap().to_string();
    let mut agent = tokio::task::block_in_place(|| {
        Agent::with_options("b3", &[], &["--bootstrap-kubeconfig", &u, "--kubeconfig", &k, "--tls-bootstrap-timeout", "3s"])
    });
    let log = tokio::task::block_in_place(|| wait_exit(&mut agent, Duration::from_secs(30)));
    assert!(log.contains("cannot create a CertificateSigningRequest at https://127.0.0.1:1"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(agent);

    // A denied CSR.
    let bootstrap = etc.join("bootstrap-kubelet.conf");
    srv.write_kubeconfig(&bootstrap, &User::BootstrapToken).unwrap();
    let b = bootstrap.to_str().unwrap().to_string();
    let mut agent = tokio::task::block_in_place(|| Agent::with_options("b3", &[], &["--bootstrap-kubeconfig", &b, "--kubeconfig", &k]));
    let log = tokio::task::block_in_place(|| {
        let mut csr = wait_for(Duration::from_secs(30), "a CSR", &agent, || csrs(&srv).into_iter().next());
        csr["status"] = serde_json::json!({"conditions": [{
            "type": "Denied", "status": "True", "reason": "NotOurNode", "message": "this node is not expected",
            "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]});
        srv.apply(csr.clone()).unwrap();
        wait_exit(&mut agent, Duration::from_secs(30))
    });
    assert!(log.contains("was denied: NotOurNode: this node is not expected"), "{log}");
    assert!(!kubeconfig.exists(), "no kubeconfig without a certificate");
    drop(agent);
    assert_api_clean(&srv);
}

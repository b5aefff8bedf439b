//! The test API server driven by the real `kubectl` (found on PATH, or `$KUBECTL`): it must
//! print what it prints against a real server.

use std::path::Path;
use std::time::Duration;

use rkubelet_test_apiserver::{Options, TestApiServer, User};
use serde_json::json;

async fn kubectl(kc: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .kill_on_drop(true);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("kubectl ({bin}) is required for these tests: {e}"));
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl timed out")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn columns(line: &str) -> Vec<String> {
    // Columns are separated by at least two spaces or one space after a full cell; split on
    // runs of 2+ spaces which is what kubectl's tabwriter produces between cells.
    line.split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

async fn setup() -> (TestApiServer, tempfile::TempDir, std::path::PathBuf) {
    let srv = TestApiServer::start(Options::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("admin.conf");
    srv.write_kubeconfig(&kc, &User::Admin).unwrap();
    (srv, dir, kc)
}

#[tokio::test]
async fn kubectl_get_pods_wide_and_nodes() {
    let (srv, _d, kc) = setup().await;
    srv.create(
        "nodes",
        None,
        json!({"metadata": {"name": "node-1", "labels": {"node-role.kubernetes.io/worker": ""}},
               "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": "10.244.99.1"}],
                          "nodeInfo": {"kubeletVersion": "v1.36.2", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.6.20",
                                       "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}}),
    )
    .unwrap();
    let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
    let mut p = srv.create_pod_on_node("default", pod, "node-1").unwrap();
    p["status"]["phase"] = json!("Running");
    p["status"]["podIP"] = json!("10.244.99.6");
    p["status"]["podIPs"] = json!([{"ip": "10.244.99.6"}]);
    p["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "Ready", "status": "True"}));
    p["status"]["containerStatuses"] = json!([{"name": "c", "ready": true, "restartCount": 2, "image": "busybox:1.36", "imageID": "",
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": chrono_now()}}}]);
    srv.apply(p).unwrap();
    let crash = json!({"metadata": {"name": "crash"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
    let mut c = srv.create_pod_on_node("default", crash, "node-1").unwrap();
    c["status"]["phase"] = json!("Running");
    c["status"]["containerStatuses"] = json!([{"name": "c", "ready": false, "restartCount": 0, "image": "busybox:1.36", "imageID": "",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}, "lastState": {}}]);
    srv.apply(c).unwrap();

    let (ok, out, err) = kubectl(&kc, &["get", "pods", "-o", "wide"], None).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        columns(lines[0]),
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ],
        "{out}"
    );
    let crash_row = columns(lines.iter().find(|l| l.starts_with("crash")).unwrap());
    assert_eq!(
        &crash_row[..4],
        ["crash", "0/1", "CrashLoopBackOff", "0"],
        "{out}"
    );
    let web = columns(lines.iter().find(|l| l.starts_with("web")).unwrap());
    assert_eq!(&web[..3], ["web", "1/1", "Running"], "{out}");
    assert!(
        web[3].starts_with("2 (") && web[3].ends_with(" ago)"),
        "{out}"
    );
    assert_eq!(
        &web[5..],
        ["10.244.99.6", "node-1", "<none>", "<none>"],
        "{out}"
    );
    // Without -o wide, the priority-1 columns are hidden.
    let (_, out, _) = kubectl(&kc, &["get", "pods"], None).await;
    assert_eq!(
        columns(out.lines().next().unwrap()),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );

    let (ok, out, err) = kubectl(&kc, &["get", "nodes", "-o", "wide"], None).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        columns(lines[0]),
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ]
    );
    let n = columns(lines[1]);
    assert_eq!(&n[..3], ["node-1", "Ready", "worker"]);
    assert_eq!(
        &n[4..],
        [
            "v1.36.2",
            "10.244.99.1",
            "<none>",
            "Debian GNU/Linux 12 (bookworm)",
            "6.1.0",
            "containerd://1.6.20"
        ]
    );
    // Short names resolve through discovery.
    let (ok, out, _) = kubectl(
        &kc,
        &["get", "po", "web", "-o", "jsonpath={.status.podIP}"],
        None,
    )
    .await;
    assert!(ok);
    assert_eq!(out, "10.244.99.6");
}

fn chrono_now() -> String {
    // A minute ago, as a metav1.Time.
    (chrono::Utc::now() - chrono::Duration::seconds(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
async fn kubectl_create_describe_delete_and_events() {
    let (srv, _d, kc) = setup().await;
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fromfile\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
    let (ok, out, err) = kubectl(&kc, &["create", "-f", "-"], Some(manifest)).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "pod/fromfile created");
    assert_eq!(
        srv.get("pods", Some("default"), "fromfile").unwrap()["spec"]["containers"][0]
            ["imagePullPolicy"],
        "Always"
    );
    // Server-side field validation rejects unknown fields (kubectl asks for Strict).
    let typo = manifest
        .replace("fromfile", "typo")
        .replace("image: busybox", "imagee: busybox");
    let (ok, _, err) = kubectl(&kc, &["create", "-f", "-"], Some(&typo)).await;
    assert!(!ok);
    assert!(err.contains("unknown field"), "{err}");
    let (ok, out, err) = kubectl(&kc, &["describe", "pod", "fromfile"], None).await;
    assert!(ok, "{err}");
    assert!(out.contains("Status:") && out.contains("Pending"), "{out}");
    srv.create(
        "events",
        Some("default"),
        json!({"metadata": {"name": "fromfile.1"}, "involvedObject": {"kind": "Pod", "name": "fromfile", "namespace": "default"},
               "reason": "Pulled", "message": "Container image already present", "type": "Normal", "count": 1,
               "source": {"component": "kubelet", "host": "node-1"}, "firstTimestamp": chrono_now(), "lastTimestamp": chrono_now()}),
    )
    .unwrap();
    let (ok, out, err) = kubectl(&kc, &["get", "events"], None).await;
    assert!(ok, "{err}");
    assert_eq!(
        columns(out.lines().next().unwrap()),
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert!(
        out.contains("pod/fromfile") && out.contains("Pulled"),
        "{out}"
    );
    // kubectl delete waits (by watching) until the unbound pod is gone.
    let (ok, out, err) = kubectl(&kc, &["delete", "pod", "fromfile"], None).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "pod \"fromfile\" deleted");
    assert!(srv.get("pods", Some("default"), "fromfile").is_none());
    let (ok, _, err) = kubectl(&kc, &["get", "pod", "fromfile"], None).await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    assert!(srv.violations().is_empty(), "{:?}", srv.violations());
}

#[tokio::test]
async fn kubectl_sees_csr_approval_and_signing() {
    use base64::Engine;
    let srv = TestApiServer::start(Options {
        auto_approve_csrs: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("admin.conf");
    srv.write_kubeconfig(&kc, &User::Admin).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:n1");
    params.subject_alt_names = vec![rcgen::SanType::IpAddress("10.0.0.1".parse().unwrap())];
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    srv.create(
        "csr",
        None,
        json!({"metadata": {"name": "serving-1"}, "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
               "signerName": "kubernetes.io/kubelet-serving", "usages": ["digital signature", "server auth"]}}),
    )
    .unwrap();
    let (ok, out, _) = kubectl(&kc, &["get", "csr"], None).await;
    assert!(ok);
    assert!(out.contains("Pending"), "{out}");
    // `kubectl certificate approve` sends a protobuf body, which this server does not
    // decode; approve through the same /approval subresource with JSON instead.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kcfg = kube::config::Kubeconfig::from_yaml(&srv.kubeconfig(&User::Admin).unwrap()).unwrap();
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kcfg, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    let csrs: kube::Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        kube::Api::all(client);
    let mut cur = csrs.get("serving-1").await.unwrap();
    cur.status.get_or_insert_with(Default::default).conditions = Some(vec![
        k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some("KubectlApprove".into()),
            message: Some("This CSR was approved by kubectl certificate approve.".into()),
            ..Default::default()
        },
    ]);
    csrs.replace_subresource("approval", "serving-1", &Default::default(), &cur)
        .await
        .unwrap();
    let csr = srv.get("csr", None, "serving-1").unwrap();
    assert!(csr.pointer("/status/certificate").is_some(), "{csr}");
    let (_, out, _) = kubectl(&kc, &["get", "csr"], None).await;
    assert!(out.contains("Approved,Issued"), "{out}");
}

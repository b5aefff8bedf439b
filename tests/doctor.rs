//! `rkubelet doctor` against a real node set-up: real containerd, runc, CNI
//! plugins, a running agent with pods.
//!
//! * d1: on the healthy test node every check is OK and the exit code is 0
//!   (text and `-o json`); then one problem at a time, each with the agent
//!   still running: containerd stopped (its socket left with nobody listening),
//!   a CNI config naming a plugin that is not installed, an expired client
//!   certificate. Each run exits 2 and the failed check names the problem.
//! * d2: `--pod` explains a crash-looping pod with its actual exit code and
//!   last output, and a pod whose image does not exist with the registry's
//!   error as the agent recorded it.
//! * d3: an agent started with upstream settings rkubelet does not implement
//!   (`--node-status-max-images=90`, `qosReserved` in its config file) and one it
//!   does at its value (`--cpu-manager-policy=none`): the `settings` check is the
//!   one WARN (exit 1), naming the first two with the fix; the config file's field
//!   v1beta1 does not have is a `config` WARN; without them, both are OK.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{agent_binary, compat_config, Agent, BUSYBOX, NODE};
use serde_json::Value;

/// `rkubelet <agent flags> doctor <args>`: (exit code, stdout).
fn doctor(agent: &Agent, extra_flags: &[&str], args: &[&str]) -> (i32, String) {
    let state = agent.state_dir();
    let out = Command::new(agent_binary())
        .args(["--root-dir", state.to_str().unwrap(), "--cni-conf-dir", agent.cni_conf.to_str().unwrap(), "--hostname-override", NODE])
        .args(["--pod-manifest-path", agent.manifests.to_str().unwrap()])
        .args(extra_flags)
        .arg("doctor")
        .args(args)
        .output()
        .expect("run rkubelet doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.stderr.is_empty() || !String::from_utf8_lossy(&out.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

fn report(agent: &Agent, extra_flags: &[&str]) -> (i32, Value) {
    let (code, out) = doctor(agent, extra_flags, &["-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("doctor -o json is not JSON ({e}):\n{out}"));
    assert_eq!(v["exit_code"].as_i64(), Some(code as i64), "{v}");
    (code, v)
}

fn failed(v: &Value) -> Vec<(String, String)> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "FAIL")
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["message"].as_str().unwrap().to_string()))
        .collect()
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name} check in {v}"))
}

/// A kubeconfig whose client certificate expired yesterday, for an API server
/// address nobody listens on.
fn expired_kubeconfig(dir: &Path) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{NODE}"));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("client.crt"), dir.join("client.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let kc = dir.join("kubelet.conf");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\ncontexts:\n- name: n\n  context: {{cluster: c, user: u}}\ncurrent-context: n\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            c.display(),
            k.display()
        ),
    )
    .unwrap();
    kc
}

#[test]
fn d1_healthy_node_is_ok_and_each_problem_is_named() {
    let agent = Agent::new("d1");
    agent.write_manifest(
        "web.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [\"sleep\", \"3600\"]\n"),
    );
    agent.wait_pod("web", Duration::from_secs(60), "running", |p| (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(()));
    // The agent answers /healthz once it serves.
    agent.wait_until(Duration::from_secs(20), "healthz", || doctor(&agent, &[], &["-o", "json"]).1.contains("/healthz: ok"));

    let (code, v) = report(&agent, &[]);
    let not_ok: Vec<&Value> = v["checks"].as_array().unwrap().iter().filter(|c| c["status"] != "OK").collect();
    assert!(not_ok.is_empty() && code == 0, "a healthy node must pass (exit {code}): {not_ok:?}");
    assert_eq!(v["node"], NODE);
    assert_eq!(v["config_from"], "flags");
    for name in ["containerd", "runc", "cni", "agent", "api", "swap", "cgroup-driver", "cgroups", "capabilities", "disk"] {
        check(&v, name);
    }
    assert!(check(&v, "containerd")["message"].as_str().unwrap().starts_with("containerd 1."), "{v}");
    let (code, text) = doctor(&agent, &[], &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 failed, 0 warnings") && text.contains("OK    containerd"), "{text}");

    // containerd stopped: its socket file stays, nobody listens.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("containerd.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let endpoint = format!("unix://{}", sock.display());
    let (code, v) = report(&agent, &["--container-runtime-endpoint", &endpoint]);
    assert_eq!(code, 2, "{v}");
    let f = failed(&v);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, "containerd");
    assert!(f[0].1.contains(sock.to_str().unwrap()), "{f:?}");
    assert!(check(&v, "containerd")["fix"].as_str().unwrap().contains("systemctl"), "{v}");

    // A CNI config naming a plugin that is not installed.
    let conf = dir.path().join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("10-bad.conflist"), r#"{"cniVersion":"1.0.0","name":"bad","plugins":[{"type":"no-such-plugin"}]}"#).unwrap();
    let (code, v) = report(&agent, &["--cni-conf-dir", conf.to_str().unwrap()]);
    assert_eq!(code, 2, "{v}");
    let f = failed(&v);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, "cni");
    assert!(f[0].1.contains("no-such-plugin"), "{f:?}");

    // An expired client certificate (the API server is then unreachable too).
    let kc = expired_kubeconfig(dir.path());
    let (code, v) = report(&agent, &["--kubeconfig", kc.to_str().unwrap()]);
    assert_eq!(code, 2, "{v}");
    let f = failed(&v);
    assert!(f.iter().all(|(n, _)| n == "certificate" || n == "api"), "{f:?}");
    let cert = f.iter().find(|(n, _)| n == "certificate").unwrap_or_else(|| panic!("no certificate failure: {f:?}"));
    assert!(cert.1.contains("expired at"), "{cert:?}");

    agent.remove_all_pods();
}

#[test]
fn d2_pod_explains_a_crash_loop_and_a_missing_image() {
    let agent = Agent::new("d2");
    agent.write_manifest(
        "crash.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: crash\nspec:\n  containers:\n  - name: app\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"echo cannot open /etc/app.conf; exit 3\"]\n"
        ),
    );
    agent.write_manifest(
        "noimg.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: noimg\nspec:\n  containers:\n  - name: app\n    image: 127.0.0.1:5000/test/nope:1\n",
    );
    let waiting = |p: &k8s_openapi::api::core::v1::Pod| {
        p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.as_ref()?.reason.clone()
    };
    agent.wait_pod("crash", Duration::from_secs(90), "CrashLoopBackOff", |p| (waiting(p).as_deref() == Some("CrashLoopBackOff")).then_some(()));
    agent.wait_pod("noimg", Duration::from_secs(90), "ImagePullBackOff", |p| (waiting(p).as_deref() == Some("ImagePullBackOff")).then_some(()));

    let crash = format!("default/crash-{NODE}");
    let (code, text) = doctor(&agent, &[], &["--pod", &crash]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("CrashLoopBackOff") && text.contains("exit code 3"), "{text}");
    assert!(text.contains("cannot open /etc/app.conf"), "the crashed instance's last output: {text}");
    assert!(text.contains(&format!("kubectl logs -n default crash-{NODE} -c app --previous")), "{text}");

    // The registry's answer, exactly as the agent recorded it in its Failed event.
    let pull_error = agent
        .events()
        .into_iter()
        .rev()
        .find(|e| e.pod == format!("noimg-{NODE}") && e.message.starts_with("Failed to pull image"))
        .map(|e| e.message)
        .expect("a pull error event");
    let (code, out) = doctor(&agent, &[], &["--pod", &format!("default/noimg-{NODE}"), "-o", "json"]);
    assert_eq!(code, 2, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let summary = v["pod"]["summary"].as_str().unwrap();
    assert!(summary.contains("ImagePullBackOff") && summary.contains(&pull_error), "summary {summary:?} lacks {pull_error:?}");
    assert!(v["pod"]["fix"].as_str().unwrap().contains("image name and tag"), "{v}");

    // A pod this node does not have.
    let (code, text) = doctor(&agent, &[], &["--pod", "default/elsewhere"]);
    assert_eq!(code, 2);
    assert!(text.contains("has no pod default/elsewhere"), "{text}");

    agent.remove_all_pods();
}

#[test]
fn d3_settings_rkubelet_does_not_implement_are_a_warning_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = compat_config(dir.path());
    let flags = ["--node-status-max-images=90", "--cpu-manager-policy=none", "--config", config.to_str().unwrap()];
    let agent = Agent::with_options("d3", &[], &flags);
    agent.wait_until(Duration::from_secs(30), "healthz", || doctor(&agent, &flags, &["-o", "json"]).1.contains("/healthz: ok"));

    let (code, v) = report(&agent, &flags);
    let not_ok: Vec<(&str, &str)> =
        v["checks"].as_array().unwrap().iter().filter(|c| c["status"] != "OK").map(|c| (c["name"].as_str().unwrap(), c["status"].as_str().unwrap())).collect();
    assert_eq!((code, not_ok), (1, vec![("config", "WARN"), ("settings", "WARN")]), "{v}");
    let settings = check(&v, "settings");
    let message = settings["message"].as_str().unwrap();
    assert!(message.contains("--node-status-max-images") && message.contains("qosReserved"), "{settings}");
    assert!(!message.contains("cpu-manager-policy"), "none is what rkubelet does: {settings}");
    assert_eq!(settings["fix"], "not implemented by rkubelet yet; remove it or expect upstream behaviour to differ");
    assert!(check(&v, "config")["message"].as_str().unwrap().contains("someFutureField"), "{v}");
    let (_, text) = doctor(&agent, &flags, &[]);
    assert!(text.contains("WARN  settings") && text.contains("fix: not implemented by rkubelet yet"), "{text}");

    // The same agent checked without those settings: nothing to report.
    let (code, v) = report(&agent, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(check(&v, "settings")["status"], "OK");
}

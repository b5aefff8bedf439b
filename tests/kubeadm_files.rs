//! The agent started the way `kubeadm join` v1.36 leaves a node (issue 8): the golden
//! files a real `kubeadm join` wrote (`tests/data/kubeadm-1.36/`: `config.yaml`,
//! `kubeadm-flags.env`, `instance-config.yaml`) are laid out in a temporary
//! `/etc/kubernetes` + `/var/lib/kubelet`, with their paths rewritten into it and the
//! test's containerd socket, next to a bootstrap kubeconfig from the test API server.
//! The agent is then started exactly as kubeadm's systemd drop-in does:
//! `kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS`,
//! with `KUBELET_KUBEADM_ARGS` read from the env file and `KUBELET_EXTRA_ARGS` holding
//! only what this test machine needs (its own root dir, CNI network and pause image).
//! It must do what kubeadm waits for: answer `ok` on `127.0.0.1:10248/healthz` within
//! seconds, complete the TLS bootstrap (`kubelet.conf` appears; the test then deletes
//! the bootstrap kubeconfig, as kubeadm join does), register the node; and apply the
//! config file's settings. Restarted afterwards (`systemctl restart kubelet`), it runs
//! on `kubelet.conf` alone without a new CSR.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::api::assert_api_clean;
use common::{BUSYBOX, NODE, PAUSE};
use rkubelet::reset::mounts_under;
use rkubelet_test_apiserver::{Options, TestApiServer, User};
use serde_json::Value;

const GOLDEN_CONFIG: &str = include_str!("data/kubeadm-1.36/config.yaml");
const GOLDEN_FLAGS_ENV: &str = include_str!("data/kubeadm-1.36/kubeadm-flags.env");
const GOLDEN_INSTANCE_CONFIG: &str = include_str!("data/kubeadm-1.36/instance-config.yaml");

/// A node laid out like kubeadm's: `<root>/etc/kubernetes` and `<root>/var/lib/kubelet`.
struct KubeadmNode {
    root: PathBuf,
    etc: PathBuf,
    var_lib: PathBuf,
    manifests: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

/// Values of a systemd EnvironmentFile (`KEY="value"` lines).
fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

impl KubeadmNode {
    fn new(name: &str, srv: &TestApiServer) -> KubeadmNode {
        let root = PathBuf::from("/var/lib/rkubelet-test/agents").join(name);
        let _ = std::fs::remove_dir_all(&root);
        let etc = root.join("etc/kubernetes");
        let var_lib = root.join("var/lib/kubelet");
        let manifests = etc.join("manifests");
        for d in [&manifests, &etc.join("pki"), &var_lib, &root.join("net.d")] {
            std::fs::create_dir_all(d).unwrap();
        }
        // What kubeadm writes before starting the kubelet.
        std::fs::write(etc.join("pki/ca.crt"), srv.ca_pem()).unwrap();
        srv.write_kubeconfig(&etc.join("bootstrap-kubelet.conf"), &User::BootstrapToken).unwrap();
        // The cluster's KubeletConfiguration as kubeadm wrote it, its paths moved into the
        // test root, plus settings a cluster may carry (to see them take effect).
        let config = GOLDEN_CONFIG
            .replace("/etc/kubernetes/", &format!("{}/", etc.display()))
            .replace("unix:///var/run/containerd/containerd.sock", "unix:///run/containerd/containerd.sock")
            .replace("fileCheckFrequency: 0s", "fileCheckFrequency: 2s")
            + "maxPods: 33\nnodeLeaseDurationSeconds: 12\nevictionHard:\n  memory.available: 300Mi\n  nodefs.available: 5%\n";
        std::fs::write(var_lib.join("config.yaml"), config).unwrap();
        std::fs::write(var_lib.join("kubeadm-flags.env"), GOLDEN_FLAGS_ENV.replace("<node>", NODE)).unwrap();
        std::fs::write(
            var_lib.join("instance-config.yaml"),
            GOLDEN_INSTANCE_CONFIG.replace("unix:///var/run/containerd/containerd.sock", "unix:///run/containerd/containerd.sock"),
        )
        .unwrap();
        // The test network (as the common harness's).
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"rktest","plugins":[
 {{"type":"bridge","bridge":"{}","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.244.77.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}},
 {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
            common::BRIDGE,
            root.join("ipam").display()
        );
        std::fs::write(root.join("net.d/10-test.conflist"), conf).unwrap();

        // The drop-in's command line.
        let env = parse_env_file(&std::fs::read_to_string(var_lib.join("kubeadm-flags.env")).unwrap());
        let kubeadm_args = env.iter().find(|(k, _)| k == "KUBELET_KUBEADM_ARGS").map(|(_, v)| v.clone()).expect("KUBELET_KUBEADM_ARGS");
        let extra_args = format!(
            "--root-dir={} --cni-conf-dir={} --pod-infra-container-image={PAUSE} --v=2",
            var_lib.display(),
            root.join("net.d").display()
        );
        let mut args = vec![
            format!("--bootstrap-kubeconfig={}", etc.join("bootstrap-kubelet.conf").display()),
            format!("--kubeconfig={}", etc.join("kubelet.conf").display()),
            format!("--config={}", var_lib.join("config.yaml").display()),
        ];
        args.extend(kubeadm_args.split_whitespace().map(String::from));
        args.extend(extra_args.split_whitespace().map(String::from));
        let log = root.join("agent.log");
        let mut n = KubeadmNode { root, etc, var_lib, manifests, log, args, child: None };
        n.start();
        n
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rkubelet")).args(&self.args).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("start rkubelet");
        self.child = Some(child);
    }

    fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn wait_for<T>(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(v) = f() {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out after {timeout:?} waiting for {what}\nagent log:\n{}", self.log_tail(60));
    }

    fn pods_dir(&self) -> PathBuf {
        self.var_lib.join("pods")
    }
}

impl Drop for KubeadmNode {
    fn drop(&mut self) {
        // Remove the static pods and let the agent clean them up, then stop it.
        if let Ok(rd) = std::fs::read_dir(&self.manifests) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let running = self.child.as_mut().map(|c| c.try_wait().ok().flatten().is_none()).unwrap_or(false);
        if running {
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline && std::fs::read_dir(self.pods_dir()).map(|mut d| d.next().is_some()).unwrap_or(false) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The body of `GET http://<addr>/healthz` (plain HTTP, as kubeadm checks it).
fn healthz(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.split_whitespace().nth(1).filter(|c| *c == "200")?;
    Some(body.trim().to_string())
}

fn quantity_ki(v: &Value) -> i64 {
    v.as_str().and_then(|s| s.strip_suffix("Ki")).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a Ki quantity: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_the_agent_joins_with_the_files_kubeadm_writes() {
    let srv = TestApiServer::start(Options::default()).await.expect("test API server");
    let node = tokio::task::block_in_place(|| KubeadmNode::new("k1-kubeadm", &srv));
    let kubelet_conf = node.etc.join("kubelet.conf");
    let bootstrap_conf = node.etc.join("bootstrap-kubelet.conf");
    tokio::task::block_in_place(|| {
        // kubeadm's first wait: the kubelet's healthz (healthzBindAddress:healthzPort of config.yaml).
        let started = Instant::now();
        node.wait_for(Duration::from_secs(20), "healthz ok on 127.0.0.1:10248", || (healthz("127.0.0.1:10248").as_deref() == Some("ok")).then_some(()));
        assert!(started.elapsed() < Duration::from_secs(20));
        // kubeadm waits for the TLS bootstrap: kubelet.conf appears, pointing at the
        // certificate store under the kubelet's root dir; then it deletes the bootstrap kubeconfig.
        node.wait_for(Duration::from_secs(60), "kubelet.conf", || kubelet_conf.exists().then_some(()));
        let kc: Value = serde_yaml::from_str(&std::fs::read_to_string(&kubelet_conf).unwrap()).unwrap();
        let current = node.var_lib.join("pki/kubelet-client-current.pem");
        assert_eq!(kc["users"][0]["user"]["client-certificate"], current.to_str().unwrap());
        assert!(std::fs::symlink_metadata(&current).unwrap().file_type().is_symlink());
        std::fs::remove_file(&bootstrap_conf).unwrap();
        let csr = srv.list("certificatesigningrequests", None).into_iter().next().expect("a CSR");
        assert_eq!(csr["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(csr["spec"]["signerName"], "kubernetes.io/kube-apiserver-client-kubelet");

        // Registered under --hostname-override from kubeadm-flags.env, as the node itself.
        let n = node.wait_for(Duration::from_secs(30), "the Node with its status", || {
            srv.get("nodes", None, NODE).filter(|n| n["status"]["capacity"]["pods"].is_string())
        });
        let create = srv.requests().into_iter().find(|r| r.verb == "create" && r.resource == "nodes").unwrap();
        assert_eq!(create.user, format!("system:node:{NODE}"));
        // maxPods and evictionHard from the config file.
        assert_eq!(n["status"]["capacity"]["pods"], "33");
        let (cap, alloc) = (quantity_ki(&n["status"]["capacity"]["memory"]), quantity_ki(&n["status"]["allocatable"]["memory"]));
        assert_eq!(cap - alloc, 300 * 1024, "allocatable = capacity - evictionHard memory.available (300Mi)");
        // nodeLeaseDurationSeconds.
        let lease = node.wait_for(Duration::from_secs(30), "the Lease", || srv.get("leases", Some("kube-node-lease"), NODE));
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 12);

        // staticPodPath: a manifest there runs as a static pod.
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: kubeadm-static, namespace: kube-system}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        );
        std::fs::write(node.manifests.join("kubeadm-static.yaml"), manifest).unwrap();
        let full = format!("kubeadm-static-{NODE}");
        node.wait_for(Duration::from_secs(60), "the static pod Running", || {
            rkubelet::pod::store::load_all(&node.var_lib).into_iter().find(|p| {
                p.metadata.name.as_deref() == Some(full.as_str()) && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
        });
        let mirror = node.wait_for(Duration::from_secs(30), "the mirror pod", || srv.get("pods", Some("kube-system"), &full));
        assert!(mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string(), "{mirror}");

        // rotateCertificates: true in the file starts the certificate manager. Every field
        // kubeadm writes is a v1beta1 field, and those rkubelet does not implement are at
        // values it matches (failCgroupV1: false, logging, 0s durations...): no warning,
        // no lenient decoding.
        let log = std::fs::read_to_string(&node.log).unwrap();
        assert!(log.contains("waiting for the next client certificate rotation"), "{}", node.log_tail(40));
        assert!(!log.contains("does not implement") && !log.contains("lenient decoding"), "{}", node.log_tail(40));
        assert!(!log.contains("panicked"));
    });
    // kubeadm deleted the bootstrap kubeconfig; a later restart (systemctl restart kubelet)
    // runs on kubelet.conf alone and the node keeps heartbeating.
    let mut node = node;
    tokio::task::block_in_place(|| {
        let renew = || srv.get("leases", Some("kube-node-lease"), NODE).and_then(|l| l["spec"]["renewTime"].as_str().map(String::from));
        if let Some(mut c) = node.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
        assert!(!bootstrap_conf.exists());
        let before = renew().expect("a lease");
        let csrs = srv.list("certificatesigningrequests", None).len();
        node.start();
        node.wait_for(Duration::from_secs(20), "healthz after the restart", || (healthz("127.0.0.1:10248").as_deref() == Some("ok")).then_some(()));
        node.wait_for(Duration::from_secs(30), "the lease renewed after the restart", || renew().filter(|r| *r != before));
        assert_eq!(srv.list("certificatesigningrequests", None).len(), csrs, "no new bootstrap: the stored certificate is reused");
    });
    let root = node.root.clone();
    tokio::task::block_in_place(|| drop(node));
    assert!(
        std::fs::read_dir(root.join("var/lib/kubelet/pods")).map(|mut d| d.next().is_none()).unwrap_or(true),
        "static pods cleaned up"
    );
    assert_api_clean(&srv);
}

#[test]
fn k2_a_config_file_with_a_wrongly_typed_field_is_exit_64_naming_the_field() {
    let dir = PathBuf::from("/var/lib/rkubelet-test/agents/k2-config");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, GOLDEN_CONFIG.to_string() + "maxPods: plenty\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rkubelet"))
        .args(["--hostname-override", NODE, "--root-dir", dir.join("root").to_str().unwrap(), "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("invalid configuration") && stderr.contains("field maxPods:") && stderr.contains(config.to_str().unwrap()), "{stderr}");
}

/// PIDs whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle)).unwrap_or(false))
        .collect()
}

/// `kubeadm reset` (issue 6) leaves nothing of rkubelet's running or mounted. The
/// steps kubeadm v1.36's cleanup-node phase takes on this node are done here by
/// hand, in its order: stop the kubelet unit (KillMode=process: pods survive),
/// unmount what is mounted under /var/lib/kubelet, remove pods through CRI (which
/// sees none of rkubelet's), empty /var/lib/kubelet, /etc/kubernetes/manifests and
/// pki, delete the kubeconfigs. Deleting kubelet.conf is the change
/// rkubelet-reset.path watches; its service runs `rkubelet reset --if-stopped`
/// (the ExecStart line is taken from the unit file). Afterwards no container,
/// task, mount, network namespace, cgroup or logger process of the pod is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3_after_kubeadm_reset_nothing_of_rkubelet_runs_or_is_mounted() {
    let srv = TestApiServer::start(Options::default()).await.expect("test API server");
    let mut node = tokio::task::block_in_place(|| KubeadmNode::new("k3-reset", &srv));
    tokio::task::block_in_place(|| {
        let kubelet_conf = node.etc.join("kubelet.conf");
        node.wait_for(Duration::from_secs(60), "kubelet.conf", || kubelet_conf.exists().then_some(()));
        std::fs::remove_file(node.etc.join("bootstrap-kubelet.conf")).unwrap();
        node.wait_for(Duration::from_secs(30), "the Node", || srv.get("nodes", None, NODE));
        // A pod with a memory-backed volume (a tmpfs mount), a stdin container (its
        // own logger process) and a plain one.
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: doomed, namespace: kube-system}}\nspec:\n  terminationGracePeriodSeconds: 30\n  volumes:\n  - name: scratch\n    emptyDir: {{medium: Memory}}\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n  - name: reader\n    image: {BUSYBOX}\n    stdin: true\n    command: [cat]\n"
        );
        std::fs::write(node.manifests.join("doomed.yaml"), manifest).unwrap();
        let full = format!("doomed-{NODE}");
        let pod = node.wait_for(Duration::from_secs(60), "the pod Running", || {
            rkubelet::pod::store::load_all(&node.var_lib).into_iter().find(|p| p.metadata.name.as_deref() == Some(full.as_str()) && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        });
        let uid = pod.metadata.uid.clone().unwrap();
        let containers = common::containerd_containers(&uid);
        assert_eq!(containers.len(), 3, "sandbox and two containers: {containers:?}");
        let netns: PathBuf = containers
            .iter()
            .find_map(|c| common::ctr(&["containers", "info", c]).lines().find_map(|l| l.trim().strip_prefix("\"io.rkubelet.netns\": \"").map(|v| PathBuf::from(v.trim_end_matches(['"', ','])))))
            .expect("the sandbox's netns label");
        assert!(netns.exists());
        assert!(!mounts_under(&node.root).is_empty(), "the pod has mounts under the root dir");
        assert!(!pids_with(&uid).is_empty(), "the stdin container's logger runs");
        assert!(containers.iter().any(|c| !pids_with(&format!("-id {c}")).is_empty()), "the pod's shim runs");
        let cgroup_dirs = || -> Vec<PathBuf> {
            ["/sys/fs/cgroup/memory/kubepods", "/sys/fs/cgroup/cpu,cpuacct/kubepods", "/sys/fs/cgroup/pids/kubepods", "/sys/fs/cgroup/unified/kubepods"]
                .iter()
                .flat_map(|b| ["", "burstable/", "besteffort/"].map(|q| PathBuf::from(format!("{b}/{q}pod{uid}"))))
                .filter(|p| p.exists())
                .collect()
        };
        assert!(!cgroup_dirs().is_empty(), "the pod has a cgroup");

        // The reset unit's command, with the agent's extra flags (a person's
        // /etc/default/kubelet: here the test's root dir and network).
        let unit = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/rkubelet-reset.service")).unwrap();
        let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
        let extra: Vec<String> = node.args.iter().filter(|a| a.starts_with("--root-dir") || a.starts_with("--cni-conf-dir")).cloned().collect();
        let words: Vec<String> = exec.split_whitespace().skip(1).flat_map(|w| if w == "$KUBELET_EXTRA_ARGS" { extra.clone() } else { vec![w.to_string()] }).collect();
        let reset = || Command::new(env!("CARGO_BIN_EXE_rkubelet")).args(&words).output().unwrap();

        // While the agent runs, the unit does nothing.
        let out = reset();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("is running"), "{out:?}");
        assert_eq!(common::containerd_containers(&uid).len(), 3, "nothing was removed while the agent runs");

        // kubeadm reset, cleanup-node phase.
        if let Some(mut c) = node.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
        assert_eq!(common::containerd_containers(&uid).len(), 3, "KillMode=process: the pod outlives the stopped unit");
        let mut under: Vec<PathBuf> = mounts_under(&node.var_lib);
        under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in under {
            let _ = nix::mount::umount(&m);
        }
        for d in [&node.manifests, &node.var_lib, &node.etc.join("pki")] {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                let _ = if e.path().is_dir() { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
            }
        }
        std::fs::remove_file(&kubelet_conf).unwrap();

        // rkubelet-reset.path saw kubelet.conf go; the service's condition holds.
        assert!(!kubelet_conf.exists());
        let out = reset();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "rkubelet reset: {out:?}");
        assert!(stdout.contains("removed 1 pod(s)") && stdout.contains("nothing of rkubelet's is left running or mounted"), "{stdout}");
        assert!(common::containerd_containers(&uid).is_empty(), "containers left: {:?}", common::containerd_containers(&uid));
        assert!(mounts_under(&node.root).is_empty(), "mounts left: {:?}", mounts_under(&node.root));
        assert!(!netns.exists() && !mounts_under(&netns).contains(&netns), "netns {} left", netns.display());
        assert!(cgroup_dirs().is_empty(), "cgroups left: {:?}", cgroup_dirs());
        assert!(pids_with(&uid).is_empty(), "logger processes of the pod left: {:?}", pids_with(&uid));
        for c in &containers {
            assert!(pids_with(&format!("-id {c}")).is_empty(), "the shim of {c} is left");
        }
        assert!(std::fs::read_dir("/var/log/pods").unwrap().flatten().all(|e| !e.file_name().to_string_lossy().ends_with(&uid)), "the pod's logs are gone");
    });
    drop(node);
    assert_api_clean(&srv);
}

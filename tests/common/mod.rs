//! Test harness: runs the real `rkubelet` binary against the real containerd, runc
//! and CNI plugins, with its own root dir, manifest dir, CNI config (bridge `rkt0`,
//! 10.244.77.0/24, IPAM state under the root) and node name. The guard stops the
//! pods (by removing their manifests) and the agent when dropped.
//!
//! Prerequisites (started by `scripts/test.sh`): containerd on its default socket,
//! images `localhost/test/busybox:1.0` and `localhost/rkubelet/pause:1.0` in the
//! `k8s.io` namespace, and a registry on 127.0.0.1:5000. Missing ones fail tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

pub mod api;
pub mod registry;
pub mod small;

pub const BUSYBOX: &str = "localhost/test/busybox:1.0";
pub const PAUSE: &str = "localhost/rkubelet/pause:1.0";
/// busybox with `USER nobody` (scripts/test-images.sh).
pub const NOBODY_IMAGE: &str = "localhost/test/nobody:1.0";
pub const NODE: &str = "rk-test";
pub const BRIDGE: &str = "rkt0";

/// Agents bind the node's fixed ports (10250, 10248) and share the test bridge
/// and node name: one test process at a time may run them (test binaries and
/// worktrees run side by side). Held while any Agent of this process lives.
struct HostLock;

static HOST_LOCK: std::sync::Mutex<(usize, Option<nix::fcntl::Flock<std::fs::File>>)> = std::sync::Mutex::new((0, None));

impl HostLock {
    fn acquire() -> HostLock {
        let mut g = HOST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == 0 {
            std::fs::create_dir_all("/var/lib/rkubelet-test").unwrap();
            let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open("/var/lib/rkubelet-test/agents.lock").unwrap();
            // Blocks while another test process runs agents.
            g.1 = Some(nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).expect("flock"));
        }
        g.0 += 1;
        HostLock
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let mut g = HOST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if g.0 == 0 {
            g.1 = None;
        }
    }
}

pub struct Agent {
    pub root: PathBuf,
    pub manifests: PathBuf,
    pub cni_conf: PathBuf,
    pub ipam_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// Last field: released after Drop stopped the pods.
    _host: HostLock,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn ctr(args: &[&str]) -> String {
    let mut a = vec!["-n", "k8s.io"];
    a.extend_from_slice(args);
    run("ctr", &a)
}

/// The agent binary: `RKUBELET_BIN` when set (worktrees sharing one target dir
/// overwrite each other's `target/debug/rkubelet`; point it at `deps/rkubelet-<hash>`),
/// else the one cargo built for this test.
pub fn agent_binary() -> PathBuf {
    std::env::var_os("RKUBELET_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rkubelet")))
}

impl Agent {
    /// A fresh agent environment named `name` (its directories are wiped first).
    pub fn new(name: &str) -> Agent {
        Self::with_env(name, &[])
    }

    /// Like [`Agent::new`], with extra environment for the agent process.
    pub fn with_env(name: &str, env: &[(&str, &str)]) -> Agent {
        Self::with_options(name, env, &[])
    }

    /// Like [`Agent::new`], with extra environment and extra flags.
    pub fn with_options(name: &str, env: &[(&str, &str)], args: &[&str]) -> Agent {
        assert!(
            Command::new("ctr").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false),
            "containerd is not running (scripts/test.sh starts it)"
        );
        let images = ctr(&["images", "ls", "-q"]);
        assert!(images.contains(BUSYBOX) && images.contains(PAUSE), "test images missing (scripts/test-images.sh)");
        let host = HostLock::acquire();
        let root = PathBuf::from("/var/lib/rkubelet-test/agents").join(name);
        let _ = std::fs::remove_dir_all(&root);
        let manifests = root.join("manifests");
        let cni_conf = root.join("net.d");
        let ipam_dir = root.join("ipam");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::create_dir_all(&cni_conf).unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"rktest","plugins":[
 {{"type":"bridge","bridge":"{BRIDGE}","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.244.77.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}},
 {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
            ipam_dir.display()
        );
        std::fs::write(cni_conf.join("10-test.conflist"), conf).unwrap();
        let log = root.join("agent.log");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut a = Agent { root, manifests, cni_conf, ipam_dir, child: None, log, env, args, _host: host };
        a.start();
        a
    }

    /// Starts (or restarts) the agent process.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(agent_binary())
            .args([
                "--pod-manifest-path",
                self.manifests.to_str().unwrap(),
                "--root-dir",
                self.root.join("state").to_str().unwrap(),
                "--cni-conf-dir",
                self.cni_conf.to_str().unwrap(),
                "--pod-infra-container-image",
                PAUSE,
                "--hostname-override",
                NODE,
                "--file-check-frequency",
                "2s",
                // The host's disk and its containerd are shared with every test:
                // no image collection and no disk thresholds unless a test sets them.
                "--image-gc-high-threshold",
                "100",
                "--eviction-hard",
                "memory.available<100Mi",
                "-v",
                "2",
            ])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start rkubelet");
        self.child = Some(child);
    }

    /// Replaces the extra flags the next [`Agent::start`] passes.
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
    }

    /// `kill -9` of the agent (pods keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
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

    /// SIGTERM; true when the agent exited by itself within `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else { return true };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().map(|c| c.try_wait().ok().flatten().is_none()).unwrap_or(false)
    }

    /// The log file of a container instance, at upstream's path.
    pub fn container_log(&self, pod: &Pod, container: &str, attempt: u32) -> PathBuf {
        PathBuf::from(format!(
            "/var/log/pods/{}_{}_{}/{container}/{attempt}.log",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or(""),
            pod.metadata.uid.as_deref().unwrap_or("")
        ))
    }

    /// What a container wrote, as `kubectl logs` shows it (the file is in the CRI format).
    pub fn container_output(&self, pod: &Pod, container: &str, attempt: u32) -> String {
        let raw = std::fs::read(self.container_log(pod, container, attempt)).unwrap_or_default();
        String::from_utf8_lossy(&rkubelet::logs::render(&raw, &Default::default())).into_owned()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn write_manifest(&self, file: &str, yaml: &str) {
        // Write then rename, like a config-management tool would.
        let tmp = self.root.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests.join(file)).unwrap();
    }

    pub fn remove_manifest(&self, file: &str) {
        let _ = std::fs::remove_file(self.manifests.join(file));
    }

    pub fn pods(&self) -> Vec<Pod> {
        rkubelet::pod::store::load_all(&self.state_dir())
    }

    /// The pod whose name starts with `name-` (static pods get the node suffix).
    pub fn pod(&self, name: &str) -> Option<Pod> {
        let full = format!("{name}-{NODE}");
        self.pods().into_iter().find(|p| p.metadata.name.as_deref() == Some(full.as_str()))
    }

    /// Waits until `f` returns Some for the named pod, panicking with the agent log on timeout.
    pub fn wait_pod<T>(&self, name: &str, timeout: Duration, what: &str, mut f: impl FnMut(&Pod) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(p) = self.pod(name) {
                if let Some(v) = f(&p) {
                    return v;
                }
                last = Some(p);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out after {timeout:?} waiting for {name}: {what}\nlast status: {}\nagent log tail:\n{}",
            last.map(|p| serde_json::to_string_pretty(&p.status).unwrap()).unwrap_or_else(|| "<no pod>".into()),
            self.log_tail(60)
        );
    }

    pub fn wait_until(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out after {timeout:?} waiting for {what}\nagent log tail:\n{}", self.log_tail(60));
    }

    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn events(&self) -> Vec<rkubelet::events::PodEvent> {
        rkubelet::events::read_file(&self.state_dir().join("events.jsonl"))
    }

    /// Removes every manifest and waits (bounded) until the agent removed all pods.
    pub fn remove_all_pods(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.manifests) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let pods_dir = self.state_dir().join("pods");
        self.wait_until(Duration::from_secs(90), "all pods removed", || {
            std::fs::read_dir(&pods_dir).map(|mut d| d.next().is_none()).unwrap_or(true)
        });
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The agent removes the pods; start it again if a test stopped it.
        if !self.is_running() {
            self.start();
        }
        {
            if let Ok(rd) = std::fs::read_dir(&self.manifests) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let pods_dir = self.state_dir().join("pods");
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline && std::fs::read_dir(&pods_dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.stop();
    }
}

/// Container IDs in containerd that belong to the pod UID.
pub fn containerd_containers(uid: &str) -> Vec<String> {
    ctr(&["containers", "ls", "-q", &format!("labels.\"io.kubernetes.pod.uid\"=={uid}")])
        .lines()
        .map(String::from)
        .filter(|s| !s.is_empty())
        .collect()
}

/// HTTP GET over a plain TCP connection (pod IPs live on the test bridge).
pub fn http_get(ip: &str, port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().ok()?;
    assert!(ip.starts_with("10.244.77.") || ip.starts_with("127."), "tests only talk to their own pods");
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

pub fn netns_exists(path: &Path) -> bool {
    path.exists()
}

/// Polls `f` every 200 ms until it yields a value; panics after `timeout` with the
/// agent's log tail.
pub fn wait_for<T>(timeout: Duration, what: &str, agent: &Agent, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}\nagent log:\n{}", agent.log_tail(60));
}

/// Writes a KubeletConfiguration with upstream fields rkubelet does not implement
/// (`evictionSoft`, `evictionSoftGracePeriod`) and one v1beta1 does not have
/// (`someFutureField`) into `dir`; for the config compatibility tests.
pub fn compat_config(dir: &Path) -> PathBuf {
    let p = dir.join("config.yaml");
    std::fs::write(
        &p,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nqosReserved:\n  memory: 50%\ncontainerLogMaxWorkers: 4\nsomeFutureField: true\n",
    )
    .unwrap();
    p
}

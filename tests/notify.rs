//! The systemd notification protocol as a `Type=notify` unit with `WatchdogSec=`
//! sees it: a datagram socket bound by the test stands in for systemd's
//! `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` is what systemd sets for WatchdogSec=.
//!
//! * n1, standalone: READY=1 with a STATUS= line, STATUS= follows the pod count,
//!   WATCHDOG=1 arrives repeatedly, STOPPING=1 on SIGTERM.
//! * n2, joined: READY=1 comes only once the Node exists on the API server, and
//!   STATUS= then reads "Ready; N pods" like the node's condition.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::{api_server, assert_api_clean, kubectl_json};
use common::{Agent, BUSYBOX, NODE};

/// The messages systemd would have received; a thread drains the socket all the
/// time, as systemd does (a full queue would drop the agent's messages).
struct Listener {
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    path: String,
    _dir: tempfile::TempDir,
}

impl Listener {
    fn new() -> Listener {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let (seen, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (s2, st2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !st2.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    s2.lock().unwrap().extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
                }
            }
        });
        Listener { seen, stop, path: path.display().to_string(), _dir: dir }
    }

    /// Waits (bounded) until `f` holds for the messages so far.
    fn wait(&self, timeout: Duration, f: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f(&self.seen.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// How often `m` arrived (do not call inside `wait`'s predicate: it holds the lock).
    fn count(&self, m: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|x| *x == m).count()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn n1_standalone_ready_status_watchdog_and_stopping() {
    let l = Listener::new();
    let mut agent = Agent::with_env("n1", &[("NOTIFY_SOCKET", &l.path), ("WATCHDOG_USEC", "400000")]);
    assert!(l.wait(Duration::from_secs(30), |s| s.iter().any(|m| m == "READY=1")), "no READY=1: {:?}\n{}", l.seen(), agent.log_tail(20));
    assert!(l.seen().iter().any(|m| m == "STATUS=Running (standalone); 0 pods"), "{:?}", l.seen());

    agent.write_manifest(
        "web.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [\"sleep\", \"3600\"]\n"),
    );
    assert!(
        l.wait(Duration::from_secs(60), |s| s.iter().any(|m| m == "STATUS=Running (standalone); 1 pod")),
        "STATUS did not follow the pod count: {:?}\n{}",
        l.seen(),
        agent.log_tail(20)
    );
    // WatchdogSec=0.4s: pings every 0.2 s, all along.
    let before = l.count("WATCHDOG=1");
    let pings = |s: &[String]| s.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(l.wait(Duration::from_secs(10), |s| pings(s) >= before + 3), "watchdog pings: {:?}", l.seen());

    agent.remove_all_pods();
    assert!(agent.terminate(Duration::from_secs(10)), "SIGTERM ends the agent");
    assert!(l.wait(Duration::from_secs(2), |s| s.iter().any(|m| m == "STOPPING=1")), "no STOPPING=1: {:?}", l.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n2_joined_ready_only_once_the_node_is_registered() {
    let base = Path::new("/var/lib/rkubelet-test/agents/n2-api");
    let api = api_server(base).await;
    let l = Listener::new();
    let node_kc = api.node.to_str().unwrap().to_string();
    let admin = api.admin.clone();
    let mut agent = tokio::task::block_in_place(|| Agent::with_options("n2", &[("NOTIFY_SOCKET", &l.path)], &["--kubeconfig", &node_kc]));
    tokio::task::block_in_place(|| {
        // READY=1 means registered: the Node is there at that moment.
        assert!(
            l.wait(Duration::from_secs(30), |s| s.iter().any(|m| m == "READY=1")),
            "no READY=1: {:?}\n{}",
            l.seen(),
            agent.log_tail(20)
        );
        assert!(kubectl_json(&admin, &["get", "node", NODE]).is_some(), "READY=1 before the Node was registered");
        assert!(
            l.wait(Duration::from_secs(30), |s| s.iter().any(|m| m == "STATUS=Ready; 0 pods")),
            "no Ready status line: {:?}\n{}",
            l.seen(),
            agent.log_tail(20)
        );
        assert!(agent.terminate(Duration::from_secs(10)));
    });
    assert_api_clean(&api.srv);
}

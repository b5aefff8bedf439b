//! Integration tests for `network::{netns, cni}` against the real CNI plugins
//! (bridge, host-local, portmap, loopback in /usr/lib/cni) and the kernel.
//!
//! Requirements (the tests fail, never skip, without them): root, the
//! `containernetworking-plugins` package, `ip` (iproute2), `iptables`,
//! `busybox` (for ping) and `timeout` (coreutils).
//!
//! Traffic goes only to pod IPs inside namespaces these tests create. Every
//! namespace, bridge, IP allocation and iptables rule is removed by an RAII
//! guard, also when an assertion fails halfway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rkubelet::network::cni::{
    AttachResult, Cni, CniConfig, CniError, PodNetwork, PortMapping, Protocol,
};
use rkubelet::network::netns::{self, NetNs, NetnsError};

const PLUGIN_DIR: &str = "/usr/lib/cni";
const BRIDGE: &str = "rktest0";
const NETWORK: &str = "rktest";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rkubelet=debug")),
        )
        .with_test_writer()
        .try_init();
}

/// Fails the test (with the reason) unless everything it needs is installed.
fn require_prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "network integration tests must run as root"
    );
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        let p = Path::new(PLUGIN_DIR).join(plugin);
        assert!(
            p.is_file(),
            "CNI plugin {} missing: install containernetworking-plugins",
            p.display()
        );
    }
    for tool in ["ip", "iptables", "busybox", "timeout"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "required tool {tool:?} is not on PATH");
    }
}

/// Runs a command (bounded by `timeout`), returning success and combined output.
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Owns everything a test creates on the host and removes it on drop: a
/// pending CNI attachment (torn down while the conf and cache dirs under
/// `root` still exist), network namespaces, the test bridge, the temp dir.
struct Guard {
    namespaces: Vec<NetNs>,
    attachment: Option<(Cni, String, PathBuf)>,
    bridge: Option<&'static str>,
    /// Dropped after `Drop::drop` ran, so teardown still finds the cache.
    root: tempfile::TempDir,
}

impl Guard {
    fn new() -> Self {
        Self {
            namespaces: Vec::new(),
            attachment: None,
            bridge: None,
            root: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn netns(&mut self, prefix: &str) -> NetNs {
        let ns = netns::create(&unique(prefix)).expect("create netns");
        self.namespaces.push(ns.clone());
        ns
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((cni, sandbox, ns)) = self.attachment.take() {
            // Drop may run inside the test's runtime; tear down on a fresh thread with its own.
            let done = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(cni.teardown(&sandbox, Some(&ns)))
                    .map_err(|e| e.to_string())
            })
            .join();
            if !matches!(done, Ok(Ok(()))) {
                eprintln!("guard: CNI teardown failed: {done:?}");
            }
        }
        for ns in self.namespaces.drain(..) {
            if let Err(e) = ns.remove() {
                eprintln!("guard: cannot remove {}: {e}", ns.path.display());
            }
        }
        if let Some(bridge) = self.bridge.take() {
            let _ = run("ip", &["link", "del", bridge]);
        }
    }
}

fn conflist(data_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.244.99.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

fn cni_for(root: &Path) -> Cni {
    Cni::new(CniConfig {
        bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from(PLUGIN_DIR)],
        conf_dir: root.join("net.d"),
        cache_dir: root.join("cni-cache"),
    })
}

fn pod(sandbox_id: &str, ns: &NetNs) -> PodNetwork {
    PodNetwork {
        namespace: "rk-test".into(),
        name: "web".into(),
        uid: uuid::Uuid::new_v4().to_string(),
        sandbox_id: sandbox_id.into(),
        netns: ns.path.clone(),
        ifname: "eth0".into(),
        port_mappings: vec![PortMapping {
            host_port: 39080,
            container_port: 8080,
            protocol: Protocol::Tcp,
            host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        }],
    }
}

/// The host end of the pod's veth pair, from the bridge plugin's result.
fn host_veth(attached: &AttachResult) -> String {
    attached.result["interfaces"]
        .as_array()
        .expect("result has interfaces")
        .iter()
        .filter(|i| i.get("sandbox").is_none())
        .filter_map(|i| i["name"].as_str())
        .find(|n| *n != BRIDGE)
        .expect("a host-side veth in the result")
        .to_owned()
}

fn iptables_nat_mentions(needle: &str) -> bool {
    let (ok, rules) = run("iptables", &["-t", "nat", "-S"]);
    assert!(ok, "iptables -t nat -S failed: {rules}");
    rules.contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_attach_reach_pod_and_teardown_after_restart() {
    init_tracing();
    require_prerequisites();
    let mut guard = Guard::new();
    guard.bridge = Some(BRIDGE);
    let root = guard.root().to_path_buf();
    let data_dir = root.join("ipam");
    std::fs::create_dir_all(root.join("net.d")).expect("mkdir conf");
    let conf_file = root.join("net.d/10-rktest.conflist");
    std::fs::write(&conf_file, conflist(&data_dir)).expect("write conflist");

    let cni = cni_for(&root);
    cni.status().expect("network ready");
    let ns = guard.netns("rktest");
    assert!(netns::exists(&ns.path));
    let sandbox = format!("{:032x}", rand::random::<u128>());
    let pod = pod(&sandbox, &ns);

    guard.attachment = Some((cni.clone(), sandbox.clone(), ns.path.clone()));
    let attached = cni.setup(&pod).await.expect("setup");

    // The pod got an address from the range, and host-local recorded it.
    assert_eq!(attached.network_name, NETWORK);
    let ip = match attached.ips.first() {
        Some(IpAddr::V4(v4)) => *v4,
        other => panic!("expected an IPv4 pod IP first, got {other:?}"),
    };
    assert_eq!(
        ip.octets()[..3],
        [10, 244, 99],
        "{ip} not in 10.244.99.0/24"
    );
    assert_ne!(
        ip,
        Ipv4Addr::new(10, 244, 99, 1),
        "gateway handed out as pod IP"
    );
    let alloc = data_dir.join(NETWORK).join(ip.to_string());
    let owner = std::fs::read_to_string(&alloc)
        .unwrap_or_else(|e| panic!("host-local allocation {}: {e}", alloc.display()));
    assert!(owner.contains(&sandbox), "allocation owned by {owner:?}");

    // Inside the namespace: eth0 has the IP, lo is up.
    let name = ns.name().expect("netns name");
    let (ok, addrs) = run("ip", &["-n", name, "addr", "show", "eth0"]);
    assert!(ok && addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    let (ok, lo) = run("ip", &["-n", name, "link", "show", "lo"]);
    assert!(ok && lo.contains("LOOPBACK,UP"), "lo is not up: {lo}");

    // The host reaches the pod: ICMP, and TCP to a listener living in the pod's namespace.
    let (ok, ping) = run("busybox", &["ping", "-c1", "-W2", &ip.to_string()]);
    assert!(ok, "ping {ip} failed: {ping}");
    let listener: TcpListener = ns
        .run(|| TcpListener::bind(SocketAddr::from((ip, 8080))))
        .expect("enter netns")
        .expect("listen on the pod IP inside the netns");
    let accepted = tokio::task::spawn_blocking(move || {
        let stream =
            TcpStream::connect_timeout(&SocketAddr::from((ip, 8080)), Duration::from_secs(3))?;
        // The connection is already in the backlog, so accept does not block.
        let (_, peer) = listener.accept()?;
        drop(stream);
        Ok::<_, std::io::Error>(peer)
    })
    .await
    .expect("join");
    let peer = accepted.expect("TCP connect from the host to the pod");
    assert_eq!(
        peer.ip(),
        IpAddr::V4(Ipv4Addr::new(10, 244, 99, 1)),
        "came from the bridge"
    );

    // Host-side state: the veth and portmap's DNAT rules (runtimeConfig reached portmap).
    let veth = host_veth(&attached);
    assert!(
        run("ip", &["link", "show", &veth]).0,
        "host veth {veth} missing"
    );
    assert!(
        iptables_nat_mentions(&sandbox),
        "portmap installed no rule for the sandbox"
    );

    // "Restart": a new driver, and the conf dir now names a different network.
    std::fs::write(
        &conf_file,
        r#"{"cniVersion":"1.0.0","name":"decoy","plugins":[{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
    )
    .expect("rewrite conflist");
    let restarted = cni_for(&root);
    assert_eq!(restarted.cached(&sandbox), Some(attached.clone()));
    restarted
        .teardown(&sandbox, Some(&ns.path))
        .await
        .expect("teardown from cache");
    guard.attachment = None;

    assert!(!alloc.exists(), "IP allocation {} leaked", alloc.display());
    assert!(
        !run("ip", &["link", "show", &veth]).0,
        "host veth {veth} still exists"
    );
    assert!(!iptables_nat_mentions(&sandbox), "portmap rules leaked");
    let (_, addrs) = run("ip", &["-n", name, "addr", "show", "eth0"]);
    assert!(
        !addrs.contains(&ip.to_string()),
        "eth0 still configured: {addrs}"
    );
    assert!(restarted.cached(&sandbox).is_none());
    assert!(restarted.cached_sandboxes().expect("list cache").is_empty());

    // The namespace goes; a repeated teardown (netns gone, no record) is still fine.
    ns.remove().expect("remove netns");
    assert!(!netns::exists(&ns.path));
    restarted
        .teardown(&sandbox, Some(&ns.path))
        .await
        .expect("second teardown");
}

#[tokio::test]
async fn only_invalid_configs_mean_no_network_and_name_the_files() {
    init_tracing();
    require_prerequisites();
    let mut guard = Guard::new();
    let root = guard.root().to_path_buf();
    let conf = root.join("net.d");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::write(conf.join("10-broken.conflist"), "{\"name\": ").expect("write");
    std::fs::write(
        conf.join("20-notype.conf"),
        r#"{"cniVersion":"1.0.0","name":"x"}"#,
    )
    .expect("write");
    std::fs::write(conf.join("30-ignored.txt"), "{}").expect("write");
    let cni = cni_for(&root);

    for err in [
        cni.load_network().expect_err("load"),
        cni.status().expect_err("status"),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, CniError::NoConfig { .. }), "{err:?}");
        assert!(msg.contains("no networks found in"), "{msg}");
        assert!(msg.contains("10-broken.conflist"), "{msg}");
        assert!(msg.contains("20-notype.conf"), "{msg}");
        assert!(!msg.contains("30-ignored.txt"), "{msg}");
    }

    let ns = guard.netns("rkbad");
    let err = cni
        .setup(&pod("badconf0", &ns))
        .await
        .expect_err("setup without a network");
    assert!(matches!(err, CniError::NoConfig { .. }), "{err:?}");
    // Nothing configured and nothing cached: teardown has nothing to do.
    cni.teardown("badconf0", Some(&ns.path))
        .await
        .expect("no-op teardown");
}

#[tokio::test]
async fn a_missing_plugin_binary_is_reported_before_anything_runs() {
    init_tracing();
    require_prerequisites();
    let mut guard = Guard::new();
    let root = guard.root().to_path_buf();
    let conf = root.join("net.d");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::write(
        conf.join("10-net.conflist"),
        r#"{"cniVersion":"1.0.0","name":"rkmissing","plugins":[{"type":"rk-no-such-plugin"}]}"#,
    )
    .expect("write");
    let cni = cni_for(&root);

    match cni.status() {
        Err(CniError::PluginNotFound { plugin, dirs }) => {
            assert_eq!(plugin, "rk-no-such-plugin");
            assert!(dirs.contains(&PathBuf::from(PLUGIN_DIR)));
        }
        other => panic!("unexpected {other:?}"),
    }
    let ns = guard.netns("rkmiss");
    let err = cni.setup(&pod("missing0", &ns)).await.expect_err("setup");
    assert!(
        matches!(&err, CniError::PluginNotFound { plugin, .. } if plugin == "rk-no-such-plugin"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("failed to find plugin \"rk-no-such-plugin\""),
        "{err}"
    );
    assert!(
        cni.cached_sandboxes().expect("cache").is_empty(),
        "nothing may be recorded"
    );
    // lo was not touched either: loopback ADD runs only after all plugins are found.
    let (_, lo) = run(
        "ip",
        &["-n", ns.name().expect("name"), "link", "show", "lo"],
    );
    assert!(!lo.contains("LOOPBACK,UP"), "{lo}");
}

#[test]
fn netns_lifecycle_is_idempotent_and_isolated() {
    require_prerequisites();
    let mut guard = Guard::new();
    let ns = guard.netns("rkns");
    let name = ns.name().expect("name").to_owned();
    assert!(ns.path.starts_with(netns::NETNS_RUN_DIR));
    assert!(netns::exists(&ns.path));
    assert!(matches!(
        netns::create(&name),
        Err(NetnsError::AlreadyExists { .. })
    ));

    // `ip netns` sees it, and code run inside it is in another namespace.
    let (ok, list) = run("ip", &["netns", "list"]);
    assert!(ok && list.contains(&name), "{list}");
    let own = std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
    let inside = ns
        .run(|| std::fs::read_link("/proc/thread-self/ns/net"))
        .expect("enter")
        .expect("readlink inside");
    assert_ne!(own, inside);
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").expect("own netns"),
        own
    );
    let (ok, links) = run("ip", &["-n", &name, "-o", "link"]);
    assert!(
        ok && links.lines().count() == 1 && links.contains("lo:"),
        "{links}"
    );

    // A second mount stacked on the same file (a racing double create) is peeled off too.
    nix::mount::mount(
        Some(&ns.path),
        &ns.path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("stack a second bind mount");
    ns.remove().expect("remove");
    assert!(!netns::exists(&ns.path));
    assert!(!ns.path.exists());
    ns.remove().expect("remove again");
    assert!(matches!(
        netns::run_in(&ns.path, || ()),
        Err(NetnsError::NotANamespace { .. })
    ));
}

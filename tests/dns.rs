//! Cluster DNS (issue 12): with `--cluster-dns` and `--cluster-domain`, pods get
//! resolv.conf per `dnsPolicy` as upstream builds it, and resolve a cluster name
//! through the DNS server the test runs on the pod network: a tiny UDP
//! responder in a network namespace of the test's own, attached to the test
//! bridge. Traffic stays between the test's namespaces and the pods.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const DNS_IP: &str = "10.244.77.250";
const ANSWER: Ipv4Addr = Ipv4Addr::new(10, 96, 77, 77);

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A DNS responder at DNS_IP:53 in its own namespace on the test bridge: an A
/// record ANSWER for every name under `svc.cluster.local`, NXDOMAIN for others,
/// no records for other types. Removed (namespace, veth, thread) on drop.
struct DnsServer {
    netns: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    queries: Arc<std::sync::Mutex<Vec<String>>>,
}

impl DnsServer {
    fn start() -> DnsServer {
        let netns = format!("rkdns{}", std::process::id());
        let (host_if, pod_if) = ("rkdnsh", "rkdnsp");
        // Leftovers of an earlier run that died.
        let _ = std::process::Command::new("ip").args(["netns", "del", &netns]).output();
        let _ = std::process::Command::new("ip").args(["link", "del", host_if]).output();
        ip(&["netns", "add", &netns]);
        ip(&["link", "add", host_if, "type", "veth", "peer", "name", pod_if]);
        ip(&["link", "set", pod_if, "netns", &netns]);
        ip(&["link", "set", host_if, "master", BRIDGE, "up"]);
        ip(&["-n", &netns, "addr", "add", &format!("{DNS_IP}/24"), "dev", pod_if]);
        ip(&["-n", &netns, "link", "set", pod_if, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, q, ns) = (stop.clone(), queries.clone(), netns.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let sock = UdpSocket::bind(SocketAddrV4::new(DNS_IP.parse().unwrap(), 53)).expect("bind :53");
            sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            // Bounded: the test stops it, and it never runs past 5 minutes.
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
                if let Some((name, reply)) = answer(&buf[..n]) {
                    q.lock().unwrap().push(name);
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("DNS responder up");
        DnsServer { netns, stop, thread: Some(thread), queries }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The veth pair goes with the namespace.
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}

/// A reply to one DNS query: (the name asked, the packet).
fn answer(q: &[u8]) -> Option<(String, Vec<u8>)> {
    if q.len() < 12 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    while *q.get(i)? != 0 {
        let l = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + l)?).to_string());
        i += 1 + l;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question_end = i + 5;
    let name = labels.join(".");
    let ours = name.ends_with("svc.cluster.local");
    let a = ours && qtype == 1;
    let mut r = Vec::with_capacity(question_end + 16);
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&[0x81, if ours { 0x80 } else { 0x83 }]);
    r.extend_from_slice(&[0, 1, 0, u8::from(a), 0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..question_end)?);
    if a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        r.extend_from_slice(&ANSWER.octets());
    }
    Some((name, r))
}

fn pod_yaml(name: &str, extra_spec: &str, cmd: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  terminationGracePeriodSeconds: 0\n{extra_spec}  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, '{cmd}']\n")
}

#[test]
fn d1_pods_resolve_through_the_cluster_dns_with_upstreams_resolv_conf() {
    let agent = Agent::with_options("dns1", &[], &["--cluster-dns", DNS_IP, "--cluster-domain", "cluster.local"]);
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap();
    // The asker: its resolv.conf, then lookups until the server answers.
    agent.write_manifest("asker.yaml", &pod_yaml("asker", "", "cat /etc/resolv.conf; while true; do nslookup web.default.svc.cluster.local; sleep 1; done"));
    agent.write_manifest("plain.yaml", &pod_yaml("plain", "  dnsPolicy: Default\n", "sleep 3600"));
    agent.write_manifest(
        "custom.yaml",
        &pod_yaml("custom", "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [10.244.77.251]\n    searches: [a.example]\n    options: [{name: ndots, value: \"2\"}, {name: edns0}]\n", "sleep 3600"),
    );
    agent.write_manifest("hostnet.yaml", &pod_yaml("hostnet", "  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n", "sleep 3600"));
    agent.write_manifest("fqdn.yaml", &pod_yaml("fqdn", "  hostname: db-0\n  subdomain: db\n  setHostnameAsFQDN: true\n", "hostname; sleep 3600"));
    let resolv = |name: &str| {
        let p = agent.wait_pod(name, Duration::from_secs(60), "running", |p| (p.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| p.clone()));
        std::fs::read_to_string(agent.state_dir().join("pods").join(p.metadata.uid.unwrap()).join("resolv.conf")).unwrap()
    };
    let cluster = "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.244.77.250\noptions ndots:5\n";
    assert_eq!(resolv("asker"), cluster);
    assert_eq!(resolv("hostnet"), cluster, "ClusterFirstWithHostNet");
    assert_eq!(resolv("plain"), host, "Default: the host's resolver configuration");
    assert_eq!(resolv("custom"), "search a.example\nnameserver 10.244.77.251\noptions ndots:2 edns0\n");
    let fqdn = agent.pod("fqdn").unwrap();
    agent.wait_until(Duration::from_secs(20), "fqdn hostname printed", || agent.container_output(&fqdn, "c", 0).contains("db-0.db.default.svc.cluster.local"));
    // The bridge exists now (pods are attached): serve DNS on it.
    let server = DnsServer::start();
    let asker = agent.pod("asker").unwrap();
    agent.wait_until(Duration::from_secs(60), "the name resolved through the cluster DNS", || {
        let out = agent.container_output(&asker, "c", 0);
        out.contains("Name:\tweb.default.svc.cluster.local") && out.contains(&format!("Address: {ANSWER}"))
    });
    let out = agent.container_output(&asker, "c", 0);
    assert!(out.starts_with(cluster), "{out}");
    assert!(server.queries.lock().unwrap().iter().any(|q| q == "web.default.svc.cluster.local"));
    drop(server);
}

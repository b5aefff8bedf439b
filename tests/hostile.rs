//! Hostile pod specs (issue 15, point 2): 1000 generated specs. 850 malformed
//! ones (wrong types, huge strings, deep nesting, negative numbers, invalid
//! names and paths, `..` in sub paths and volume paths, absurd quantities...)
//! go through the manifest directory: each is a manifest error naming its
//! file. 150 go to the test API server as raw JSON: the malformed half is
//! refused as a real server refuses it, the other half is valid for the API
//! but hostile for a node (600 KiB of env, NULs in arguments, bad image
//! references, absurd quantities, unsafe sysctls, 10000 arguments, odd paths)
//! and each of those pods ends or waits with a reason. Throughout, the agent
//! stays up, a good pod keeps its container, and nothing appears outside the
//! pods' directories (a sandbox dir that hostPath `..` tricks aim at).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::*;
use common::*;
use serde_json::{json, Value};

/// A small deterministic generator (splitmix64): the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Where hostPath tricks point: nothing may ever be created here.
const SANDBOX: &str = "/var/lib/rkubelet-test/hostile-sandbox";
const ABSENT_IMAGE: &str = "localhost/hostile/absent:1";

fn base(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "hostile"}},
        "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "hostNetwork": true,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "c", "image": ABSENT_IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", "true"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "resources": {"limits": {"memory": "64Mi"}},
                "ports": [{"containerPort": 8080, "name": "http"}],
                "env": [{"name": "A", "value": "b"}],
            }],
        },
    })
}

/// Sets `path` (a JSON pointer) in `v`, creating objects on the way.
fn set(v: &mut Value, path: &str, to: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let next = match cur {
            Value::Array(a) => {
                let idx: usize = p.parse().unwrap();
                while a.len() <= idx {
                    a.push(json!({}));
                }
                &mut a[idx]
            }
            other => {
                if !other.is_object() {
                    *other = json!({});
                }
                other.as_object_mut().unwrap().entry(p.to_string()).or_insert(json!({}))
            }
        };
        if last {
            *next = to;
            return;
        }
        cur = next;
    }
}

/// One invalid mutation (every one is refused by upstream's ValidatePodCreate
/// or by decoding); returns what it did, for failure messages.
fn mutate(v: &mut Value, r: &mut Rng, i: usize) -> String {
    let bad_names = [
        "Bad_Name".to_string(), "../../etc".into(), "a/b".into(), String::new(), "x".repeat(300), "-lead".into(), "ünï".into(), "a\u{0}b".into(), "UPPER".into(), "a..b".into(),
    ];
    let kind = r.below(26);
    let what = match kind {
        0 => {
            let n = r.pick(&bad_names).clone();
            set(v, "/metadata/name", json!(n));
            "pod name"
        }
        1 => {
            let n = r.pick(&bad_names).clone();
            set(v, "/spec/containers/0/name", json!(n));
            "container name"
        }
        2 => {
            let n = r.pick(&bad_names).clone();
            set(v, "/spec/volumes/0/name", json!(n));
            set(v, "/spec/containers/0/volumeMounts/0/name", json!(n));
            "volume name"
        }
        3 => {
            let c = v["spec"]["containers"][0].clone();
            v["spec"]["containers"].as_array_mut().unwrap().push(c);
            "duplicate container"
        }
        4 => {
            let (p, to) = r.pick(&[
                ("/spec/containers/0/command", json!(42)),
                ("/spec/containers", json!({"a": 1})),
                ("/spec/terminationGracePeriodSeconds", json!("ten")),
                ("/spec/containers/0/ports/0/containerPort", json!("80")),
                ("/metadata/labels", json!([1, 2])),
                ("/spec/volumes", json!("x")),
                ("/spec", json!(5)),
                ("/spec/containers/0/env/0", json!("A=b")),
                ("/spec/containers/0/resources/limits/memory", json!({"x": 1})),
                ("/metadata", Value::Null),
                ("/spec/containers/0/securityContext/runAsUser", json!(1.5)),
                ("/spec/hostNetwork", json!("yes")),
            ]).clone();
            set(v, p, to);
            "wrong type"
        }
        5 => {
            set(v, "/metadata/annotations/big", json!("a".repeat(300 * 1024)));
            "annotations over 256 KiB"
        }
        6 => {
            set(v, "/metadata/labels/big", json!("a".repeat(64)));
            "label value over 63"
        }
        7 => {
            // Deep nesting: 2000 levels of arrays in place of the command.
            set(v, "/spec/containers/0/command", json!("@DEEP@"));
            "deep nesting"
        }
        8 => {
            let (p, to) = r.pick(&[
                ("/spec/terminationGracePeriodSeconds", json!(-5)),
                ("/spec/activeDeadlineSeconds", json!(-1)),
                ("/spec/activeDeadlineSeconds", json!(0)),
                ("/spec/containers/0/ports/0/containerPort", json!(-1)),
                ("/spec/containers/0/ports/0/containerPort", json!(70000)),
                ("/spec/containers/0/ports/0/hostPort", json!(-1)),
                ("/spec/containers/0/livenessProbe", json!({"exec": {"command": ["true"]}, "periodSeconds": -1})),
                ("/spec/containers/0/readinessProbe", json!({"exec": {"command": ["true"]}, "timeoutSeconds": -3})),
                ("/spec/containers/0/securityContext/runAsUser", json!(-1)),
                ("/spec/securityContext/fsGroup", json!(-1)),
                ("/spec/securityContext/runAsGroup", json!(-7)),
                ("/spec/containers/0/securityContext/runAsUser", json!(1u64 << 40)),
            ]).clone();
            set(v, p, to);
            "negative or out-of-range number"
        }
        9 => {
            let sub = r.pick(&["../../etc", "/etc", "a/../../b", "..", "a/.."]).to_string();
            set(v, "/spec/containers/0/volumeMounts/0/subPath", json!(sub));
            "subPath backsteps"
        }
        10 => {
            set(v, "/spec/volumes/1", json!({"name": "hp", "hostPath": {"path": format!("{SANDBOX}/in/../outside-{i}"), "type": "DirectoryOrCreate"}}));
            "hostPath with .."
        }
        11 => {
            set(v, "/spec/volumes/1", json!({"name": "dapi", "downwardAPI": {"items": [{"path": r.pick(&["../x", "/abs", "a/../../b", ""]).to_string(), "fieldRef": {"fieldPath": "metadata.name"}}]}}));
            "downwardAPI item path"
        }
        12 => {
            let q = r.pick(&["-1", "-0.5Gi", "NaN", "1.5.5", "12Zi", "", "1Ki1", "+-1", "0x10", "1e"]).to_string();
            let p = r.pick(&["/spec/containers/0/resources/limits/memory", "/spec/containers/0/resources/requests/cpu", "/spec/containers/0/resources/limits/ephemeral-storage"]).to_string();
            set(v, &p, json!(q));
            "absurd quantity"
        }
        13 => {
            set(v, "/spec/volumes/0/emptyDir/sizeLimit", json!(r.pick(&["-1Gi", "lots", "1..5"]).to_string()));
            "emptyDir sizeLimit"
        }
        14 => {
            set(v, "/spec/containers/0/env/0/name", json!(r.pick(&["", "A=B", "a\u{0}b", "ü"]).to_string()));
            "env name"
        }
        15 => {
            set(v, "/spec/containers/0/image", json!(r.pick(&[" busybox", "", "busybox ", "\t"]).to_string()));
            "image whitespace"
        }
        16 => {
            set(v, "/spec/securityContext/sysctls", json!([{"name": r.pick(&["kernel/../../x", "", "-bad", "net..x"]).to_string(), "value": "1"}]));
            "sysctl name"
        }
        17 => {
            set(v, "/spec/securityContext/seccompProfile", json!({"type": "Localhost", "localhostProfile": r.pick(&["../../etc/passwd", "/etc/passwd"]).to_string()}));
            "seccomp localhostProfile"
        }
        18 => {
            let ns: Vec<String> = (0..10).map(|k| format!("10.0.0.{k}")).collect();
            let (p, to) = r.pick(&[
                ("/spec/dnsConfig", json!({"nameservers": ns})),
                ("/spec/dnsConfig", json!({"nameservers": ["not-an-ip"]})),
                ("/spec/dnsPolicy", json!("None")),
                ("/spec/hostAliases", json!([{"ip": "not-an-ip", "hostnames": ["a"]}])),
            ]).clone();
            set(v, p, to);
            "dns config / host aliases"
        }
        19 => {
            let (p, to) = r.pick(&[
                ("/spec/restartPolicy", json!("Sometimes")),
                ("/spec/dnsPolicy", json!("Nope")),
                ("/spec/containers/0/imagePullPolicy", json!("Sometimes")),
                ("/spec/containers/0/terminationMessagePolicy", json!("Bogus")),
                ("/spec/containers/0/ports/0/protocol", json!("ICMP")),
            ]).clone();
            set(v, p, to);
            "unsupported enum value"
        }
        20 => {
            let (p, to) = r.pick(&[
                ("/spec/containers/0/livenessProbe", json!({"httpGet": {"port": 0}})),
                ("/spec/containers/0/livenessProbe", json!({"httpGet": {"port": 70000}})),
                ("/spec/containers/0/livenessProbe", json!({"httpGet": {"port": "Bad_Name"}})),
                ("/spec/containers/0/livenessProbe", json!({"periodSeconds": 5})),
                ("/spec/containers/0/livenessProbe", json!({"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}})),
                ("/spec/containers/0/lifecycle", json!({"preStop": {"exec": {"command": ["true"]}, "sleep": {"seconds": 1}}})),
                ("/spec/containers/0/lifecycle", json!({"preStop": {"sleep": {"seconds": -1}}})),
            ]).clone();
            set(v, p, to);
            "probe / hook handler"
        }
        21 => {
            set(v, "/spec/containers/0/ports/1", json!({"containerPort": 9090, "name": r.pick(&["http", "UPPER", "a-very-long-port-name", "1234"]).to_string()}));
            "port name"
        }
        22 => {
            set(v, "/metadata/labels", json!({r.pick(&["a b", "-x", "a/b/c", ""]).to_string(): "v"}));
            "label key"
        }
        23 => {
            set(v, "/spec/initContainers", json!([{"name": "i", "image": ABSENT_IMAGE, "restartPolicy": "Sometimes"}]));
            "init container restartPolicy"
        }
        24 => {
            set(v, "/spec/containers/0/volumeMounts/0/mountPath", json!(""));
            "empty mountPath"
        }
        _ => {
            set(v, "/spec/containers/0/volumeMounts/1", json!({"name": "missing", "mountPath": "/m"}));
            "mount of a missing volume"
        }
    };
    format!("{kind}:{what}")
}

/// The manifest (JSON text) and what was done to it.
fn hostile(i: usize, r: &mut Rng) -> (String, String) {
    let mut v = base(&format!("h-{i}"));
    let n = 1 + r.below(3);
    let what: Vec<String> = (0..n).map(|_| mutate(&mut v, r, i)).collect();
    let mut text = serde_json::to_string(&v).unwrap();
    if text.contains("\"@DEEP@\"") {
        let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
        text = text.replace("\"@DEEP@\"", &deep);
    }
    (text, what.join(" + "))
}

fn agent_alive_and_good_pod_untouched(agent: &mut Agent, good_id: &str) {
    assert!(agent.is_running(), "the agent keeps running: {}", agent.log_tail(40));
    let p = agent.pods().into_iter().find(|p| p.metadata.name.as_deref() == Some(&format!("good-{NODE}"))).expect("the good pod is listed");
    let cs = &p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
    assert!(cs.state.as_ref().unwrap().running.is_some(), "good pod still running: {cs:?}");
    assert_eq!(cs.container_id.as_deref(), Some(good_id), "same container, never restarted");
    assert_eq!(cs.restart_count, 0);
}

fn sandbox_untouched() {
    let left: Vec<PathBuf> = std::fs::read_dir(SANDBOX).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(left, vec![Path::new(SANDBOX).join("in")], "nothing created outside through hostPath ..");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_a_thousand_hostile_specs_through_the_manifest_dir_and_the_api_server() {
    let _ = std::fs::remove_dir_all(SANDBOX);
    std::fs::create_dir_all(Path::new(SANDBOX).join("in")).unwrap();
    let dir = PathBuf::from("/var/lib/rkubelet-test/agents/h1-api");
    let api = api_server(&dir).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let mut agent = tokio::task::block_in_place(|| Agent::with_options("h1", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let mut r = Rng(15);
    let good_id = tokio::task::block_in_place(|| {
        agent.write_manifest("good.yaml", &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: good}}\nspec:\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n"));
        agent.wait_pod("good", Duration::from_secs(90), "Running", |p| {
            let cs = p.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
            cs.state.as_ref()?.running.as_ref()?;
            cs.container_id.clone()
        })
    });

    // 850 through the manifest directory, 170 files at a time: each must be
    // reported as a manifest error naming its file.
    let errors_file = agent.state_dir().join("manifest-errors.json");
    for batch in 0..5 {
        let mut files = Vec::new();
        for k in 0..170 {
            let i = batch * 170 + k;
            let (text, what) = hostile(i, &mut r);
            let file = format!("h-{i}.json");
            std::fs::write(agent.manifests.join(&file), text).unwrap();
            files.push((file, what));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let missing = loop {
            let errs = std::fs::read_to_string(&errors_file).unwrap_or_default();
            let missing: Vec<&(String, String)> = files.iter().filter(|(f, _)| !errs.contains(&format!("/{f}"))).collect();
            if missing.is_empty() || Instant::now() > deadline {
                break missing.into_iter().cloned().collect::<Vec<_>>();
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(missing.is_empty(), "accepted (not refused as a manifest error) in batch {batch}: {missing:?}");
        for (f, _) in &files {
            std::fs::remove_file(agent.manifests.join(f)).unwrap();
        }
        tokio::task::block_in_place(|| agent_alive_and_good_pod_untouched(&mut agent, &good_id));
    }
    assert_eq!(agent.pods().len(), 1, "no hostile static pod ran");

    // 150 through the test API server as raw JSON bodies, 30 at a time: the
    // invalid half is refused as a real server refuses it (422/400); the other
    // half is valid for the API but hostile for a node, reaches the agent and
    // each pod ends or waits with a reason.
    let client = kube_client(&api.admin).await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), "default");
    let events: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::namespaced(client.clone(), "default");
    let mut refused = 0;
    let mut reported = std::collections::BTreeMap::<String, usize>::new();
    for batch in 0..5 {
        let mut accepted = Vec::new();
        for k in 0..30 {
            let i = 850 + batch * 30 + k;
            let (text, what, valid) = if i % 2 == 0 {
                let (t, w) = hostile(i, &mut r);
                (t, w, false)
            } else {
                let (t, w) = valid_hostile(i, &mut r);
                (t, w, true)
            };
            let body = with_node_name(&text);
            let req = http::Request::post("/api/v1/namespaces/default/pods").header("content-type", "application/json").body(body.into_bytes()).unwrap();
            match client.request_text(req).await {
                Ok(created) if valid => {
                    let name = serde_json::from_str::<Value>(&created).ok().and_then(|c| c["metadata"]["name"].as_str().map(String::from)).unwrap_or_default();
                    accepted.push((name, what));
                }
                Ok(_) => panic!("h-{i} ({what}) was accepted; a real API server refuses it"),
                Err(kube::Error::Api(e)) if !valid && (e.code == 422 || e.code == 400) => refused += 1,
                Err(e) => panic!("h-{i} ({what}, valid for the API: {valid}): {e}"),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for (name, what) in &accepted {
            let outcome = loop {
                let p = pods.get_opt(name).await.ok().flatten();
                if let Some(o) = p.as_ref().and_then(outcome) {
                    break o;
                }
                // A sandbox that cannot start or a volume that cannot mount
                // leaves the pod ContainerCreating with Warning events
                // (FailedCreatePodSandBox, FailedMount), as upstream.
                let lp = kube::api::ListParams::default().fields(&format!("involvedObject.name={name}"));
                let evs = events.list(&lp).await.map(|l| l.items).unwrap_or_default();
                if let Some(e) = evs.iter().find(|e| e.type_.as_deref() == Some("Warning")) {
                    break format!("event {}", e.reason.clone().unwrap_or_default());
                }
                assert!(Instant::now() < deadline, "{name} ({what}) not reported by the agent: {:?}", p.and_then(|p| p.status));
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            // Where upstream's answer is known, it is the agent's.
            let expected = match what.split(':').nth(1) {
                Some("2") => Some("InvalidImageName"),
                Some("7") => Some("Failed/SysctlForbidden"),
                Some("8") => Some("event FailedCreatePodSandBox"),
                _ => None,
            };
            if let Some(want) = expected {
                assert_eq!(outcome, want, "{name} ({what})");
            }
            *reported.entry(outcome).or_default() += 1;
        }
        for (name, _) in &accepted {
            pods.delete(name, &Default::default()).await.expect("delete");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for (name, what) in &accepted {
            while pods.get_opt(name).await.ok().flatten().is_some() {
                assert!(Instant::now() < deadline, "{name} ({what}) not removed by the agent");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        tokio::task::block_in_place(|| agent_alive_and_good_pod_untouched(&mut agent, &good_id));
    }
    eprintln!("API server: {refused} refused; valid hostile pods ended as {reported:?}");
    assert_eq!(refused, 75, "every invalid spec refused by the API server");
    tokio::task::block_in_place(|| {
        agent_alive_and_good_pod_untouched(&mut agent, &good_id);
        sandbox_untouched();
        let log = std::fs::read_to_string(agent.root.join("agent.log")).unwrap_or_default();
        assert!(!log.contains("panicked"), "{}", agent.log_tail(40));
    });
}

/// Binds a raw JSON pod body to the node (text-level for bodies too deep to parse).
fn with_node_name(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(mut v) if v["spec"].is_object() => {
            v["spec"]["nodeName"] = json!(NODE);
            v.to_string()
        }
        _ => text.replacen("\"spec\":{", &format!("\"spec\":{{\"nodeName\":\"{NODE}\","), 1),
    }
}

/// What the agent made of a pod: its phase when it ended, else the first
/// container's waiting reason once it is not just being created.
fn outcome(p: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    let st = p.status.as_ref()?;
    if let Some(ph) = st.phase.as_deref().filter(|ph| *ph == "Succeeded" || *ph == "Failed") {
        return Some(format!("{ph}/{}", st.reason.clone().unwrap_or_default()));
    }
    st.container_statuses.iter().chain(st.init_container_statuses.iter()).flatten().find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
        (w != "ContainerCreating" && w != "PodInitializing").then_some(w)
    })
}

/// A spec the API accepts that is hostile to a node: huge values, bad image
/// references, absurd but well-formed quantities, NULs in arguments, unsafe
/// sysctls, missing seccomp profiles, odd mount and working paths.
fn valid_hostile(i: usize, r: &mut Rng) -> (String, String) {
    let mut v = base(&format!("v-{i}"));
    set(&mut v, "/spec/containers/0/image", json!(BUSYBOX));
    // On the host network a port is a host port: pods of a batch would refuse each other.
    set(&mut v, "/spec/containers/0/ports", json!([]));
    let kind = r.below(16);
    let what = match kind {
        0 => {
            let env: Vec<Value> = (0..3).map(|k| json!({"name": format!("BIG{k}"), "value": "x".repeat(200 * 1024)})).collect();
            set(&mut v, "/spec/containers/0/env", json!(env));
            "600 KiB of env values"
        }
        1 => {
            set(&mut v, "/spec/containers/0/command", json!(["sh", "-c", "echo a\u{0}b"]));
            "NUL in an argument"
        }
        2 => {
            set(&mut v, "/spec/containers/0/image", json!(r.pick(&["localhost:1/../x", "UPPER/Case", "a@sha256:zz", "x:tag:tag", "-x"]).to_string()));
            "malformed image reference"
        }
        3 => {
            let p = r.pick(&["/spec/containers/0/resources/limits/memory", "/spec/containers/0/resources/limits/cpu", "/spec/volumes/0/emptyDir/sizeLimit"]).to_string();
            set(&mut v, &p, json!(r.pick(&["99999999999999999999Ei", "1e100", "1e999999", "0.000000001m", "0"]).to_string()));
            "absurd quantity"
        }
        4 => {
            let cs: Vec<Value> = (0..20).map(|k| json!({"name": format!("c{k}"), "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["true"]})).collect();
            set(&mut v, "/spec/containers", json!(cs));
            "20 containers"
        }
        5 => {
            set(&mut v, "/spec/containers/0/volumeMounts/0/mountPath", json!(r.pick(&["/proc/sys/kernel/x", "/dev/../etc/x", "relative/path", "/", "/sys/fs/cgroup"]).to_string()));
            "odd mountPath"
        }
        6 => {
            set(&mut v, "/spec/containers/0/workingDir", json!(r.pick(&["../../etc", "relative", "/nonexistent/deep/dir", "/proc/self"]).to_string()));
            "odd workingDir"
        }
        7 => {
            set(&mut v, "/spec/securityContext/sysctls", json!([{"name": r.pick(&["kernel.sched_child_runs_first", "vm.overcommit_memory", "kernel.msgmax"]).to_string(), "value": "1"}]));
            "unsafe sysctl"
        }
        8 => {
            set(&mut v, "/spec/securityContext/seccompProfile", json!({"type": "Localhost", "localhostProfile": "missing/profile.json"}));
            "missing seccomp profile"
        }
        9 => {
            set(&mut v, "/metadata/annotations/big", json!("a".repeat(200 * 1024)));
            "200 KiB annotation"
        }
        10 => {
            set(&mut v, "/spec/volumes/0/emptyDir", json!({"medium": "Memory", "sizeLimit": "1Ei"}));
            "1 EiB memory emptyDir"
        }
        11 => {
            let args: Vec<String> = (0..10_000).map(|k| format!("arg{k}")).collect();
            set(&mut v, "/spec/containers/0/args", json!(args));
            "10000 arguments"
        }
        12 => {
            set(&mut v, "/spec/containers/0/terminationMessagePath", json!(r.pick(&["/dev/../etc/passwd", "/proc/self/x", "relative"]).to_string()));
            "odd terminationMessagePath"
        }
        13 => {
            set(&mut v, "/spec/volumes/1", json!({"name": "hp", "hostPath": {"path": format!("{SANDBOX}/in/v-{i}"), "type": r.pick(&["Socket", "CharDevice", "File", "DirectoryOrCreate"]).to_string()}}));
            "hostPath of the wrong type"
        }
        14 => {
            set(&mut v, "/spec/containers/0/securityContext", json!({"runAsUser": 2147483647, "runAsGroup": 2147483647, "capabilities": {"add": ["NOT_A_CAP", "ALL"], "drop": ["ALL"]}}));
            "odd ids and capabilities"
        }
        _ => {
            let items: Vec<Value> = (0..100).map(|k| json!({"path": format!("d/{k}"), "fieldRef": {"fieldPath": "metadata.name"}})).collect();
            set(&mut v, "/spec/volumes/1", json!({"name": "dapi", "downwardAPI": {"items": items}}));
            "100 downwardAPI files"
        }
    };
    (v.to_string(), format!("valid:{kind}:{what}"))
}

async fn kube_client(kubeconfig: &Path) -> kube::Client {
    // Both rustls providers are in the dependency graph: pick ring, as the agent does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let k = kube::config::Kubeconfig::read_from(kubeconfig).expect("admin kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(k, &Default::default()).await.expect("client config");
    kube::Client::try_from(cfg).expect("client")
}

//! Volumes and API-backed env (issue 4, volume half) against the test API server,
//! with real containerd, runc, CNI and `kubectl`: configMap/secret/downwardAPI
//! volumes updated in running pods, secrets on tmpfs with their mode, missing
//! objects (FailedMount / CreateContainerConfigError, then the pod starts),
//! hostPath type checks, subPathExpr, emptyDir `medium: Memory` with its size,
//! the projected service-account token (a JWT for the pod, refreshed), a PVC
//! bound to a hostPath PV, and HostToContainer mount propagation.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::api::*;
use common::*;
use serde_json::Value;

fn events(admin: &Path) -> Vec<Value> {
    kubectl_json(admin, &["get", "events", "-n", "default"]).and_then(|v| v["items"].as_array().cloned()).unwrap_or_default()
}

fn has_event(evs: &[Value], pod: &str, reason: &str, message: &str) -> bool {
    evs.iter().any(|e| e["involvedObject"]["name"] == pod && e["reason"] == reason && e["message"] == message)
}

/// The first container's waiting (reason, message).
fn waiting(admin: &Path, pod: &str) -> Option<(String, String)> {
    let p = pod_phase(admin, pod)?;
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    Some((w["reason"].as_str()?.to_string(), w["message"].as_str().unwrap_or("").to_string()))
}

fn running_ip(admin: &Path, pod: &str) -> Option<String> {
    let p = pod_phase(admin, pod)?;
    (p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["state"]["running"].is_object())
        .then(|| p["status"]["podIP"].as_str().map(String::from))
        .flatten()
}

/// The body of an HTTP response.
fn body(resp: Option<String>) -> Option<String> {
    resp.filter(|r| r.starts_with("HTTP/1.") && r.contains(" 200 ")).and_then(|r| r.split_once("\r\n\r\n").map(|(_, b)| b.to_string()))
}

fn pod_of(admin: &Path, name: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(pod_phase(admin, name).unwrap()).unwrap()
}

/// The lines a container wrote to its log file (raw, or CRI format
/// `<time> <stream> <F|P> <text>`, whose prefix is dropped).
fn log_lines(agent: &Agent, admin: &Path, pod: &str) -> Vec<String> {
    let p = pod_of(admin, pod);
    let cri = |l: &str| -> Option<String> {
        let mut it = l.splitn(4, ' ');
        let (t, stream, tag, text) = (it.next()?, it.next()?, it.next()?, it.next().unwrap_or(""));
        (chrono::DateTime::parse_from_rfc3339(t).is_ok() && (stream == "stdout" || stream == "stderr") && (tag == "F" || tag == "P")).then(|| text.to_string())
    };
    std::fs::read_to_string(agent.container_log(&p, "c", 0))
        .unwrap_or_default()
        .lines()
        .map(|l| cri(l).unwrap_or_else(|| l.to_string()))
        .collect()
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.trim().split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_config_map_secret_and_downward_api_volumes_and_env_reach_the_container_and_follow_updates() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/v1-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("v1", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        create(&admin, &agent.root, "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-cfg, namespace: default}\ndata: {greeting: hello, other: x}\n");
        create(&admin, &agent.root, "sec.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: app-sec, namespace: default}\nstringData: {pw: hunter2}\n");
        create(
            &admin,
            &agent.root,
            "pod.yaml",
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: cfgpod, namespace: default, labels: {{app: web}}}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command:
    - sh
    - -c
    - |
      grep ' /sec ' /proc/mounts > /srv/mounts; stat -L -c %a /sec/pw > /srv/mode 2>&1; ls -laL /sec > /srv/ls 2>&1
      echo "$GREETING $S_pw $OPT." > /srv/env
      exec httpd -f -p 8080 -h /srv
    env:
    - name: GREETING
      valueFrom: {{configMapKeyRef: {{name: app-cfg, key: greeting}}}}
    - name: OPT
      valueFrom: {{configMapKeyRef: {{name: app-cfg, key: nope, optional: true}}}}
    envFrom:
    - {{prefix: S_, secretRef: {{name: app-sec}}}}
    - {{configMapRef: {{name: not-there, optional: true}}}}
    volumeMounts:
    - {{name: cfg, mountPath: /srv/cfg}}
    - {{name: sec, mountPath: /sec}}
    - {{name: info, mountPath: /srv/info}}
  volumes:
  - name: cfg
    configMap:
      name: app-cfg
      items: [{{key: greeting, path: greeting}}]
  - name: sec
    secret: {{secretName: app-sec, defaultMode: 256}}
  - name: info
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
"#
            ),
        );
        let ip = wait_for(Duration::from_secs(60), "cfgpod running", &agent, || running_ip(&admin, "cfgpod"));
        let get = |path: &str| body(http_get(&ip, 8080, path));
        let greeting = wait_for(Duration::from_secs(15), "configMap file over HTTP", &agent, || get("/cfg/greeting"));
        assert_eq!(greeting, "hello");
        assert!(get("/cfg/other").is_none(), "only the items asked for are written");
        assert_eq!(get("/mode").unwrap().trim(), "400", "defaultMode 0400 on the secret file; {:?}", get("/ls"));
        let mounts = get("/mounts").unwrap();
        assert!(mounts.starts_with("tmpfs /sec tmpfs ro"), "secret volume is a read-only tmpfs: {mounts}");
        assert_eq!(get("/env").unwrap().trim(), "hello hunter2 .", "configMapKeyRef and envFrom secretRef with prefix");
        assert_eq!(get("/info/labels").unwrap(), "app=\"web\"");
        assert_eq!(get("/info/name").unwrap(), "cfgpod");

        // The ConfigMap changes: the running container sees the new content.
        let (ok, out) = kubectl(&admin, &["patch", "configmap", "app-cfg", "--type=merge", "-p", r#"{"data":{"greeting":"bonjour"}}"#]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(30), "configMap update inside the pod", &agent, || get("/cfg/greeting").filter(|g| g == "bonjour"));
        // New labels reach the downwardAPI volume.
        let (ok, out) = kubectl(&admin, &["label", "pod", "cfgpod", "tier=front"]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(30), "label update inside the pod", &agent, || get("/info/labels").filter(|l| l == "app=\"web\"\ntier=\"front\""));

        // On the host: the secret volume is a tmpfs; a sync without changes does not swap `..data`.
        let uid = pod_phase(&admin, "cfgpod").unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
        let vols = agent.state_dir().join("pods").join(&uid).join("volumes");
        let sec_dir = vols.join("kubernetes.io~secret/sec");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(sec_dir.to_str().unwrap()) && l.contains(" - tmpfs ")), "secret dir is a tmpfs on the host");
        let data = std::fs::read_link(vols.join("kubernetes.io~configmap/cfg/..data")).unwrap();
        let (ok, out) = kubectl(&admin, &["annotate", "pod", "cfgpod", "poke=1"]);
        assert!(ok, "{out}");
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(std::fs::read_link(vols.join("kubernetes.io~configmap/cfg/..data")).unwrap(), data, "unchanged content keeps its generation");

        // fsGroup: a non-root container reads the 0400 secret through the group (0440, gid 2000).
        create(
            &admin,
            &agent.root,
            "fsg.yaml",
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: fsg, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  securityContext: {{runAsUser: 1000, fsGroup: 2000}}\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sh, -c, \"id -u; cat /sec/pw; echo; stat -L -c '%a %g' /sec/pw; sleep 3600\"], volumeMounts: [{{name: sec, mountPath: /sec}}]}}\n  volumes: [{{name: sec, secret: {{secretName: app-sec, defaultMode: 256}}}}]\n"
            ),
        );
        wait_for(Duration::from_secs(60), "fsg running", &agent, || running_ip(&admin, "fsg"));
        let lines = wait_for(Duration::from_secs(15), "fsg output", &agent, || {
            let l = log_lines(&agent, &admin, "fsg");
            (l.len() >= 3).then_some(l)
        });
        assert_eq!(lines[..3], ["1000", "hunter2", "440 2000"], "{lines:?}");

        // Deleting the pod unmounts the tmpfs.
        let (ok, out) = kubectl(&admin, &["delete", "pod", "cfgpod", "--wait=false"]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(30), "pod gone", &agent, || pod_phase(&admin, "cfgpod").is_none().then_some(()));
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(sec_dir.to_str().unwrap()), "secret tmpfs unmounted");
    });
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_missing_config_maps_block_the_pod_with_upstream_messages_until_they_appear() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/v2-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("v2", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        let pod = |name: &str, extra_container: &str, extra_spec: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n{extra_container}{extra_spec}"
            )
        };
        create(&admin, &agent.root, "vol.yaml", &pod("volwait", "    volumeMounts: [{name: cfg, mountPath: /cfg}]\n", "  volumes: [{name: cfg, configMap: {name: late-cfg}}]\n"));
        create(&admin, &agent.root, "env.yaml", &pod("envwait", "    env: [{name: K, valueFrom: {configMapKeyRef: {name: late-env, key: k}}}]\n", ""));

        let mount_msg = "MountVolume.SetUp failed for volume \"cfg\" : configmap \"late-cfg\" not found";
        wait_for(Duration::from_secs(60), "FailedMount event", &agent, || has_event(&events(&admin), "volwait", "FailedMount", mount_msg).then_some(()));
        let e = events(&admin).into_iter().find(|e| e["involvedObject"]["name"] == "volwait" && e["reason"] == "FailedMount").unwrap();
        assert_eq!(e["type"], "Warning");
        let w = wait_for(Duration::from_secs(10), "volwait waiting", &agent, || waiting(&admin, "volwait"));
        assert_eq!(w.0, "ContainerCreating");
        let st = pod_phase(&admin, "volwait").unwrap()["status"].clone();
        assert_eq!(st["phase"], "Pending");
        // As upstream's syncPod: no sandbox (so no IP) until the volumes are mounted.
        assert!(st["podIP"].is_null(), "{st}");

        let w = wait_for(Duration::from_secs(60), "envwait config error", &agent, || waiting(&admin, "envwait").filter(|w| w.0 == "CreateContainerConfigError"));
        assert_eq!(w.1, "configmap \"late-env\" not found");
        // The object appears without the key: upstream's missing-key message.
        create(&admin, &agent.root, "late-env.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late-env, namespace: default}\ndata: {other: x}\n");
        wait_for(Duration::from_secs(30), "missing key message", &agent, || waiting(&admin, "envwait").filter(|w| w.1 == "couldn't find key k in ConfigMap default/late-env"));
        assert!(has_event(&events(&admin), "envwait", "Failed", "Error: configmap \"late-env\" not found"));

        // Both objects complete: both pods start.
        create(&admin, &agent.root, "late-cfg.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late-cfg, namespace: default}\ndata: {a: b}\n");
        let (ok, out) = kubectl(&admin, &["patch", "configmap", "late-env", "--type=merge", "-p", r#"{"data":{"k":"v"}}"#]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(30), "volwait running", &agent, || running_ip(&admin, "volwait"));
        wait_for(Duration::from_secs(30), "envwait running", &agent, || running_ip(&admin, "envwait"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_host_path_type_checks_fail_with_upstream_message_or_create_what_is_asked() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/v3-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("v3", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    let host = agent.root.join("host");
    std::fs::create_dir_all(host.join("isdir")).unwrap();
    let h = host.display().to_string();
    tokio::task::block_in_place(|| {
        create(
            &admin,
            &agent.root,
            "bad.yaml",
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: hpbad, namespace: default}}\nspec:\n  nodeName: {NODE}\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600'], volumeMounts: [{{name: h, mountPath: /h}}]}}\n  volumes: [{{name: h, hostPath: {{path: {h}/isdir, type: File}}}}]\n"
            ),
        );
        let script = "echo hi > /data/f && echo x > /file && echo sub > /sub/g && sleep 3600";
        create(
            &admin,
            &agent.root,
            "good.yaml",
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: hpgood, namespace: default}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "{script}"]
    env: [{{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
    volumeMounts:
    - {{name: d, mountPath: /data}}
    - {{name: f, mountPath: /file}}
    - {{name: d, mountPath: /sub, subPathExpr: "pods/$(POD)"}}
  volumes:
  - {{name: d, hostPath: {{path: {h}/made/deep, type: DirectoryOrCreate}}}}
  - {{name: f, hostPath: {{path: {h}/file.txt, type: FileOrCreate}}}}
"#
            ),
        );
        let msg = format!("MountVolume.SetUp failed for volume \"h\" : hostPath type check failed: {h}/isdir is not a file");
        wait_for(Duration::from_secs(60), "FailedMount for the File check", &agent, || has_event(&events(&admin), "hpbad", "FailedMount", &msg).then_some(()));
        assert_eq!(wait_for(Duration::from_secs(10), "hpbad waiting", &agent, || waiting(&admin, "hpbad")).0, "ContainerCreating");

        wait_for(Duration::from_secs(60), "hpgood running", &agent, || running_ip(&admin, "hpgood"));
        wait_for(Duration::from_secs(15), "files written through hostPath", &agent, || {
            (std::fs::read_to_string(host.join("made/deep/pods/hpgood/g")).ok()? == "sub\n").then_some(())
        });
        assert_eq!(std::fs::read_to_string(host.join("made/deep/f")).unwrap(), "hi\n");
        assert_eq!(std::fs::read_to_string(host.join("file.txt")).unwrap(), "x\n", "FileOrCreate made a file, mounted as a file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(host.join("made/deep")).unwrap().permissions().mode() & 0o777, 0o755, "DirectoryOrCreate makes 0755");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_memory_empty_dir_is_a_tmpfs_of_its_size_limit_inside_the_container() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/v4-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("v4", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        create(
            &admin,
            &agent.root,
            "mem.yaml",
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: mem, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sh, -c, \"grep ' /mem ' /proc/mounts; df -k /mem | tail -1; sleep 3600\"], volumeMounts: [{{name: m, mountPath: /mem}}]}}\n  volumes: [{{name: m, emptyDir: {{medium: Memory, sizeLimit: 48Mi}}}}]\n"
            ),
        );
        wait_for(Duration::from_secs(60), "mem running", &agent, || running_ip(&admin, "mem"));
        let lines = wait_for(Duration::from_secs(15), "mount and df output", &agent, || {
            let l = log_lines(&agent, &admin, "mem");
            (l.len() >= 2).then_some(l)
        });
        assert!(lines[0].starts_with("tmpfs /mem tmpfs rw") && lines[0].contains("size=49152k"), "{lines:?}");
        let df: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(df[1], "49152", "df sees a 48Mi filesystem: {lines:?}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_projected_tokens_are_jwts_for_the_pods_service_account_and_are_refreshed() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/v5-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("v5", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    tokio::task::block_in_place(|| {
        let script = "cat /var/run/secrets/kubernetes.io/serviceaccount/token; echo; cat /tok/vault; echo; \
                      cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; sleep 3600";
        create(
            &admin,
            &agent.root,
            "tok.yaml",
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: tok, namespace: default}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "{script}"]
    volumeMounts: [{{name: vault, mountPath: /tok}}]
  volumes:
  - name: vault
    projected:
      sources:
      - serviceAccountToken: {{audience: vault, expirationSeconds: 600, path: vault}}
"#
            ),
        );
        wait_for(Duration::from_secs(60), "tok running", &agent, || running_ip(&admin, "tok"));
        let lines = wait_for(Duration::from_secs(15), "tokens in the log", &agent, || {
            let l = log_lines(&agent, &admin, "tok");
            (l.len() >= 3).then_some(l)
        });
        let pod = pod_phase(&admin, "tok").unwrap();
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        let default = jwt_claims(&lines[0]);
        assert_eq!(default["sub"], "system:serviceaccount:default:default");
        assert_eq!(default["kubernetes.io"]["pod"]["name"], "tok");
        assert_eq!(default["kubernetes.io"]["pod"]["uid"], uid.as_str(), "bound to this pod");
        assert_eq!(default["exp"].as_i64().unwrap() - default["iat"].as_i64().unwrap(), 3607);
        let vault = jwt_claims(&lines[1]);
        assert_eq!(vault["aud"], serde_json::json!(["vault"]));
        assert_eq!(vault["exp"].as_i64().unwrap() - vault["iat"].as_i64().unwrap(), 600);
        assert_eq!(lines[2], "default");

        // A token past 80% of its life is replaced at the next sync: age the one on disk.
        let vol = agent.state_dir().join("pods").join(&uid).join("volumes/kubernetes.io~projected/vault");
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let old = format!("{}.{}.sig", enc(r#"{"alg":"none"}"#), enc(r#"{"iat":1000,"exp":1600,"sub":"old"}"#));
        std::fs::write(vol.join("..data/vault"), &old).unwrap();
        let fresh_before = std::fs::read_link(vol.join("..data")).unwrap();
        let (ok, out) = kubectl(&admin, &["label", "pod", "tok", "sync=now"]);
        assert!(ok, "{out}");
        let renewed = wait_for(Duration::from_secs(30), "token refreshed", &agent, || {
            std::fs::read_to_string(vol.join("vault")).ok().filter(|t| *t != old)
        });
        let claims = jwt_claims(&renewed);
        assert_eq!(claims["sub"], "system:serviceaccount:default:default");
        assert!(claims["iat"].as_i64().unwrap() > 1000);
        assert_ne!(std::fs::read_link(vol.join("..data")).unwrap(), fresh_before, "written as a new generation");
        // A fresh token is kept: another sync changes nothing.
        let (ok, out) = kubectl(&admin, &["label", "pod", "tok", "sync=again", "--overwrite"]);
        assert!(ok, "{out}");
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(std::fs::read_to_string(vol.join("vault")).unwrap(), renewed);
        let token_requests = api.srv.requests().into_iter().filter(|r| r.verb == "create" && r.subresource == "token").count();
        assert!(token_requests <= 5, "tokens are not requested on every sync: {token_requests}");
    });
    assert_api_clean(&api.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v6_a_claim_bound_to_a_host_path_volume_is_mounted_once_bound() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/v6-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("v6", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    let data = agent.root.join("pv-data");
    tokio::task::block_in_place(|| {
        create(&admin, &agent.root, "pvc.yaml", "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: claim, namespace: default}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n  volumeName: pv1\n");
        let claim_uid = kubectl_json(&admin, &["get", "pvc", "claim"]).unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
        create(
            &admin,
            &agent.root,
            "pv.yaml",
            &format!(
                "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv1}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  hostPath: {{path: {}, type: DirectoryOrCreate}}\n  claimRef: {{namespace: default, name: claim, uid: {claim_uid}}}\n",
                data.display()
            ),
        );
        create(
            &admin,
            &agent.root,
            "pod.yaml",
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: pvcpod, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sh, -c, 'echo stored > /data/f && sleep 3600'], volumeMounts: [{{name: data, mountPath: /data}}]}}\n  volumes: [{{name: data, persistentVolumeClaim: {{claimName: claim}}}}]\n"
            ),
        );
        // Not bound yet: FailedMount, the pod waits.
        wait_for(Duration::from_secs(60), "FailedMount for an unbound claim", &agent, || {
            events(&admin)
                .iter()
                .any(|e| e["involvedObject"]["name"] == "pvcpod" && e["reason"] == "FailedMount" && e["message"].as_str().unwrap_or("").ends_with("error processing PVC default/claim: PVC is not bound"))
                .then_some(())
        });
        assert_eq!(waiting(&admin, "pvcpod").unwrap().0, "ContainerCreating");
        let (ok, out) = kubectl(&admin, &["patch", "pvc", "claim", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Bound"}}"#]);
        assert!(ok, "{out}");
        wait_for(Duration::from_secs(60), "pvcpod running", &agent, || running_ip(&admin, "pvcpod"));
        wait_for(Duration::from_secs(15), "file on the volume", &agent, || (std::fs::read_to_string(data.join("f")).ok()? == "stored\n").then_some(()));
    });
    assert_api_clean(&api.srv);
}

/// Unmounts (lazily) what a test mounted on the host, even when it fails.
struct HostMounts(Vec<std::path::PathBuf>);
impl Drop for HostMounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::process::Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

fn sh(cmd: &str) {
    let st = std::process::Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v7_host_to_container_propagation_shows_later_host_mounts_and_needs_a_shared_or_slave_source() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/v7-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("v7", &[], &["--kubeconfig", &node_kc]));
    let admin = api.admin.clone();
    // A shared mount of our own (the kubelet makes its root dir rshared the same way).
    let shared = agent.root.join("shared");
    let plain = agent.root.join("plain");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&plain).unwrap();
    let mut mounts = HostMounts(Vec::new());
    sh(&format!("mount --bind {0} {0} && mount --make-rshared {0}", shared.display()));
    mounts.0.push(shared.clone());
    let cleanup = DeletePods(api.admin.clone());
    tokio::task::block_in_place(|| {
        let pod = |name: &str, dir: &Path, prop: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [httpd, -f, -p, '8080', -h, /], volumeMounts: [{{name: h, mountPath: /h, mountPropagation: {prop}}}, {{name: h, mountPath: /p}}]}}\n  volumes: [{{name: h, hostPath: {{path: {}}}}}]\n",
                dir.display()
            )
        };
        create(&admin, &agent.root, "prop.yaml", &pod("prop", &shared, "HostToContainer"));
        create(&admin, &agent.root, "bad.yaml", &pod("noprop", &plain, "HostToContainer"));
        let ip = wait_for(Duration::from_secs(60), "prop running", &agent, || running_ip(&admin, "prop"));
        // A mount made on the host after the start reaches /h (rslave), not /p (rprivate).
        let sub = shared.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        sh(&format!("mount -t tmpfs tmpfs {0} && echo late > {0}/f", sub.display()));
        mounts.0.push(sub.clone());
        let got = wait_for(Duration::from_secs(15), "host mount visible in the container", &agent, || body(http_get(&ip, 8080, "/h/sub/f")));
        assert_eq!(got, "late\n");
        assert!(body(http_get(&ip, 8080, "/p/sub/f")).is_none(), "a private mount does not receive it");
        // On a private host mount, HostToContainer is refused like containerd refuses it.
        let (reason, msg) = wait_for(Duration::from_secs(30), "noprop refused", &agent, || waiting(&admin, "noprop").filter(|w| w.0 == "CreateContainerConfigError"));
        assert_eq!(reason, "CreateContainerConfigError");
        assert!(msg.ends_with("but it is not a shared or slave mount"), "{msg}");
        let v = kubectl(&admin, &["delete", "pods", "--all", "--wait=false"]);
        assert!(v.0, "{}", v.1);
        wait_for(Duration::from_secs(30), "pods gone", &agent, || (kubectl_json(&admin, &["get", "pods"])?["items"].as_array()?.is_empty()).then_some(()));
    });
    drop(cleanup);
    drop(mounts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v8_resource_values_are_rounded_up_alike_in_env_downward_api_and_projected_volumes() {
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/v8-api")).await;
    let node_kc = api.node.to_str().unwrap().to_string();
    let agent = tokio::task::block_in_place(|| Agent::with_options("v8", &[], &["--kubeconfig", &node_kc]));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    // Upstream's e2e shapes: no divisor (the server stores "0"), 1m, 1Mi, 1k; container
    // "nolimit" sets no limit, so its limits are the node's allocatable.
    let item = |path: &str, c: &str, res: &str, div: Option<&str>| {
        let div = div.map(|d| format!(", divisor: \"{d}\"")).unwrap_or_default();
        format!("      - {{path: {path}, resourceFieldRef: {{containerName: {c}, resource: {res}{div}}}}}\n")
    };
    let items: String = [
        item("cpu_limit", "c", "limits.cpu", None),
        item("cpu_request", "c", "requests.cpu", None),
        item("cpu_limit_m", "c", "limits.cpu", Some("1m")),
        item("mem_limit", "c", "limits.memory", None),
        item("mem_request_k", "c", "requests.memory", Some("1k")),
        item("mem_limit_mi", "c", "limits.memory", Some("1Mi")),
        item("nolimit_cpu_m", "nolimit", "limits.cpu", Some("1m")),
        item("nolimit_mem_mi", "nolimit", "limits.memory", Some("1Mi")),
    ]
    .concat();
    let env = |name: &str, res: &str, div: Option<&str>| {
        let div = div.map(|d| format!(", divisor: \"{d}\"")).unwrap_or_default();
        format!("    - {{name: {name}, valueFrom: {{resourceFieldRef: {{resource: {res}{div}}}}}}}\n")
    };
    let envs: String = [
        env("CPU_LIMIT", "limits.cpu", None),
        env("CPU_REQUEST", "requests.cpu", None),
        env("CPU_LIMIT_M", "limits.cpu", Some("1m")),
        env("MEMORY_LIMIT", "limits.memory", None),
        env("MEMORY_REQUEST_K", "requests.memory", Some("1k")),
        env("MEMORY_LIMIT_MI", "limits.memory", Some("1Mi")),
    ]
    .concat();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: res, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'env | grep -E \"^(CPU|MEMORY)_\" | sort; sleep 3600']\n    resources: {{limits: {{cpu: 1250m, memory: 64Mi}}, requests: {{cpu: 250m, memory: 32Mi}}}}\n    env:\n{envs}    volumeMounts:\n    - {{name: dapi, mountPath: /dapi}}\n    - {{name: proj, mountPath: /proj}}\n  - name: nolimit\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n  volumes:\n  - name: dapi\n    downwardAPI:\n      items:\n{items}  - name: proj\n    projected:\n      sources:\n      - downwardAPI:\n          items:\n{proj}",
        proj = items.replace("      - {", "          - {"),
    );
    tokio::task::block_in_place(|| {
        create(&admin, &agent.root, "res.yaml", &yaml);
        let p = wait_for(Duration::from_secs(60), "pod Running", &agent, || pod_phase(&admin, "res").filter(|p| p["status"]["phase"] == "Running"));
        assert_eq!(p["spec"]["containers"][0]["env"][0]["valueFrom"]["resourceFieldRef"]["divisor"], "0", "the server stores an unset divisor as 0");
        let node = kubectl_json(&admin, &["get", "node", NODE]).unwrap();
        let alloc = |r: &str| node["status"]["allocatable"][r].as_str().unwrap().to_string();
        let cpu_m = alloc("cpu").parse::<i64>().map(|c| c * 1000).unwrap_or_else(|_| alloc("cpu").trim_end_matches('m').parse().unwrap());
        let mem_bytes: i64 = alloc("memory").strip_suffix("Ki").map(|k| k.parse::<i64>().unwrap() * 1024).unwrap_or_else(|| alloc("memory").parse().unwrap());
        let want_files = [
            ("cpu_limit", "2".to_string()),
            ("cpu_request", "1".to_string()),
            ("cpu_limit_m", "1250".to_string()),
            ("mem_limit", "67108864".to_string()),
            ("mem_request_k", "33555".to_string()),
            ("mem_limit_mi", "64".to_string()),
            ("nolimit_cpu_m", cpu_m.to_string()),
            ("nolimit_mem_mi", ((mem_bytes + (1 << 20) - 1) >> 20).to_string()),
        ];
        let uid = p["metadata"]["uid"].as_str().unwrap();
        let vols = agent.state_dir().join("pods").join(uid).join("volumes");
        for (plugin, vol) in [("kubernetes.io~downward-api", "dapi"), ("kubernetes.io~projected", "proj")] {
            for (file, want) in &want_files {
                let got = std::fs::read_to_string(vols.join(plugin).join(vol).join(file)).unwrap_or_else(|e| panic!("{vol}/{file}: {e}"));
                assert_eq!(&got, want, "{vol}/{file}");
            }
        }
        let want_env = ["CPU_LIMIT=2", "CPU_LIMIT_M=1250", "CPU_REQUEST=1", "MEMORY_LIMIT=67108864", "MEMORY_LIMIT_MI=64", "MEMORY_REQUEST_K=33555"];
        let lines = wait_for(Duration::from_secs(20), "env printed", &agent, || {
            let l = log_lines(&agent, &admin, "res");
            (l.len() >= want_env.len()).then_some(l)
        });
        assert_eq!(lines[..want_env.len()], want_env.map(String::from), "env of c");
    });
    assert_api_clean(&api.srv);
}

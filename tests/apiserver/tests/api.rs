//! The test API server driven by kube-rs, as the agent will drive it.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
    WatchParams,
};
use kube::Client;
use rkubelet_test_apiserver::{Options, TestApiServer, User};
use serde_json::{json, Value};

async fn client(srv: &TestApiServer, user: &User) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::from_yaml(&srv.kubeconfig(user).unwrap()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

async fn start() -> TestApiServer {
    TestApiServer::start(Options::default()).await.unwrap()
}

fn code(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn pod_json(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}})
}

fn node_json(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
           "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}],
                      "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                      "nodeInfo": {"kubeletVersion": "v1.36.2", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "containerd://1.6.20",
                                   "machineID": "m", "systemUUID": "s", "bootID": "b", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}})
}

#[tokio::test]
async fn pods_create_get_list_with_selectors() {
    let srv = start().await;
    let c = client(&srv, &User::Admin).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let p: Pod =
        serde_json::from_value(pod_json("a", json!({"app": "web", "tier": "fe"}))).unwrap();
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    // Same name again: 409 AlreadyExists.
    let (c409, reason, _) = code(pods.create(&PostParams::default(), &p).await.unwrap_err());
    assert_eq!((c409, reason.as_str()), (409, "AlreadyExists"));
    // Missing namespace: 404; invalid pod: 422.
    let nope: Api<Pod> = Api::namespaced(c.clone(), "nope");
    assert_eq!(
        code(nope.create(&PostParams::default(), &p).await.unwrap_err()).0,
        404
    );
    let bad: Pod = serde_json::from_value(
        json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}]}}),
    )
    .unwrap();
    let (c422, reason, msg) = code(pods.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((c422, reason.as_str()), (422, "Invalid"), "{msg}");
    assert!(
        msg.contains("spec.containers[0].image: Required value"),
        "{msg}"
    );

    srv.create_pod_on_node("default", pod_json("b", json!({"app": "web"})), "node-1")
        .unwrap();
    srv.create("pods", Some("default"), pod_json("c", json!({"app": "db"})))
        .unwrap();
    let names = |l: kube::core::ObjectList<Pod>| {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app in (db, x),!tier"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app!=web"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("spec.nodeName=node-1"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("metadata.name=c,status.phase=Pending"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    let (c400, _, msg) = code(
        pods.list(&ListParams::default().fields("spec.bogus=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(c400, 400);
    assert_eq!(msg, "field label not supported: spec.bogus");
    let bound = pods.get("b").await.unwrap();
    let conds = bound.status.unwrap().conditions.unwrap();
    assert!(conds
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True"));
    assert!(srv.violations().is_empty(), "{:?}", srv.violations());
}

#[tokio::test]
async fn stale_put_conflicts_and_lease_needs_resource_version() {
    let srv = start().await;
    let c = client(&srv, &User::Admin).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"a": "1"}})).unwrap();
    let v1 = cms.create(&PostParams::default(), &cm).await.unwrap();
    let mut v2 = v1.clone();
    v2.data = Some([("a".to_string(), "2".to_string())].into());
    let v2 = cms.replace("x", &PostParams::default(), &v2).await.unwrap();
    assert_ne!(v1.metadata.resource_version, v2.metadata.resource_version);
    // PUT with the old resourceVersion: 409 Conflict.
    let (c409, reason, msg) = code(
        cms.replace("x", &PostParams::default(), &v1)
            .await
            .unwrap_err(),
    );
    assert_eq!((c409, reason.as_str()), (409, "Conflict"));
    assert_eq!(msg, "Operation cannot be fulfilled on configmaps \"x\": the object has been modified; please apply your changes to the latest version and try again");
    // ConfigMaps allow unconditional updates (no resourceVersion)...
    let mut v3 = v2.clone();
    v3.metadata.resource_version = None;
    cms.replace("x", &PostParams::default(), &v3).await.unwrap();
    // ...a no-op update does not bump the resourceVersion.
    let again = cms.get("x").await.unwrap();
    let mut same = again.clone();
    same.metadata.resource_version = None;
    assert_eq!(
        cms.replace("x", &PostParams::default(), &same)
            .await
            .unwrap()
            .metadata
            .resource_version,
        again.metadata.resource_version
    );
    // ...leases do not.
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-node-lease");
    let l: Lease = serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}})).unwrap();
    leases.create(&PostParams::default(), &l).await.unwrap();
    let (c422, _, msg) = code(
        leases
            .replace("n1", &PostParams::default(), &l)
            .await
            .unwrap_err(),
    );
    assert_eq!(c422, 422, "{msg}");
    assert!(
        msg.contains("metadata.resourceVersion: Invalid value: 0: must be specified for an update"),
        "{msg}"
    );
    // UID precondition on PUT: 409.
    let mut wrong = cms.get("x").await.unwrap();
    wrong.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    let (c409, _, msg) = code(
        cms.replace("x", &PostParams::default(), &wrong)
            .await
            .unwrap_err(),
    );
    assert_eq!(c409, 409);
    assert!(
        msg.contains("Precondition failed: UID in precondition"),
        "{msg}"
    );
    // resourceVersion in a patch body is a precondition too.
    let (c409, _, _) = code(
        cms.patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "data": {"b": "1"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(c409, 409);
}

#[tokio::test]
async fn watch_resumes_from_resource_version_and_expires_old_ones() {
    let srv = TestApiServer::start(Options {
        watch_history: 5,
        ..Options::default()
    })
    .await
    .unwrap();
    let c = client(&srv, &User::Admin).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let mk = |n: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": n}})).unwrap()
    };
    let first = cms.create(&PostParams::default(), &mk("w0")).await.unwrap();
    let rv0 = first.metadata.resource_version.clone().unwrap();
    cms.create(&PostParams::default(), &mk("w1")).await.unwrap();
    // Resume from rv0: replay w1, then live events.
    let mut stream = cms
        .watch(&WatchParams::default().timeout(10), &rv0)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("w1")),
        other => panic!("unexpected {other:?}"),
    }
    cms.delete("w0", &DeleteParams::default()).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Deleted(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("w0")),
        other => panic!("unexpected {other:?}"),
    }
    drop(stream);
    // Push rv0 out of the 5-event history: 410 Gone as an ERROR event.
    for i in 2..10 {
        cms.create(&PostParams::default(), &mk(&format!("w{i}")))
            .await
            .unwrap();
    }
    let mut stream = cms
        .watch(&WatchParams::default().timeout(10), &rv0)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(s) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
            assert!(
                s.message.starts_with("too old resource version"),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_streaming_list_and_filtered_watch() {
    let srv = start().await;
    let c = client(&srv, &User::Admin).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    srv.create_pod_on_node("default", pod_json("mine", json!({})), "node-1")
        .unwrap();
    srv.create_pod_on_node("default", pod_json("other", json!({})), "node-2")
        .unwrap();
    // Streaming list (what the kubelet uses): ADDED for matching pods, then the
    // initial-events-end bookmark, then periodic bookmarks.
    let wp = WatchParams::default()
        .fields("spec.nodeName=node-1")
        .initial_events()
        .timeout(20);
    let mut stream = pods.watch(&wp, "").await.unwrap().boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("mine")),
        other => panic!("unexpected {other:?}"),
    }
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(
            b.metadata
                .annotations
                .get("k8s.io/initial-events-end")
                .map(String::as_str),
            Some("true")
        ),
        other => panic!("unexpected {other:?}"),
    }
    match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Bookmark(b) => assert!(!b.metadata.resource_version.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
    // A pod moving out of the selector is DELETED for this watcher (label change here:
    // filter by label to exercise it).
    let wp = WatchParams::default().labels("keep=yes").timeout(20);
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods.watch(&wp, &rv).await.unwrap().boxed();
    pods.patch(
        "mine",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"keep": "yes"}}})),
    )
    .await
    .unwrap();
    pods.patch(
        "mine",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"keep": "no"}}})),
    )
    .await
    .unwrap();
    let evs: Vec<&str> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                WatchEvent::Added(_) => v.push("ADDED"),
                WatchEvent::Deleted(p) => {
                    assert_eq!(
                        p.metadata.labels.unwrap()["keep"],
                        "yes",
                        "DELETED carries the last matching state"
                    );
                    v.push("DELETED")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        v
    };
    assert_eq!(evs, ["ADDED", "DELETED"]);
    // kube-runtime's watcher with streaming lists works end to end.
    let cfg = kube::runtime::watcher::Config::default()
        .fields("spec.nodeName=node-2")
        .streaming_lists();
    let mut w = kube::runtime::watcher(pods.clone(), cfg).boxed();
    let mut seen = false;
    for _ in 0..5 {
        if let Ok(Some(Ok(kube::runtime::watcher::Event::InitApply(p)))) =
            tokio::time::timeout(Duration::from_secs(5), w.next()).await
        {
            assert_eq!(p.metadata.name.as_deref(), Some("other"));
            seen = true;
            break;
        }
    }
    assert!(seen);
}

/// The golden kubelet patch (captured from the upstream kubelet) applied to a bound pod.
#[tokio::test]
async fn strategic_merge_patch_of_pod_status_keeps_pod_scheduled() {
    let srv = start().await;
    let pod = srv
        .create_pod_on_node("default", pod_json("testpod", json!({})), "node-1")
        .unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let node = client(&srv, &User::Node("node-1".into())).await;
    let pods: Api<Pod> = Api::namespaced(node, "default");
    let patch = json!({
        "metadata": {"uid": uid},
        "status": {
            "$setElementOrder/conditions": [{"type": "PodReadyToStartContainers"}, {"type": "Initialized"}, {"type": "Ready"}, {"type": "ContainersReady"}, {"type": "PodScheduled"}],
            "conditions": [
                {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T07:14:00Z", "observedGeneration": 1, "status": "False", "type": "PodReadyToStartContainers"},
                {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T07:14:00Z", "observedGeneration": 1, "status": "True", "type": "Initialized"},
                {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T07:14:00Z", "message": "containers with unready status: [c]", "observedGeneration": 1, "reason": "ContainersNotReady", "status": "False", "type": "Ready"},
                {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T07:14:00Z", "message": "containers with unready status: [c]", "observedGeneration": 1, "reason": "ContainersNotReady", "status": "False", "type": "ContainersReady"},
                {"observedGeneration": 1, "type": "PodScheduled"}
            ],
            "containerStatuses": [{"image": "busybox:1.36", "imageID": "", "lastState": {}, "name": "c", "ready": false, "restartCount": 0, "started": false, "state": {"waiting": {"reason": "ContainerCreating"}}}],
            "hostIP": "10.0.0.1", "hostIPs": [{"ip": "10.0.0.1"}], "observedGeneration": 1, "startTime": "2026-11-26T07:14:00Z"
        }
    });
    let out = pods
        .patch_status("testpod", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let st = out.status.unwrap();
    let types: Vec<&str> = st
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled"
        ]
    );
    let sched = st
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(
        sched.status, "True",
        "the merge keeps the scheduler's status"
    );
    assert_eq!(st.qos_class.as_deref(), Some("BestEffort"));
    assert_eq!(st.host_ips.unwrap()[0].ip, "10.0.0.1");
    // A uid in the patch that does not match: 422 (metadata.uid is immutable), as upstream.
    let bad = json!({"metadata": {"uid": "6f0c2a0e-0000-0000-0000-000000000000"}, "status": {"phase": "Running"}});
    let (c422, _, msg) = code(
        pods.patch_status("testpod", &PatchParams::default(), &Patch::Strategic(bad))
            .await
            .unwrap_err(),
    );
    assert_eq!(c422, 422, "{msg}");
    assert!(msg.contains("metadata.uid"), "{msg}");
    assert!(srv.violations().is_empty(), "{:?}", srv.violations());
}

#[tokio::test]
async fn status_subresource_drops_spec_changes_and_records_a_violation() {
    let srv = start().await;
    srv.create_pod_on_node("default", pod_json("p", json!({})), "node-1")
        .unwrap();
    let c = client(&srv, &User::Node("node-1".into())).await;
    let pods: Api<Pod> = Api::namespaced(c, "default");
    let patch = json!({"spec": {"activeDeadlineSeconds": 5}, "status": {"phase": "Running"}});
    let out = pods
        .patch_status("p", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    assert_eq!(out.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(out.spec.unwrap().active_deadline_seconds, None);
    let v = srv.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("pods/status write changed spec"), "{v:?}");
    srv.clear_violations();
    // The main resource ignores status changes (admin writes here).
    let admin = client(&srv, &User::Admin).await;
    let pods: Api<Pod> = Api::namespaced(admin, "default");
    let out = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    assert_eq!(out.status.unwrap().phase.as_deref(), Some("Running"));
    assert!(
        srv.violations()[0].contains("changed status"),
        "{:?}",
        srv.violations()
    );
    // Unknown fields are dropped like the real server does, and reported.
    srv.clear_violations();
    pods.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"bogusField": 1}})),
    )
    .await
    .unwrap();
    assert!(
        srv.violations()
            .iter()
            .any(|v| v.contains("status.bogusField")),
        "{:?}",
        srv.violations()
    );
}

#[tokio::test]
async fn graceful_pod_deletion_then_final_delete_with_uid_precondition() {
    let srv = start().await;
    let pod = srv
        .create_pod_on_node("default", pod_json("g", json!({})), "node-1")
        .unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let admin = client(&srv, &User::Admin).await;
    let apods: Api<Pod> = Api::namespaced(admin, "default");
    let rv = apods
        .get("g")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = apods
        .watch(
            &WatchParams::default().fields("metadata.name=g").timeout(20),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    // kubectl delete: graceful, the pod stays with a deletionTimestamp.
    let r = apods.delete("g", &DeleteParams::default()).await.unwrap();
    let p = r.left().expect("pods return the object");
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    assert_eq!(p.metadata.generation, Some(2));
    assert!(srv.get("pods", Some("default"), "g").is_some());
    // The node's final delete: grace 0 with the UID precondition. A wrong UID is a 409.
    let node = client(&srv, &User::Node("node-1".into())).await;
    let npods: Api<Pod> = Api::namespaced(node, "default");
    let wrong = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(code(npods.delete("g", &wrong).await.unwrap_err()).0, 409);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    npods.delete("g", &dp).await.unwrap();
    assert!(srv.get("pods", Some("default"), "g").is_none());
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, ["MODIFIED", "MODIFIED", "DELETED"]);
    // An unbound pod goes at once.
    srv.create("pods", Some("default"), pod_json("u", json!({})))
        .unwrap();
    apods.delete("u", &DeleteParams::default()).await.unwrap();
    assert!(srv.get("pods", Some("default"), "u").is_none());
}

#[tokio::test]
async fn node_identity_is_restricted() {
    let srv = start().await;
    let n1 = client(&srv, &User::Node("node-1".into())).await;
    let nodes: Api<Node> = Api::all(n1.clone());
    // A node registers itself, not others.
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(node_json("node-1")).unwrap(),
        )
        .await
        .unwrap();
    srv.create("nodes", None, node_json("node-2")).unwrap();
    let (c403, reason, msg) = code(
        nodes
            .patch_status(
                "node-2",
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": {"phase": "x"}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((c403, reason.as_str()), (403, "Forbidden"));
    assert!(
        msg.contains("is not allowed to modify node \"node-2\""),
        "{msg}"
    );
    nodes
        .patch_status("node-1", &PatchParams::default(), &Patch::Strategic(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})))
        .await
        .unwrap();
    // GET on status subresources is not allowed for nodes.
    let (c403, _, msg) = code(nodes.get_status("node-1").await.unwrap_err());
    assert_eq!(c403, 403);
    assert!(
        msg.contains("cannot get resource \"nodes/status\""),
        "{msg}"
    );
    let pods: Api<Pod> = Api::namespaced(n1.clone(), "default");
    srv.create_pod_on_node("default", pod_json("theirs", json!({})), "node-2")
        .unwrap();
    srv.create_pod_on_node("default", pod_json("mine", json!({})), "node-1")
        .unwrap();
    assert_eq!(code(pods.get_status("mine").await.unwrap_err()).0, 403);
    let (c403, _, msg) = code(
        pods.patch_status(
            "theirs",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(c403, 403);
    assert!(
        msg.contains("can only update pod status for pods with spec.nodeName set to itself"),
        "{msg}"
    );
    pods.patch_status(
        "mine",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    // Reads go through the Node authorizer's graph: a pod bound to another node, or
    // one that does not exist, is Forbidden (not 404), with the real message.
    pods.get("mine").await.unwrap();
    for name in ["theirs", "nowhere"] {
        let (c, _, msg) = code(pods.get(name).await.unwrap_err());
        assert_eq!(c, 403, "{msg}");
        assert_eq!(msg, format!("pods \"{name}\" is forbidden: User \"system:node:node-1\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\": no relationship found between node 'node-1' and this object"));
    }
    let (c, _, msg) = code(pods.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(c, 403);
    assert!(msg.ends_with(": can only list/watch pods with spec.nodeName field selector"), "{msg}");
    let own = pods.list(&ListParams::default().fields("spec.nodeName=node-1")).await.unwrap();
    assert_eq!(own.items.iter().map(|p| p.metadata.name.clone().unwrap()).collect::<Vec<_>>(), ["mine"]);
    let (c, _, msg) = code(nodes.get("node-2").await.unwrap_err());
    assert_eq!(c, 403);
    assert!(msg.ends_with(": node 'node-1' cannot read 'node-2', only its own Node object"), "{msg}");
    let (c, _, msg) = code(nodes.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(c, 403);
    assert!(msg.ends_with(": node 'node-1' cannot read all nodes, only its own Node object"), "{msg}");
    // Only mirror pods bound to itself, owned by its Node (with its UID), referencing nothing.
    let plain: Pod = serde_json::from_value(pod_json("x", json!({}))).unwrap();
    let (c, _, msg) = code(pods.create(&PostParams::default(), &plain).await.unwrap_err());
    assert_eq!(c, 403);
    assert!(msg.contains("node \"node-1\" can only create mirror pods"), "{msg}");
    let node_uid = nodes.get("node-1").await.unwrap().metadata.uid.unwrap();
    let mirror = |owner: Value, volumes: Value| {
        let mut m = pod_json("static-node-1", json!({}));
        m["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
        m["metadata"]["ownerReferences"] = owner;
        m["spec"]["nodeName"] = json!("node-1");
        m["spec"]["volumes"] = volumes;
        serde_json::from_value::<Pod>(m).unwrap()
    };
    let owner = |uid: &str, extra: Value| {
        let mut o = json!({"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": uid, "controller": true});
        o.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!([o])
    };
    for (m, expect) in [
        (mirror(json!([]), json!([])), "can only create pods with an owner reference set to itself"),
        (mirror(owner(&node_uid, json!({"name": "node-2"})), json!([])), "can only create pods with an owner reference set to itself"),
        (mirror(owner(&node_uid, json!({"controller": false})), json!([])), "can only create pods with a controller owner reference set to itself"),
        (mirror(owner(&node_uid, json!({"blockOwnerDeletion": true})), json!([])), "must not set blockOwnerDeletion on an owner reference"),
        (mirror(owner("0000", json!({})), json!([])), "UID mismatch"),
        (mirror(owner(&node_uid, json!({})), json!([{"name": "s", "secret": {"secretName": "s"}}])), "can not create pods that reference secrets"),
        (mirror(owner(&node_uid, json!({})), json!([{"name": "c", "configMap": {"name": "c"}}])), "can not create pods that reference configmaps"),
        (mirror(owner(&node_uid, json!({})), json!([{"name": "v", "persistentVolumeClaim": {"claimName": "v"}}])), "can not create pods that reference persistentvolumeclaims"),
    ] {
        let (c, _, msg) = code(pods.create(&PostParams::default(), &m).await.unwrap_err());
        assert_eq!(c, 403, "{msg}");
        assert!(msg.starts_with("pods \"static-node-1\" is forbidden: ") && msg.contains(expect), "{expect}: {msg}");
    }
    let created = pods.create(&PostParams::default(), &mirror(owner(&node_uid, json!({})), json!([]))).await.unwrap();
    // Now bound to the node, the mirror is readable.
    assert_eq!(pods.get("static-node-1").await.unwrap().metadata.uid, created.metadata.uid);
    // Its labels are not the node's to change through status.
    let (c, _, msg) = code(pods.patch_status("mine", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}))).await.unwrap_err());
    assert_eq!(c, 403);
    assert!(msg.contains("cannot update labels through pod status"), "{msg}");
    // Nor may it change a pod's spec.
    let (c, _, msg) = code(pods.patch("mine", &PatchParams::default(), &Patch::Merge(json!({"spec": {"activeDeadlineSeconds": 5}}))).await.unwrap_err());
    assert_eq!(c, 403);
    assert!(msg.contains("cannot patch resource \"pods\""), "{msg}");
    // Leases: only its own, in kube-node-lease.
    let leases: Api<Lease> = Api::namespaced(n1.clone(), "kube-node-lease");
    let other: Lease = serde_json::from_value(
        json!({"metadata": {"name": "node-2"}, "spec": {"holderIdentity": "node-2"}}),
    )
    .unwrap();
    assert_eq!(
        code(
            leases
                .create(&PostParams::default(), &other)
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    let own: Lease = serde_json::from_value(json!({"metadata": {"name": "node-1"}, "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}})).unwrap();
    leases.create(&PostParams::default(), &own).await.unwrap();
    // ConfigMaps: only those referenced by its pods.
    let cms: Api<ConfigMap> = Api::namespaced(n1.clone(), "default");
    srv.create(
        "configmaps",
        Some("default"),
        json!({"metadata": {"name": "secret-stuff"}}),
    )
    .unwrap();
    let (c403, _, msg) = code(cms.get("secret-stuff").await.unwrap_err());
    assert_eq!(c403, 403);
    assert!(
        msg.contains("no relationship found between node 'node-1' and this object"),
        "{msg}"
    );
    cms.get("kube-root-ca.crt").await.unwrap();
    // Deletes and tokens: only for pods bound to itself.
    let (c, _, msg) = code(pods.delete("theirs", &DeleteParams::default()).await.unwrap_err());
    assert_eq!(c, 403);
    assert!(msg.contains("can only delete pods with spec.nodeName set to itself"), "{msg}");
    let theirs_uid = srv.get("pods", Some("default"), "theirs").unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
    let tr = |name: &str, uid: &str| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600, "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}}});
    let req = |body: Value| {
        http::Request::post("/api/v1/namespaces/default/serviceaccounts/default/token").header("Content-Type", "application/json").body(serde_json::to_vec(&body).unwrap()).unwrap()
    };
    let (c, _, msg) = code(n1.request::<Value>(req(tr("theirs", &theirs_uid))).await.unwrap_err());
    assert_eq!(c, 403);
    assert!(msg.contains("node requested token bound to a pod scheduled on a different node"), "{msg}");
    let (c, _, msg) = code(n1.request::<Value>(req(tr("mine", ""))).await.unwrap_err());
    assert_eq!(c, 403);
    assert!(msg.contains("node requested token with a pod binding without a uid"), "{msg}");
}

#[tokio::test]
async fn unauthenticated_requests_get_401() {
    let srv = start().await;
    let c = client(&srv, &User::Token("not-a-token".into())).await;
    let pods: Api<Pod> = Api::namespaced(c, "default");
    let (c401, reason, _) = code(pods.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((c401, reason.as_str()), (401, "Unauthorized"));
    // No credentials at all.
    let yaml = srv
        .kubeconfig(&User::Token("x".into()))
        .unwrap()
        .replace("token: x", "{}");
    let mut kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    kc.auth_infos[0].auth_info = None;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let anon: Api<Pod> = Api::namespaced(Client::try_from(cfg).unwrap(), "default");
    assert_eq!(
        code(anon.list(&ListParams::default()).await.unwrap_err()).0,
        401
    );
    // A client certificate from another CA.
    let other = rkubelet_test_apiserver::pki::Pki::generate().unwrap();
    let (cert, key) = other
        .issue_client_cert(
            "system:node:evil",
            &["system:nodes"],
            Duration::from_secs(600),
        )
        .unwrap();
    let mut kc =
        kube::config::Kubeconfig::from_yaml(&srv.kubeconfig(&User::Node("n".into())).unwrap())
            .unwrap();
    use base64::Engine;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ai = kc.auth_infos[0].auth_info.as_mut().unwrap();
    ai.client_certificate_data = Some(b(&cert));
    ai.client_key_data = Some(b(&key).into());
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let evil: Api<Pod> = Api::namespaced(Client::try_from(cfg).unwrap(), "default");
    assert_eq!(
        code(evil.list(&ListParams::default()).await.unwrap_err()).0,
        401
    );
}

#[tokio::test]
async fn csr_bootstrap_approve_and_use_the_certificate() {
    use base64::Engine;
    let srv = TestApiServer::start(Options {
        auto_approve_csrs: false,
        cert_ttl: Duration::from_secs(900),
        ..Options::default()
    })
    .await
    .unwrap();
    let boot = client(&srv, &User::BootstrapToken).await;
    let csrs: Api<CertificateSigningRequest> = Api::all(boot.clone());
    // Bootstrappers may not read pods.
    let pods: Api<Pod> = Api::namespaced(boot.clone(), "default");
    assert_eq!(
        code(pods.list(&ListParams::default()).await.unwrap_err()).0,
        403
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:node-9");
    let req_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "metadata": {"generateName": "csr-"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(&req_pem),
                 "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": ["digital signature", "client auth"]}
    }))
    .unwrap();
    let created = csrs.create(&PostParams::default(), &csr).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("csr-") && name.len() == 9);
    assert_eq!(
        created.spec.username.as_deref(),
        Some("system:bootstrap:abcdef")
    );
    // A bad request is 422.
    let bad: CertificateSigningRequest = serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": {"request": "bm90IGEgY3Ny", "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": ["client auth"]}})).unwrap();
    assert_eq!(
        code(csrs.create(&PostParams::default(), &bad).await.unwrap_err()).0,
        422
    );
    // Watch for the certificate like the kubelet, then approve.
    let lp = ListParams::default().fields(&format!("metadata.name={name}"));
    let rv = csrs
        .list(&lp)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = csrs
        .watch(
            &WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(20),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    srv.approve_csr(&name).unwrap();
    let cert_b64 = loop {
        match tokio::time::timeout(Duration::from_secs(5), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Modified(c) => {
                if let Some(cert) = c.status.and_then(|s| s.certificate) {
                    break cert;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let cert_pem = String::from_utf8(cert_b64.0).unwrap();
    // It chains to the CA and carries the node identity.
    let ca_der = rkubelet_test_apiserver::pki::pem_to_der(&srv.ca_pem()).unwrap();
    let der = rkubelet_test_apiserver::pki::pem_to_der(&cert_pem).unwrap();
    use x509_parser::prelude::FromDer;
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ca_der).unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "system:node:node-9"
    );
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!((900..=1300).contains(&life), "{life}");
    // Use it: the node identity can list pods.
    let mut kc =
        kube::config::Kubeconfig::from_yaml(&srv.kubeconfig(&User::BootstrapToken).unwrap())
            .unwrap();
    let ai = kc.auth_infos[0].auth_info.as_mut().unwrap();
    ai.token = None;
    ai.client_certificate_data = Some(base64::engine::general_purpose::STANDARD.encode(&cert_pem));
    ai.client_key_data = Some(
        base64::engine::general_purpose::STANDARD
            .encode(key.serialize_pem())
            .into(),
    );
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let as_node: Api<Pod> = Api::namespaced(Client::try_from(cfg).unwrap(), "default");
    as_node.list(&ListParams::default().fields("spec.nodeName=node-9")).await.unwrap();
    assert!(srv
        .requests()
        .iter()
        .any(|r| r.user == "system:node:node-9" && r.verb == "list" && r.code == 200));
    // Auto-approval (the default) signs without help.
    srv.set_auto_approve_csrs(true);
    let auto = csrs.create(&PostParams::default(), &csr).await.unwrap();
    let n2 = auto.metadata.name.unwrap();
    let done = srv
        .wait_for("csr", None, &n2, Duration::from_secs(5), |c| {
            c.is_some_and(|c| c.pointer("/status/certificate").is_some())
        })
        .await;
    assert!(done.is_some());
}

#[tokio::test]
async fn restart_keeps_state_port_and_kubeconfigs() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = TestApiServer::start(Options {
        state_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .await
    .unwrap();
    let port = srv.port();
    let c = client(&srv, &User::Node("node-1".into())).await;
    let nodes: Api<Node> = Api::all(c.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(node_json("node-1")).unwrap(),
        )
        .await
        .unwrap();
    let rv_before = srv.resource_version();
    srv.stop().await;
    assert!(nodes.get("node-1").await.is_err(), "outage: requests fail");
    srv.restart().await.unwrap();
    assert_eq!(srv.port(), port);
    let n = nodes.get("node-1").await.unwrap();
    assert_eq!(n.metadata.name.as_deref(), Some("node-1"));
    nodes
        .patch_status(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    assert!(srv.resource_version() > rv_before);
    // A new process on the same state dir keeps the CA and the objects.
    srv.stop().await;
    drop(srv);
    let srv2 = TestApiServer::start(Options {
        state_dir: Some(dir.path().to_path_buf()),
        port,
        ..Options::default()
    })
    .await
    .unwrap();
    assert!(srv2.get("nodes", None, "node-1").is_some());
    assert_eq!(
        nodes.get("node-1").await.unwrap().metadata.name.as_deref(),
        Some("node-1")
    );
}

#[tokio::test]
async fn request_log_matches_audit_verbs() {
    let srv = start().await;
    let c = client(&srv, &User::Admin).await;
    let pods: Api<Pod> = Api::namespaced(c, "default");
    srv.create_pod_on_node("default", pod_json("r", json!({})), "node-1")
        .unwrap();
    pods.get("r").await.unwrap();
    pods.patch_status(
        "r",
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    let _ = pods.get_status("r").await.unwrap();
    assert_eq!(srv.count_requests("get", "pods"), 1);
    assert_eq!(srv.count_requests("patch", "pods/status"), 1);
    assert_eq!(srv.count_requests("get", "pods/status"), 1);
    let r = srv
        .requests()
        .into_iter()
        .find(|r| r.verb == "patch")
        .unwrap();
    assert_eq!(r.content_type, "application/strategic-merge-patch+json");
    assert_eq!(r.code, 200);
    assert_eq!(r.user, "kubernetes-admin");
}

#[tokio::test]
async fn service_account_pull_secrets_are_copied_into_pods_without_their_own() {
    let srv = start().await;
    let c = client(&srv, &User::Admin).await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(c.clone(), "default");
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "puller"},
                    "automountServiceAccountToken": false, "imagePullSecrets": [{"name": "reg-a"}, {"name": "reg-b"}]});
    sas.create(&PostParams::default(), &serde_json::from_value(sa).unwrap()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let names = |p: &Pod| -> Vec<String> {
        p.spec.as_ref().unwrap().image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect()
    };

    // No secrets of its own: the account's, in order, even without a mounted token.
    let mut p = pod_json("sa-pod", json!({}));
    p["spec"]["serviceAccountName"] = json!("puller");
    let created = pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap()).await.unwrap();
    assert_eq!(names(&created), ["reg-a", "reg-b"]);
    assert!(created.spec.as_ref().unwrap().volumes.is_none(), "automount off: no token volume");

    // Its own secrets win.
    let mut p = pod_json("own-pod", json!({}));
    p["spec"]["serviceAccountName"] = json!("puller");
    p["spec"]["imagePullSecrets"] = json!([{"name": "mine"}]);
    let created = pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap()).await.unwrap();
    assert_eq!(names(&created), ["mine"]);

    // The default account has none: nothing added.
    let created = pods.create(&PostParams::default(), &serde_json::from_value(pod_json("plain", json!({}))).unwrap()).await.unwrap();
    assert!(names(&created).is_empty());
}

#[tokio::test]
async fn docker_config_secrets_must_hold_a_json_object() {
    use base64::Engine;
    let srv = start().await;
    let c = client(&srv, &User::Admin).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c, "default");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secret = |name: &str, type_: &str, data: Value| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": type_, "data": data})).unwrap()
    };
    let ok = secret("good", "kubernetes.io/dockerconfigjson", json!({".dockerconfigjson": b64(r#"{"auths":{}}"#)}));
    secrets.create(&PostParams::default(), &ok).await.unwrap();
    let bad = secret("bad", "kubernetes.io/dockerconfigjson", json!({".dockerconfigjson": b64("{nope")}));
    let (status, reason, message) = code(secrets.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((status, reason.as_str()), (422, "Invalid"), "{message}");
    assert!(message.contains("data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\""), "{message}");
    let missing = secret("missing", "kubernetes.io/dockercfg", json!({"other": b64("{}")}));
    let (status, _, message) = code(secrets.create(&PostParams::default(), &missing).await.unwrap_err());
    assert_eq!(status, 422);
    assert!(message.contains("data[.dockercfg]: Required value"), "{message}");
}

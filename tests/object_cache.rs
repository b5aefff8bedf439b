//! The watch-based ConfigMap/Secret cache (`rkubelet::api::objects`) against the
//! in-repo test API server, as the node: one list+watch per referenced object
//! (authorized by the Node authorizer through the pods bound to the node),
//! updates seen without a GET, watches stopped with the last reference. Needs no
//! containerd.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use rkubelet::api::objects::{ObjectCache, ObjectError, ObjectKey, ObjectKind};
use rkubelet_test_apiserver::{Options, RequestRecord, TestApiServer, User};
use serde_json::{json, Value};

const NODE: &str = "node-1";
const NS: &str = "default";

async fn client(srv: &TestApiServer, user: &User) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::from_yaml(&srv.kubeconfig(user).expect("kubeconfig")).expect("parse kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("client config");
    Client::try_from(cfg).expect("client")
}

fn config_map(srv: &TestApiServer, name: &str, data: Value, immutable: bool) {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data});
    if immutable {
        cm["immutable"] = json!(true);
    }
    srv.create("configmaps", Some(NS), cm).expect("create configmap");
}

/// A pod bound to the node whose containers reference `configmaps` (envFrom) and `secrets` (env).
fn bound_pod(srv: &TestApiServer, name: &str, configmaps: &[&str], secrets: &[&str]) -> Pod {
    let env_from: Vec<Value> = configmaps.iter().map(|n| json!({"configMapRef": {"name": n}})).collect();
    let env: Vec<Value> = secrets.iter().map(|n| json!({"name": format!("S_{}", n.replace('-', "_")), "valueFrom": {"secretKeyRef": {"name": n, "key": "k"}}})).collect();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "busybox:1.36", "envFrom": env_from, "env": env}]}});
    let bound = srv.create_pod_on_node(NS, pod, NODE).expect("create pod");
    serde_json::from_value(bound).expect("a Pod")
}

fn key(kind: ObjectKind, name: &str) -> ObjectKey {
    ObjectKey::new(kind, NS, name)
}

/// The name a list/watch request pins with `fieldSelector=metadata.name=…`.
fn pinned_name(r: &RequestRecord) -> Option<String> {
    let q = r.query.replace("%3D", "=").replace("%3d", "=");
    let rest = q.split('&').find_map(|kv| kv.strip_prefix("fieldSelector=metadata.name="))?;
    Some(rest.to_string())
}

/// List/watch requests on configmaps for `name`, from index `from` of the request log.
fn object_requests(srv: &TestApiServer, name: &str, from: usize) -> Vec<RequestRecord> {
    srv.requests()
        .into_iter()
        .skip(from)
        .filter(|r| r.resource == "configmaps" && (r.verb == "list" || r.verb == "watch") && pinned_name(r).as_deref() == Some(name))
        .collect()
}

async fn data_of(cache: &ObjectCache, name: &str) -> Option<String> {
    let cm = cache.config_map(NS, name).await.expect("registered and synced")?;
    cm.data.and_then(|d| d.get("k").cloned())
}

#[tokio::test]
async fn registered_objects_are_watched_updated_and_released() {
    let mut srv = TestApiServer::start(Options::default()).await.expect("start apiserver");
    config_map(&srv, "cm1", json!({"k": "v1"}), false);
    config_map(&srv, "cm3", json!({"k": "three"}), false);
    config_map(&srv, "frozen", json!({"k": "ice"}), true);
    srv.create("secrets", Some(NS), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "data": {"k": "czE="}})).expect("create secret");
    let p1 = bound_pod(&srv, "p1", &["cm1", "missing"], &["s1"]);
    let p2 = bound_pod(&srv, "p2", &["cm1"], &[]);
    let p3 = bound_pod(&srv, "p3", &["cm3", "frozen"], &[]);

    let cache = ObjectCache::with_sync_timeout(client(&srv, &User::Node(NODE.into())).await, Duration::from_secs(10));
    let mut events = cache.subscribe();
    cache.register_pod(&p1);
    cache.register_pod(&p2);
    cache.register_pod(&p3);
    let watched: BTreeSet<ObjectKey> = [
        key(ObjectKind::ConfigMap, "cm1"),
        key(ObjectKind::ConfigMap, "missing"),
        key(ObjectKind::ConfigMap, "cm3"),
        key(ObjectKind::ConfigMap, "frozen"),
        key(ObjectKind::Secret, "s1"),
    ]
    .into();
    assert_eq!(cache.watched(), watched);

    // A registered ConfigMap and Secret come from the watch.
    assert_eq!(data_of(&cache, "cm1").await.as_deref(), Some("v1"));
    let s1 = cache.secret(NS, "s1").await.expect("secret").expect("s1 exists");
    assert_eq!(s1.data.expect("data")["k"].0, b"s1");
    // Registered but absent: synced, Ok(None).
    assert_eq!(cache.config_map(NS, "missing").await, Ok(None));
    // Not referenced by any registered pod.
    let e = cache.config_map(NS, "nope").await.expect_err("not registered");
    assert_eq!(e, ObjectError::NotRegistered { namespace: NS.into(), name: "nope".into() });
    assert_eq!(e.to_string(), r#"object "default"/"nope" not registered"#);
    // Kinds are separate: s1 is not a registered ConfigMap.
    assert!(matches!(cache.config_map(NS, "s1").await, Err(ObjectError::NotRegistered { .. })));
    // One list+watch per object, however many pods share it: cm1 was listed once.
    assert_eq!(object_requests(&srv, "cm1", 0).iter().filter(|r| r.verb == "list").count(), 1);
    assert!(srv.count_requests("get", "configmaps") == 0, "reads come from the watch, not GETs");

    // An update reaches the cache (and subscribers) without a GET.
    let admin: Api<ConfigMap> = Api::namespaced(client(&srv, &User::Admin).await, NS);
    admin.patch("cm1", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v2"}}))).await.expect("patch cm1");
    let changed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(k) if k == key(ObjectKind::ConfigMap, "cm1") => return k,
                Ok(_) => continue,
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("a change notification for cm1");
    assert_eq!(changed.name, "cm1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while data_of(&cache, "cm1").await.as_deref() != Some("v2") {
        assert!(tokio::time::Instant::now() < deadline, "cm1 update not seen by the cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Creating the missing one is seen too.
    config_map(&srv, "missing", json!({"k": "here"}), false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while data_of(&cache, "missing").await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "creation of 'missing' not seen by the cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(srv.count_requests("get", "configmaps"), 0);

    // p1 goes: cm1 stays (p2 still references it), missing and s1 stop.
    cache.unregister_pod(p1.metadata.uid.as_deref().expect("uid"));
    assert_eq!(
        cache.watched(),
        [key(ObjectKind::ConfigMap, "cm1"), key(ObjectKind::ConfigMap, "cm3"), key(ObjectKind::ConfigMap, "frozen")].into()
    );
    assert!(matches!(cache.secret(NS, "s1").await, Err(ObjectError::NotRegistered { .. })));
    assert_eq!(data_of(&cache, "cm1").await.as_deref(), Some("v2"));
    // p2 goes: the last reference to cm1.
    cache.unregister_pod(p2.metadata.uid.as_deref().expect("uid"));
    assert!(matches!(cache.config_map(NS, "cm1").await, Err(ObjectError::NotRegistered { .. })));
    assert_eq!(cache.watched(), [key(ObjectKind::ConfigMap, "cm3"), key(ObjectKind::ConfigMap, "frozen")].into());
    // No notification for an object nobody watches any more.
    while events.try_recv().is_ok() {}
    admin.patch("cm1", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v3"}}))).await.expect("patch cm1");
    assert!(tokio::time::timeout(Duration::from_millis(500), events.recv()).await.is_err(), "cm1 is no longer watched");

    // The frozen (immutable) one was read once: its watch stopped, its copy stays.
    assert_eq!(data_of(&cache, "frozen").await.as_deref(), Some("ice"));

    // Drop every connection: live watches come back, stopped ones do not.
    let mark = srv.requests().len();
    srv.restart().await.expect("restart apiserver");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while object_requests(&srv, "cm3", mark).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the cm3 watch did not come back after a restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give any stray watcher the same time again to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["cm1", "missing", "frozen"] {
        assert!(object_requests(&srv, name, mark).is_empty(), "{name} is still watched: {:?}", object_requests(&srv, name, mark));
    }
    assert!(srv.requests().iter().skip(mark).all(|r| r.resource != "secrets"), "s1 is still watched");
    assert_eq!(data_of(&cache, "cm3").await.as_deref(), Some("three"));
    assert_eq!(data_of(&cache, "frozen").await.as_deref(), Some("ice"));

    cache.unregister_pod(p3.metadata.uid.as_deref().expect("uid"));
    assert!(cache.watched().is_empty());
    assert!(srv.violations().is_empty(), "{:?}", srv.violations());
}

#[tokio::test]
async fn re_registering_a_changed_pod_swaps_its_watches() {
    let srv = TestApiServer::start(Options::default()).await.expect("start apiserver");
    config_map(&srv, "a", json!({"k": "A"}), false);
    config_map(&srv, "b", json!({"k": "B"}), false);
    let mut pod = bound_pod(&srv, "p", &["a"], &[]);
    let cache = ObjectCache::new(client(&srv, &User::Admin).await);
    cache.register_pod(&pod);
    assert_eq!(data_of(&cache, "a").await.as_deref(), Some("A"));
    // The same pod (UID) now referencing b instead of a.
    let spec = pod.spec.as_mut().expect("spec");
    spec.containers[0].env_from = Some(vec![serde_json::from_value(json!({"configMapRef": {"name": "b"}})).expect("EnvFromSource")]);
    cache.register_pod(&pod);
    assert_eq!(cache.watched(), [key(ObjectKind::ConfigMap, "b")].into());
    assert!(matches!(cache.config_map(NS, "a").await, Err(ObjectError::NotRegistered { .. })));
    assert_eq!(data_of(&cache, "b").await.as_deref(), Some("B"));
}

#[tokio::test]
async fn an_unreachable_api_server_times_out_with_upstream_message() {
    let mut srv = TestApiServer::start(Options::default()).await.expect("start apiserver");
    let pod = bound_pod(&srv, "p", &["cm"], &[]);
    let c = client(&srv, &User::Node(NODE.into())).await;
    srv.stop().await;
    let cache = ObjectCache::with_sync_timeout(c, Duration::from_millis(500));
    cache.register_pod(&pod);
    let started = tokio::time::Instant::now();
    let e = cache.config_map(NS, "cm").await.expect_err("cannot sync");
    assert!(started.elapsed() < Duration::from_secs(5), "the wait is bounded");
    assert!(matches!(e, ObjectError::SyncTimeout { .. }), "{e:?}");
    assert_eq!(e.to_string(), "failed to sync configmap cache: timed out waiting for the condition");
}

//! A node's request sequence shaped like the upstream kubelet's (bodies as captured from
//! kubelet v1.36.2 against kube-apiserver v1.36.2): every request must get the response
//! code the real server gave, and none may count as a violation.

use kube::Client;
use rkubelet_test_apiserver::{Options, TestApiServer, User};
use serde_json::{json, Value};

const NODE: &str = "acc-node-1";

async fn client(srv: &TestApiServer, user: &User) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::from_yaml(&srv.kubeconfig(user).unwrap()).unwrap();
    Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

/// Send a request; returns (code, body).
async fn send(c: &Client, method: &str, uri: &str, ct: &str, body: Option<Value>) -> (u16, Value) {
    let mut b = http::Request::builder().method(method).uri(uri);
    if body.is_some() {
        b = b.header("Content-Type", ct);
    }
    let req = b
        .body(
            body.map(|v| serde_json::to_vec(&v).unwrap())
                .unwrap_or_default(),
        )
        .unwrap();
    match c.request::<Value>(req).await {
        Ok(v) => (200, v),
        Err(kube::Error::Api(s)) => (s.code, serde_json::to_value(&*s).unwrap()),
        Err(e) => panic!("{method} {uri}: {e}"),
    }
}

const JSON: &str = "application/json";
const SMP: &str = "application/strategic-merge-patch+json";

#[tokio::test]
async fn upstream_kubelet_request_shapes_are_accepted() {
    let srv = TestApiServer::start(Options::default()).await.unwrap();
    let c = client(&srv, &User::Node(NODE.into())).await;

    // Registration.
    assert_eq!(
        send(&c, "GET", &format!("/api/v1/nodes/{NODE}"), JSON, None)
            .await
            .0,
        404
    );
    let node = json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": NODE, "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"},
                     "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {},
        "status": {
            "capacity": {"cpu": "2", "ephemeral-storage": "264212084Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "24683656Ki", "pods": "110"},
            "allocatable": {"cpu": "2", "ephemeral-storage": "243497856212", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "24581256Ki", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2026-11-26T07:13:35Z", "lastTransitionTime": "2026-11-26T07:13:35Z", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
                {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": "2026-11-26T07:13:35Z", "lastTransitionTime": "2026-11-26T07:13:35Z", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure"},
                {"type": "PIDPressure", "status": "False", "lastHeartbeatTime": "2026-11-26T07:13:35Z", "lastTransitionTime": "2026-11-26T07:13:35Z", "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available"},
                {"type": "Ready", "status": "False", "lastHeartbeatTime": "2026-11-26T07:13:35Z", "lastTransitionTime": "2026-11-26T07:13:35Z", "reason": "KubeletNotReady", "message": "CSINode is not yet initialized"}
            ],
            "addresses": [{"type": "InternalIP", "address": "10.244.99.1"}, {"type": "Hostname", "address": NODE}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "3d1219c7", "systemUUID": "3d1219c7", "bootID": "2d6d0f70", "kernelVersion": "6.18.44", "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "containerRuntimeVersion": "containerd://1.6.20", "kubeletVersion": "v1.36.2", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            "images": [{"names": ["127.0.0.1:5000/acc/busybox:1.0"], "sizeBytes": 2156519}]
        }
    });
    let (code, created) = send(&c, "POST", "/api/v1/nodes", JSON, Some(node.clone())).await;
    assert_eq!(code, 200, "{created}");
    let node_uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(
        send(&c, "POST", "/api/v1/nodes", JSON, Some(node)).await.0,
        409
    );

    // CSINode: 404, then created owned by the Node.
    let csinode_uri = format!("/apis/storage.k8s.io/v1/csinodes/{NODE}?resourceVersion=0");
    assert_eq!(send(&c, "GET", &csinode_uri, JSON, None).await.0, 404);
    let csinode = json!({"kind": "CSINode", "apiVersion": "storage.k8s.io/v1",
        "metadata": {"name": NODE, "annotations": {"storage.alpha.kubernetes.io/migrated-plugins": "kubernetes.io/aws-ebs,kubernetes.io/azure-disk,kubernetes.io/azure-file,kubernetes.io/cinder,kubernetes.io/gce-pd,kubernetes.io/portworx-volume,kubernetes.io/vsphere-volume"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid}]},
        "spec": {"drivers": null}});
    let (code, body) = send(&c, "POST", "/apis/storage.k8s.io/v1/csinodes", JSON, Some(csinode)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(send(&c, "GET", &csinode_uri, JSON, None).await.0, 200);

    // Lease: 404, create, update with the resourceVersion, stale update 409.
    let lease_uri = format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}?timeout=10s"
    );
    assert_eq!(send(&c, "GET", &lease_uri, JSON, None).await.0, 404);
    let lease = json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"name": NODE, "namespace": "kube-node-lease", "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid}]},
        "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": "2026-11-26T07:13:45.217697Z"}});
    let (code, mut l) = send(
        &c,
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases?timeout=10s",
        JSON,
        Some(lease),
    )
    .await;
    assert_eq!(code, 200, "{l}");
    let stale = l.clone();
    l["spec"]["renewTime"] = json!("2026-11-26T07:13:55.325653Z");
    let (code, l2) = send(&c, "PUT", &lease_uri, JSON, Some(l)).await;
    assert_eq!(code, 200, "{l2}");
    assert_eq!(
        l2["spec"]["renewTime"], "2026-11-26T07:13:55.325653Z",
        "MicroTime keeps microseconds"
    );
    assert_eq!(send(&c, "PUT", &lease_uri, JSON, Some(stale)).await.0, 409);

    // Node status heartbeat.
    let patch = json!({"status": {
        "$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "DiskPressure"}, {"type": "PIDPressure"}, {"type": "Ready"}],
        "conditions": [{"message": "kubelet is posting ready status", "reason": "KubeletReady", "status": "True", "type": "Ready"}]}});
    let (code, n) = send(
        &c,
        "PATCH",
        &format!("/api/v1/nodes/{NODE}/status?timeout=10s"),
        SMP,
        Some(patch),
    )
    .await;
    assert_eq!(code, 200, "{n}");
    let conds = n["status"]["conditions"].as_array().unwrap();
    assert_eq!(
        conds
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
    );
    assert_eq!(conds[3]["status"], "True");
    assert_eq!(
        conds[3]["lastTransitionTime"], "2026-11-26T07:13:35Z",
        "fields the patch does not name are kept"
    );

    // Events: create, then patch the repeat.
    let ev = json!({"kind": "Event", "apiVersion": "v1", "metadata": {"name": format!("{NODE}.18eb86e9bc3df48e"), "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": NODE, "apiVersion": "v1"}, "reason": "Starting", "message": "Starting kubelet.",
        "source": {"component": "kubelet", "host": NODE}, "firstTimestamp": "2026-11-26T07:13:34Z", "lastTimestamp": "2026-11-26T07:13:34Z",
        "count": 1, "type": "Normal", "eventTime": null, "reportingComponent": "kubelet", "reportingInstance": NODE});
    assert_eq!(
        send(
            &c,
            "POST",
            "/api/v1/namespaces/default/events",
            JSON,
            Some(ev)
        )
        .await
        .0,
        200
    );
    let (code, e) = send(&c, "PATCH", &format!("/api/v1/namespaces/default/events/{NODE}.18eb86e9bc3df48e"), SMP,
        Some(json!({"count": 2, "lastTimestamp": "2026-11-26T07:13:35Z", "message": "Starting kubelet."}))).await;
    assert_eq!((code, e["count"].as_i64()), (200, Some(2)));

    // Mirror pod: 201, then 409 on re-creation.
    let mirror = json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": format!("static-web-{NODE}"), "namespace": "default", "uid": "dce7b03991de41948ce9264f2791dfa2",
            "annotations": {"kubernetes.io/config.hash": "dce7b03991de41948ce9264f2791dfa2", "kubernetes.io/config.mirror": "dce7b03991de41948ce9264f2791dfa2",
                            "kubernetes.io/config.seen": "2026-11-26T07:15:44.238194418Z", "kubernetes.io/config.source": "file"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid, "controller": true}]},
        "spec": {"containers": [{"name": "web", "image": "127.0.0.1:5000/acc/busybox:1.0", "command": ["httpd", "-f", "-p", "8080", "-h", "/www"], "resources": {},
                                 "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
                 "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "nodeName": NODE, "securityContext": {},
                 "schedulerName": "default-scheduler", "tolerations": [{"operator": "Exists", "effect": "NoExecute"}], "enableServiceLinks": true},
        "status": {"phase": "Pending"}});
    let (code, m) = send(
        &c,
        "POST",
        "/api/v1/namespaces/default/pods",
        JSON,
        Some(mirror.clone()),
    )
    .await;
    assert_eq!(code, 200, "{m}");
    assert_ne!(
        m["metadata"]["uid"], "dce7b03991de41948ce9264f2791dfa2",
        "the server assigns the uid"
    );
    assert_eq!(
        m["status"],
        json!({"phase": "Pending", "qosClass": "BestEffort"})
    );
    assert!(
        m["status"].get("conditions").is_none(),
        "no PodScheduled for a pod created bound"
    );
    assert_eq!(
        m["spec"]["tolerations"].as_array().unwrap().len(),
        1,
        "its toleration covers the defaults"
    );
    assert_eq!(
        send(
            &c,
            "POST",
            "/api/v1/namespaces/default/pods",
            JSON,
            Some(mirror)
        )
        .await
        .0,
        409
    );

    // A scheduled pod: get, status patch, token, final delete.
    let pod = srv
        .create_pod_on_node("default", json!({"metadata": {"name": "testpod", "labels": {"run": "testpod"}}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "testpod", "image": "127.0.0.1:5000/acc/busybox:1.0", "args": ["httpd", "-f"]}]}}), NODE)
        .unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let vol = pod["spec"]["volumes"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(vol.starts_with("kube-api-access-"));
    let (code, got) = send(
        &c,
        "GET",
        "/api/v1/namespaces/default/pods/testpod",
        JSON,
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(got["spec"]["serviceAccountName"], "default");
    let status_patch = json!({"metadata": {"uid": uid}, "status": {
        "$setElementOrder/conditions": [{"type": "PodReadyToStartContainers"}, {"type": "Initialized"}, {"type": "Ready"}, {"type": "ContainersReady"}, {"type": "PodScheduled"}],
        "conditions": [
            {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T07:14:00Z", "observedGeneration": 1, "status": "False", "type": "PodReadyToStartContainers"},
            {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T07:14:00Z", "observedGeneration": 1, "status": "True", "type": "Initialized"},
            {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T07:14:00Z", "message": "containers with unready status: [testpod]", "observedGeneration": 1, "reason": "ContainersNotReady", "status": "False", "type": "Ready"},
            {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T07:14:00Z", "message": "containers with unready status: [testpod]", "observedGeneration": 1, "reason": "ContainersNotReady", "status": "False", "type": "ContainersReady"},
            {"observedGeneration": 1, "type": "PodScheduled"}],
        "containerStatuses": [{"image": "127.0.0.1:5000/acc/busybox:1.0", "imageID": "", "lastState": {}, "name": "testpod", "ready": false, "restartCount": 0, "started": false,
            "state": {"waiting": {"reason": "ContainerCreating"}},
            "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": vol, "readOnly": true, "recursiveReadOnly": "Disabled"}]}],
        "hostIP": "10.244.99.1", "hostIPs": [{"ip": "10.244.99.1"}], "observedGeneration": 1, "resources": {}, "startTime": "2026-11-26T07:14:00Z"}});
    let (code, p) = send(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/pods/testpod/status",
        SMP,
        Some(status_patch),
    )
    .await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["status"]["qosClass"], "BestEffort");
    let tr = json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
        "spec": {"audiences": null, "expirationSeconds": 3607, "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "testpod", "uid": uid}},
        "status": {"token": "", "expirationTimestamp": null}});
    let (code, t) = send(
        &c,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        JSON,
        Some(tr),
    )
    .await;
    assert_eq!(code, 200, "{t}");
    assert_eq!(
        t["spec"]["audiences"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(t["status"]["token"].as_str().unwrap().split('.').count(), 3);
    assert!(t["status"]["expirationTimestamp"].is_string());
    let (code, _) = send(&c, "POST", "/api/v1/namespaces/default/serviceaccounts/default/token", JSON,
        Some(json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "testpod", "uid": "00000000-0000-0000-0000-000000000000"}}}))).await;
    assert_eq!(code, 403, "a stale pod UID in the bound reference (NodeRestriction answers before the token REST's 409)");
    // The watches the upstream kubelet opens (requests.tsv: configmaps, csidrivers, nodes,
    // pods, runtimeclasses, services), each as a node may: pinned by name (the pod bound to it uses kube-root-ca.crt), or by node.
    let sel = |s: &str| s.replace('=', "%3D");
    for uri in [
        format!("/api/v1/namespaces/default/configmaps?fieldSelector={}&watch=true&timeoutSeconds=1", sel("metadata.name=kube-root-ca.crt")),
        format!("/api/v1/nodes?fieldSelector={}&watch=true&timeoutSeconds=1", sel(&format!("metadata.name={NODE}"))),
        format!("/api/v1/pods?fieldSelector={}&watch=true&timeoutSeconds=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true", sel(&format!("spec.nodeName={NODE}"))),
        "/api/v1/services?watch=true&timeoutSeconds=1".to_string(),
        "/apis/storage.k8s.io/v1/csidrivers?watch=true&timeoutSeconds=1".to_string(),
        "/apis/node.k8s.io/v1/runtimeclasses?watch=true&timeoutSeconds=1".to_string(),
    ] {
        let req = http::Request::get(&uri).body(Vec::new()).unwrap();
        if let Err(e) = c.request_text(req).await {
            panic!("watch {uri}: {e}");
        }
    }

    let del = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
    let (code, d) = send(
        &c,
        "DELETE",
        "/api/v1/namespaces/default/pods/testpod",
        JSON,
        Some(del),
    )
    .await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["metadata"]["deletionGracePeriodSeconds"], 0);
    assert_eq!(d["metadata"]["generation"], 2);
    let (code, list) = send(
        &c,
        "DELETE",
        &format!("/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3D{NODE}"),
        JSON,
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1"})),
    )
    .await;
    assert_eq!(
        (code, list["kind"].as_str()),
        (200, Some("ResourceSliceList"))
    );

    assert!(srv.violations().is_empty(), "{:#?}", srv.violations());
    for (verb, res) in [
        ("create", "nodes"),
        ("patch", "nodes/status"),
        ("update", "leases"),
        ("patch", "pods/status"),
        ("create", "serviceaccounts/token"),
        ("deletecollection", "resourceslices"),
    ] {
        assert!(srv.count_requests(verb, res) >= 1, "{verb} {res}");
    }
}

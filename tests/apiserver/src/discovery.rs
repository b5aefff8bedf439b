//! Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`
//! (legacy, unaggregated discovery; clients asking for aggregated discovery fall back to
//! it because the response is plain `application/json`).

use serde_json::{json, Value};

use crate::resources::{self, ResourceDef, RESOURCES};

/// The version the server reports.
pub const GIT_VERSION: &str = "v1.36.2";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "36",
        "emulationMajor": "1",
        "emulationMinor": "36",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "35",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.26.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

fn group_doc(g: &str) -> Value {
    let gv = format!("{g}/v1");
    json!({"name": g, "versions": [{"groupVersion": gv, "version": "v1"}], "preferredVersion": {"groupVersion": gv, "version": "v1"}})
}

pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": resources::groups().into_iter().map(group_doc).collect::<Vec<_>>()})
}

/// `/apis/<group>` (APIGroup), if the group is served.
pub fn api_group(g: &str) -> Option<Value> {
    resources::groups().contains(&g).then(|| {
        let mut d = group_doc(g);
        d["kind"] = json!("APIGroup");
        d["apiVersion"] = json!("v1");
        d
    })
}

fn sub_verbs(sub: &str) -> (&'static [&'static str], &'static str) {
    match sub {
        "status" | "approval" | "ephemeralcontainers" | "resize" => (&["get", "patch", "update"], ""),
        "binding" | "token" => (&["create"], ""),
        _ => (&[], ""),
    }
}

fn resource_entries(r: &ResourceDef) -> Vec<Value> {
    let mut out = vec![{
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        e
    }];
    for sub in r.subresources {
        let (verbs, _) = sub_verbs(sub);
        let kind = match *sub {
            "binding" => "Binding",
            "token" => "TokenRequest",
            _ => r.kind,
        };
        let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
        if *sub == "token" {
            e["group"] = json!("authentication.k8s.io");
            e["version"] = json!("v1");
        }
        out.push(e);
    }
    out
}

/// `APIResourceList` for a group/version, if served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let items: Vec<&ResourceDef> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if items.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": items.into_iter().flat_map(resource_entries).collect::<Vec<_>>(),
    }))
}

/// `/openapi/v3`: the per-group-version document index. The documents carry no schemas,
/// only PATCH operations advertising `fieldValidation`, which is what kubectl checks
/// before it relies on server-side field validation (so `kubectl create -f` works).
pub fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".into())];
    gvs.extend(
        resources::groups()
            .into_iter()
            .map(|g| (g.to_string(), "v1".to_string())),
    );
    for (g, v) in gvs {
        let p = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/<g>/<v>`.
pub fn openapi_v3_gv(group: &str, version: &str) -> Option<Value> {
    let items: Vec<&ResourceDef> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if items.is_empty() {
        return None;
    }
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
    ]);
    for r in items {
        let path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        paths.insert(
            path,
            json!({
                "parameters": params,
                "patch": {"operationId": format!("patch{}", r.kind), "parameters": params, "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}},
                "get": {"operationId": format!("read{}", r.kind), "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}}
            }),
        );
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": GIT_VERSION}, "paths": paths, "components": {"schemas": {}}}),
    )
}

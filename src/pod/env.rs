//! Container environment from the pod spec: literal values with `$(VAR)`
//! expansion, `fieldRef` / `resourceFieldRef` downward-API values, and
//! `configMapKeyRef` / `secretKeyRef` / `envFrom` values read from the
//! ConfigMap/Secret cache beforehand ([`fetch`])
//! (pkg/kubelet/kubelet_pods.go `makeEnvironmentVariables`).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::runtime::spec::expand;

/// What env resolution needs to know besides the pod.
pub struct EnvContext<'a> {
    pub pod_ips: &'a [String],
    pub host_ip: Option<&'a str>,
    pub node_name: &'a str,
    /// Node allocatable, the value of a limit a container does not set (`resourceFieldRef`).
    pub allocatable: super::resources::Allocatable,
    /// The ConfigMaps and Secrets the container's env refers to ([`fetch`]); None
    /// without an API server.
    pub objects: Option<&'a EnvObjects>,
    /// The service variables of the pod ([`crate::api::services`]): usable in
    /// `$(VAR)`, and added after the container's own unless it sets them.
    pub services: Option<&'a BTreeMap<String, String>>,
}

/// One object as env sees it: its data, `None` when it does not exist, or the
/// cache's error text.
pub type Fetched<T> = Result<Option<BTreeMap<String, T>>, String>;

/// The ConfigMaps and Secrets a container's `env` and `envFrom` name, by name.
#[derive(Debug, Default, Clone)]
pub struct EnvObjects {
    pub config_maps: HashMap<String, Fetched<String>>,
    pub secrets: HashMap<String, Fetched<Vec<u8>>>,
}

/// Reads every ConfigMap and Secret the container's env refers to from the cache
/// (the pod must be registered in it).
pub async fn fetch(pod: &Pod, c: &Container, cache: &crate::api::objects::ObjectCache) -> EnvObjects {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut cms = std::collections::BTreeSet::new();
    let mut secs = std::collections::BTreeSet::new();
    for e in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
        cms.extend(e.config_map_key_ref.as_ref().map(|r| r.name.clone()));
        secs.extend(e.secret_key_ref.as_ref().map(|r| r.name.clone()));
    }
    for e in c.env_from.iter().flatten() {
        cms.extend(e.config_map_ref.as_ref().map(|r| r.name.clone()));
        secs.extend(e.secret_ref.as_ref().map(|r| r.name.clone()));
    }
    let mut out = EnvObjects::default();
    for name in cms {
        let v = cache.config_map(ns, &name).await.map(|o| o.map(|cm| cm.data.unwrap_or_default())).map_err(|e| e.to_string());
        out.config_maps.insert(name, v);
    }
    for name in secs {
        let v = cache
            .secret(ns, &name)
            .await
            .map(|o| o.map(|s| s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()))
            .map_err(|e| e.to_string());
        out.secrets.insert(name, v);
    }
    out
}

/// Looks an object up: `Ok(None)` when it does not exist, Err with upstream's text
/// (no API server, cache error).
fn lookup<'o, T>(map: Option<&'o HashMap<String, Fetched<T>>>, kind: &str, ns: &str, name: &str) -> Result<Option<&'o BTreeMap<String, T>>, String> {
    match map.and_then(|m| m.get(name)) {
        None => Err(format!("couldn't get {kind} {ns}/{name}, no kubeClient defined")),
        Some(Err(e)) => Err(e.clone()),
        Some(Ok(o)) => Ok(o.as_ref()),
    }
}

/// Resolves `env` into ordered (name, value) pairs. Errors are upstream-style
/// messages that become `CreateContainerConfigError`.
pub fn resolve(pod: &Pod, c: &Container, ctx: &EnvContext<'_>) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    // Service variables resolve `$(VAR)` where the container defines no such
    // variable before (upstream's MappingFuncFor(tmpEnv, serviceEnv)).
    let mut vars: HashMap<String, String> = ctx.services.into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let cms = ctx.objects.map(|o| &o.config_maps);
    let secs = ctx.objects.map(|o| &o.secrets);
    let set = |out: &mut Vec<(String, String)>, vars: &mut HashMap<String, String>, k: String, v: String| {
        vars.insert(k.clone(), v.clone());
        out.retain(|(n, _)| n != &k);
        out.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        if let Some(r) = &from.config_map_ref {
            match lookup(cms, "configMap", ns, &r.name)? {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut out, &mut vars, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match lookup(secs, "secret", ns, &r.name)? {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut out, &mut vars, format!("{prefix}{k}"), String::from_utf8_lossy(v).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                field_value(pod, &f.field_path, ctx)?
            } else if let Some(r) = &src.resource_field_ref {
                let divisor = r.divisor.as_ref().map(|d| d.0.as_str());
                match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                    Some(name) => super::resources::value_by_container_name(pod, name, &r.resource, divisor, &ctx.allocatable)?,
                    None => super::resources::container_value(c, &r.resource, divisor, &ctx.allocatable)?,
                }
            } else if let Some(k) = &src.config_map_key_ref {
                let optional = k.optional == Some(true);
                match lookup(cms, "configMap", ns, &k.name)? {
                    Some(data) => match data.get(&k.key) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => return Err(format!("couldn't find key {} in ConfigMap {ns}/{}", k.key, k.name)),
                    },
                    None if optional => continue,
                    None => return Err(format!("configmap {:?} not found", k.name)),
                }
            } else if let Some(k) = &src.secret_key_ref {
                let optional = k.optional == Some(true);
                match lookup(secs, "secret", ns, &k.name)? {
                    Some(data) => match data.get(&k.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => return Err(format!("couldn't find key {} in Secret {ns}/{}", k.key, k.name)),
                    },
                    None if optional => continue,
                    None => return Err(format!("secret {:?} not found", k.name)),
                }
            } else {
                String::new()
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &vars)
        };
        set(&mut out, &mut vars, e.name.clone(), value);
    }
    for (k, v) in ctx.services.into_iter().flatten() {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

fn field_value(pod: &Pod, path: &str, ctx: &EnvContext<'_>) -> Result<String, String> {
    let md = &pod.metadata;
    let spec = pod.spec.as_ref();
    let sub = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['").and_then(|r| r.strip_suffix("']")))
            .map(String::from)
    };
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| ctx.node_name.into()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" => ctx.host_ip.unwrap_or("").into(),
        "status.hostIPs" => ctx.host_ip.unwrap_or("").into(),
        "status.podIP" => ctx.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => ctx.pod_ips.join(","),
        _ => {
            if let Some(k) = sub("metadata.labels") {
                md.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = sub("metadata.annotations") {
                md.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath: {path}"));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};

    fn env(name: &str, value: Option<&str>, field: Option<&str>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.map(String::from),
            value_from: field.map(|f| EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: f.into(), api_version: None }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn literals_field_refs_and_expansion() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.uid = Some("u".into());
        let c = Container {
            name: "c".into(),
            env: Some(vec![
                env("NAME", None, Some("metadata.name")),
                env("IP", None, Some("status.podIP")),
                env("MSG", Some("$(NAME) at $(IP) $(NOPE)"), None),
                env("NODE", None, Some("spec.nodeName")),
            ]),
            ..Default::default()
        };
        let ips = vec!["10.0.0.9".to_string()];
        let ctx = EnvContext { pod_ips: &ips, host_ip: None, node_name: "n1", allocatable: Default::default(), objects: None, services: None };
        let v = resolve(&pod, &c, &ctx).unwrap();
        assert_eq!(v[0], ("NAME".into(), "web".into()));
        assert_eq!(v[2], ("MSG".into(), "web at 10.0.0.9 $(NOPE)".into()));
        assert_eq!(v[3], ("NODE".into(), "n1".into()));
    }

    #[test]
    fn service_variables_expand_and_come_after_the_containers_own() {
        let svc: BTreeMap<String, String> = [("KUBERNETES_SERVICE_HOST", "10.96.0.1"), ("KUBERNETES_SERVICE_PORT", "443"), ("DB_SERVICE_HOST", "10.96.0.5")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = Container {
            name: "c".into(),
            env: Some(vec![
                env("URL", Some("https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"), None),
                env("DB_SERVICE_HOST", Some("db.local"), None),
                env("DB", Some("$(DB_SERVICE_HOST)"), None),
            ]),
            ..Default::default()
        };
        let ctx = EnvContext { pod_ips: &[], host_ip: None, node_name: "n", allocatable: Default::default(), objects: None, services: Some(&svc) };
        let v = resolve(&Pod::default(), &c, &ctx).unwrap();
        let names: Vec<&str> = v.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["URL", "DB_SERVICE_HOST", "DB", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"]);
        assert_eq!(v[0].1, "https://10.96.0.1:443");
        assert_eq!((v[1].1.as_str(), v[2].1.as_str()), ("db.local", "db.local"), "the container's own variable wins");
    }

    #[test]
    fn unsupported_field_paths_are_config_errors() {
        let c = Container { name: "c".into(), env: Some(vec![env("X", None, Some("spec.bogus"))]), ..Default::default() };
        let ctx = EnvContext { pod_ips: &[], host_ip: None, node_name: "n", allocatable: Default::default(), objects: None, services: None };
        assert!(resolve(&Pod::default(), &c, &ctx).unwrap_err().contains("spec.bogus"));
    }

    #[test]
    fn config_map_and_secret_refs_and_env_from_with_upstream_errors() {
        use k8s_openapi::api::core::v1::{ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVarSource, SecretEnvSource, SecretKeySelector};
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("ns".into());
        let cm_ref = |name: &str, key: &str, optional: Option<bool>| EnvVar {
            name: "V".into(),
            value: None,
            value_from: Some(EnvVarSource { config_map_key_ref: Some(ConfigMapKeySelector { name: name.into(), key: key.into(), optional }), ..Default::default() }),
        };
        let mut objects = EnvObjects::default();
        objects.config_maps.insert("cm".into(), Ok(Some([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into())));
        objects.config_maps.insert("gone".into(), Ok(None));
        objects.secrets.insert("s".into(), Ok(Some([("pw".to_string(), b"hunter2".to_vec())].into())));
        let ctx = EnvContext { pod_ips: &[], host_ip: None, node_name: "n", allocatable: Default::default(), objects: Some(&objects), services: None };
        let with = |env: Vec<EnvVar>, from: Vec<EnvFromSource>| Container { name: "c".into(), env: Some(env), env_from: Some(from), ..Default::default() };

        let c = with(
            vec![
                EnvVar { name: "X_b".into(), value: Some("over $(X_a)".into()), value_from: None },
                EnvVar {
                    name: "PW".into(),
                    value: None,
                    value_from: Some(EnvVarSource { secret_key_ref: Some(SecretKeySelector { name: "s".into(), key: "pw".into(), optional: None }), ..Default::default() }),
                },
                cm_ref("gone", "a", Some(true)),
                cm_ref("cm", "zz", Some(true)),
            ],
            vec![
                EnvFromSource { prefix: Some("X_".into()), config_map_ref: Some(ConfigMapEnvSource { name: "cm".into(), optional: None }), secret_ref: None },
                EnvFromSource { prefix: None, config_map_ref: None, secret_ref: Some(SecretEnvSource { name: "s".into(), optional: None }) },
                EnvFromSource { prefix: None, config_map_ref: Some(ConfigMapEnvSource { name: "gone".into(), optional: Some(true) }), secret_ref: None },
            ],
        );
        let v: HashMap<String, String> = resolve(&pod, &c, &ctx).unwrap().into_iter().collect();
        assert_eq!(v["X_a"], "1");
        assert_eq!(v["X_b"], "over 1");
        assert_eq!(v["pw"], "hunter2");
        assert_eq!(v["PW"], "hunter2");
        assert!(!v.contains_key("V"), "optional refs to missing objects or keys are skipped");

        let err = |env: Vec<EnvVar>, from: Vec<EnvFromSource>| resolve(&pod, &with(env, from), &ctx).unwrap_err();
        assert_eq!(err(vec![cm_ref("gone", "a", None)], vec![]), "configmap \"gone\" not found");
        assert_eq!(err(vec![cm_ref("cm", "zz", None)], vec![]), "couldn't find key zz in ConfigMap ns/cm");
        assert_eq!(
            err(vec![], vec![EnvFromSource { prefix: None, config_map_ref: None, secret_ref: Some(SecretEnvSource { name: "nope".into(), optional: Some(false) }) }]),
            "couldn't get secret ns/nope, no kubeClient defined"
        );
        let mut objects = objects.clone();
        objects.secrets.insert("nope".into(), Ok(None));
        let ctx = EnvContext { objects: Some(&objects), ..ctx };
        let c = with(vec![], vec![EnvFromSource { prefix: None, config_map_ref: None, secret_ref: Some(SecretEnvSource { name: "nope".into(), optional: None }) }]);
        assert_eq!(resolve(&pod, &c, &ctx).unwrap_err(), "secret \"nope\" not found");
    }
}

//! Container environment from the pod spec: literal values with `$(VAR)`
//! expansion, and `fieldRef` / `resourceFieldRef` downward-API values
//! (pkg/kubelet/kubelet_pods.go `makeEnvironmentVariables`).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::runtime::spec::expand;

/// What env resolution needs to know besides the pod.
pub struct EnvContext<'a> {
    pub pod_ips: &'a [String],
    pub host_ip: Option<&'a str>,
    pub node_name: &'a str,
    /// Machine capacity, used when a container has no limit (`resourceFieldRef`).
    pub cpu_capacity_milli: i64,
    pub memory_capacity: i64,
}

/// Resolves `env` into ordered (name, value) pairs. Errors are upstream-style
/// messages that become `CreateContainerConfigError`.
pub fn resolve(pod: &Pod, c: &Container, ctx: &EnvContext<'_>) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                field_value(pod, &f.field_path, ctx)?
            } else if let Some(r) = &src.resource_field_ref {
                resource_value(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()), ctx)?
            } else if let Some(k) = &src.config_map_key_ref {
                if k.optional == Some(true) {
                    continue;
                }
                return Err(format!("configmap {:?} not found", k.name));
            } else if let Some(k) = &src.secret_key_ref {
                if k.optional == Some(true) {
                    continue;
                }
                return Err(format!("secret {:?} not found", k.name));
            } else {
                String::new()
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &vars)
        };
        vars.insert(e.name.clone(), value.clone());
        out.retain(|(k, _)| k != &e.name);
        out.push((e.name.clone(), value));
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

fn resource_value(c: &Container, resource: &str, divisor: Option<&str>, ctx: &EnvContext<'_>) -> Result<String, String> {
    let r = c.resources.as_ref();
    let get = |kind: &str, name: &str| {
        let m = if kind == "limits" { r.and_then(|r| r.limits.as_ref()) } else { r.and_then(|r| r.requests.as_ref()) };
        m.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let (kind, name) = resource.split_once('.').ok_or_else(|| format!("unsupported container resource: {resource}"))?;
    let q = get(kind, name).or_else(|| if kind == "requests" { get("limits", name) } else { None });
    let e = |e: crate::quantity::QuantityError| e.to_string();
    match name {
        "cpu" => {
            let milli = match q {
                Some(q) => crate::quantity::to_milli(&q).map_err(e)?,
                None if kind == "limits" => ctx.cpu_capacity_milli,
                None => 0,
            };
            let div = crate::quantity::to_milli(divisor.unwrap_or("1")).map_err(e)?.max(1);
            Ok(((milli + div - 1) / div).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let v = match q {
                Some(q) => crate::quantity::to_value(&q).map_err(e)?,
                None if kind == "limits" && name == "memory" => ctx.memory_capacity,
                None => 0,
            };
            let div = crate::quantity::to_value(divisor.unwrap_or("1")).map_err(e)?.max(1);
            Ok(((v + div - 1) / div).to_string())
        }
        _ => Err(format!("unsupported container resource: {resource}")),
    }
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
        let ctx = EnvContext { pod_ips: &ips, host_ip: None, node_name: "n1", cpu_capacity_milli: 2000, memory_capacity: 1 << 30 };
        let v = resolve(&pod, &c, &ctx).unwrap();
        assert_eq!(v[0], ("NAME".into(), "web".into()));
        assert_eq!(v[2], ("MSG".into(), "web at 10.0.0.9 $(NOPE)".into()));
        assert_eq!(v[3], ("NODE".into(), "n1".into()));
    }

    #[test]
    fn unsupported_field_paths_are_config_errors() {
        let c = Container { name: "c".into(), env: Some(vec![env("X", None, Some("spec.bogus"))]), ..Default::default() };
        let ctx = EnvContext { pod_ips: &[], host_ip: None, node_name: "n", cpu_capacity_milli: 1, memory_capacity: 1 };
        assert!(resolve(&Pod::default(), &c, &ctx).unwrap_err().contains("spec.bogus"));
    }
}

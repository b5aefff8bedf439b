//! More of upstream's pod validation (pkg/apis/core/validation/validation.go),
//! on the JSON body as the server sees it: local descending paths (subPath,
//! downwardAPI items, seccomp localhostProfile), hostPath without `..`,
//! numbers in range, quantities, probe and hook handlers, container ports and
//! their names, protocol and termination message policy, DNS config and host
//! aliases, sysctl names, image whitespace, env names, init container
//! restartPolicy. Written apart from the agent's own checks on purpose: the
//! test server must refuse what a real one refuses, not what rkubelet thinks.

use serde_json::{json, Value};

use crate::error::FieldError;

const INT32_MAX: i64 = i32::MAX as i64;

fn arr<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    v.get(key).and_then(Value::as_array).into_iter().flatten().enumerate()
}

fn local_descending(errs: &mut Vec<FieldError>, field: String, p: &str) {
    if p.starts_with('/') {
        errs.push(FieldError::invalid(field.clone(), &json!(p), "must be a relative path"));
    }
    if p.split('/').any(|c| c == "..") {
        errs.push(FieldError::invalid(field, &json!(p), "must not contain '..'"));
    }
}

fn iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.contains("--")
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn port(errs: &mut Vec<FieldError>, field: String, p: Option<&Value>) {
    match p {
        Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {
            errs.push(FieldError::invalid(field, &json!(n), "must be between 1 and 65535, inclusive"))
        }
        Some(Value::String(s)) if !iana_svc_name(s) => errs.push(FieldError::invalid(field, &json!(s), "must be no more than 15 characters, contain only lowercase alphanumerics and '-', and at least one letter")),
        _ => {}
    }
}

fn at_least_zero(errs: &mut Vec<FieldError>, field: String, v: Option<&Value>) {
    if let Some(n) = v.and_then(Value::as_i64).filter(|n| *n < 0) {
        errs.push(FieldError::invalid(field, &json!(n), "must be greater than or equal to 0"));
    }
}

fn id(errs: &mut Vec<FieldError>, field: String, v: Option<&Value>) {
    if let Some(n) = v.and_then(Value::as_i64).filter(|n| !(0..=INT32_MAX).contains(n)) {
        errs.push(FieldError::invalid(field, &json!(n), "must be between 0 and 2147483647, inclusive"));
    }
}

/// apimachinery's quantity grammar: `[+-]?[0-9.]+` then a suffix: one of
/// n u m "" k M G T P E Ki..Ei, or an exponent `[eE][+-]?[0-9]+`.
fn quantity_ok(q: &str) -> bool {
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let digits = num.trim_start_matches(['+', '-']);
    let sign_ok = num.len() - digits.len() <= 1;
    let num_ok = sign_ok && !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '.') && digits.matches('.').count() <= 1 && digits != ".";
    let suffix_ok = matches!(suffix, "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
        || suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
            let d = e.trim_start_matches(['+', '-']);
            e.len() - d.len() <= 1 && !d.is_empty() && d.chars().all(|c| c.is_ascii_digit())
        });
    num_ok && suffix_ok
}

fn quantity(errs: &mut Vec<FieldError>, field: String, q: &Value) {
    let s = q.as_str().map(str::to_string).unwrap_or_else(|| q.to_string());
    if !quantity_ok(&s) {
        errs.push(FieldError::invalid(field, &json!(s), "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"));
    } else if s.starts_with('-') && s.trim_start_matches(['-', '0', '.']).chars().next().is_some_and(|c| c.is_ascii_digit()) {
        errs.push(FieldError::invalid(field, &json!(s), "must be greater than or equal to 0"));
    }
}

fn handler(errs: &mut Vec<FieldError>, field: &str, h: &Value, kinds: &[&str]) {
    let n = kinds.iter().filter(|k| h.get(**k).is_some()).count();
    if n == 0 {
        errs.push(FieldError::required(field.to_string(), "must specify a handler type"));
    } else if n > 1 {
        errs.push(FieldError::forbidden(field.to_string(), "may not specify more than 1 handler type"));
    }
    port(errs, format!("{field}.httpGet.port"), h.pointer("/httpGet/port"));
    port(errs, format!("{field}.tcpSocket.port"), h.pointer("/tcpSocket/port"));
    at_least_zero(errs, format!("{field}.sleep.seconds"), h.pointer("/sleep/seconds"));
}

fn container(errs: &mut Vec<FieldError>, base: &str, c: &Value, init: bool) {
    if let Some(img) = c.get("image").and_then(Value::as_str).filter(|i| !i.is_empty() && i.trim() != *i) {
        errs.push(FieldError::invalid(format!("{base}.image"), &json!(img), "must not have leading or trailing whitespace"));
    }
    for (j, e) in arr(c, "env") {
        let n = e.get("name").and_then(Value::as_str).unwrap_or("");
        if n.is_empty() {
            errs.push(FieldError::required(format!("{base}.env[{j}].name"), ""));
        } else if !n.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=') {
            errs.push(FieldError::invalid(format!("{base}.env[{j}].name"), &json!(n), "a valid environment variable name must consist only of printable ASCII characters other than '='"));
        }
    }
    let mut names = Vec::new();
    for (j, p) in arr(c, "ports") {
        let cp = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&cp) {
            errs.push(FieldError::invalid(format!("{base}.ports[{j}].containerPort"), &json!(cp), "must be between 1 and 65535, inclusive"));
        }
        if let Some(h) = p.get("hostPort").and_then(Value::as_i64).filter(|h| !(0..=65535).contains(h)) {
            errs.push(FieldError::invalid(format!("{base}.ports[{j}].hostPort"), &json!(h), "must be between 1 and 65535, inclusive"));
        }
        if let Some(n) = p.get("name").and_then(Value::as_str) {
            if !iana_svc_name(n) {
                errs.push(FieldError::invalid(format!("{base}.ports[{j}].name"), &json!(n), "must be no more than 15 characters"));
            } else if names.contains(&n) {
                errs.push(FieldError::duplicate(format!("{base}.ports[{j}].name"), &json!(n)));
            }
            names.push(n);
        }
        if let Some(pr) = p.get("protocol").and_then(Value::as_str).filter(|p| !["TCP", "UDP", "SCTP"].contains(p)) {
            errs.push(FieldError::not_supported(format!("{base}.ports[{j}].protocol"), &json!(pr), &["SCTP", "TCP", "UDP"]));
        }
    }
    for (j, m) in arr(c, "volumeMounts") {
        if let Some(s) = m.get("subPath").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            local_descending(errs, format!("{base}.volumeMounts[{j}].subPath"), s);
        }
    }
    for kind in ["limits", "requests"] {
        for (name, q) in c.pointer(&format!("/resources/{kind}")).and_then(Value::as_object).into_iter().flatten() {
            quantity(errs, format!("{base}.resources.{kind}[{name}]"), q);
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(p) = c.get(probe) else { continue };
        let field = format!("{base}.{probe}");
        handler(errs, &field, p, &["exec", "httpGet", "tcpSocket", "grpc"]);
        for k in ["initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold", "terminationGracePeriodSeconds"] {
            at_least_zero(errs, format!("{field}.{k}"), p.get(k));
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(h) = c.pointer(&format!("/lifecycle/{hook}")) {
            handler(errs, &format!("{base}.lifecycle.{hook}"), h, &["exec", "httpGet", "tcpSocket", "sleep"]);
        }
    }
    if let Some(p) = c.get("terminationMessagePolicy").and_then(Value::as_str).filter(|p| !["File", "FallbackToLogsOnError"].contains(p)) {
        errs.push(FieldError::not_supported(format!("{base}.terminationMessagePolicy"), &json!(p), &["File", "FallbackToLogsOnError"]));
    }
    match (init, c.get("restartPolicy").and_then(Value::as_str)) {
        (_, None) | (true, Some("Always")) => {}
        (true, Some(p)) => errs.push(FieldError::not_supported(format!("{base}.restartPolicy"), &json!(p), &["Always"])),
        (false, Some(_)) => errs.push(FieldError::forbidden(format!("{base}.restartPolicy"), "may not be set for non-init containers")),
    }
    id(errs, format!("{base}.securityContext.runAsUser"), c.pointer("/securityContext/runAsUser"));
    id(errs, format!("{base}.securityContext.runAsGroup"), c.pointer("/securityContext/runAsGroup"));
    if let Some(l) = c.pointer("/securityContext/seccompProfile/localhostProfile").and_then(Value::as_str) {
        local_descending(errs, format!("{base}.securityContext.seccompProfile.localhostProfile"), l);
    }
}

/// A sysctl name (IsValidSysctlName): dot- or slash-separated segments of
/// lowercase alphanumerics, `-` and `_`, alphanumeric at both ends.
fn sysctl_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split(['.', '/']).all(|seg| {
            let b = seg.as_bytes();
            let an = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            b.first().is_some_and(an) && b.last().is_some_and(an) && b.iter().all(|c| an(c) || *c == b'-' || *c == b'_')
        })
}

/// The errors for `spec` (pod-level and every container's).
pub fn validate(spec: &Value, errs: &mut Vec<FieldError>) {
    if let Some(a) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64).filter(|a| !(1..=INT32_MAX).contains(a)) {
        errs.push(FieldError::invalid("spec.activeDeadlineSeconds", &json!(a), "must be between 1 and 2147483647, inclusive"));
    }
    let nameservers = spec.pointer("/dnsConfig/nameservers").and_then(Value::as_array);
    if spec.get("dnsPolicy").and_then(Value::as_str) == Some("None") && nameservers.is_none_or(Vec::is_empty) {
        errs.push(FieldError::required("spec.dnsConfig", "must provide at least one DNS nameserver when DNSPolicy is set to None"));
    }
    if let Some(ns) = nameservers {
        if ns.len() > 3 {
            errs.push(FieldError::invalid("spec.dnsConfig.nameservers", &json!(ns), "must not have more than 3 nameservers"));
        }
        for (i, n) in ns.iter().enumerate() {
            if n.as_str().and_then(|s| s.parse::<std::net::IpAddr>().ok()).is_none() {
                errs.push(FieldError::invalid(format!("spec.dnsConfig.nameservers[{i}]"), n, "must be a valid IP address"));
            }
        }
    }
    for (i, h) in arr(spec, "hostAliases") {
        if h.get("ip").and_then(Value::as_str).and_then(|s| s.parse::<std::net::IpAddr>().ok()).is_none() {
            errs.push(FieldError::invalid(format!("spec.hostAliases[{i}].ip"), h.get("ip").unwrap_or(&Value::Null), "must be a valid IP address"));
        }
    }
    for (i, v) in arr(spec, "volumes") {
        if let Some(p) = v.pointer("/hostPath/path").and_then(Value::as_str).filter(|p| p.split('/').any(|c| c == "..")) {
            errs.push(FieldError::invalid(format!("spec.volumes[{i}].hostPath.path"), &json!(p), "must not contain '..'"));
        }
        if let Some(q) = v.pointer("/emptyDir/sizeLimit") {
            quantity(errs, format!("spec.volumes[{i}].emptyDir.sizeLimit"), q);
        }
        for (j, item) in v.get("downwardAPI").map(|d| arr(d, "items")).into_iter().flatten() {
            let field = format!("spec.volumes[{i}].downwardAPI.items[{j}].path");
            let p = item.get("path").and_then(Value::as_str).unwrap_or("");
            if p.is_empty() {
                errs.push(FieldError::required(field.clone(), ""));
            }
            local_descending(errs, field, p);
        }
    }
    for k in ["runAsUser", "runAsGroup", "fsGroup"] {
        id(errs, format!("spec.securityContext.{k}"), spec.pointer(&format!("/securityContext/{k}")));
    }
    if let Some(l) = spec.pointer("/securityContext/seccompProfile/localhostProfile").and_then(Value::as_str) {
        local_descending(errs, "spec.securityContext.seccompProfile.localhostProfile".into(), l);
    }
    for (i, s) in spec.get("securityContext").map(|sc| arr(sc, "sysctls")).into_iter().flatten() {
        let n = s.get("name").and_then(Value::as_str).unwrap_or("");
        if !sysctl_name_ok(n) {
            errs.push(FieldError::invalid(format!("spec.securityContext.sysctls[{i}].name"), &json!(n), "must have at most 253 characters and match regex"));
        }
    }
    for (key, init) in [("initContainers", true), ("containers", false)] {
        for (i, c) in arr(spec, key) {
            container(errs, &format!("spec.{key}[{i}]"), c, init);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_apimachinery_grammar() {
        for ok in ["1", "100m", "64Mi", "1.5", "2e3", "1E-3", "+1", "99999999999999999999Ei", "0.000000001m"] {
            assert!(quantity_ok(ok), "{ok}");
        }
        for bad in ["", "NaN", "1.5.5", "12Zi", "1Ki1", "+-1", "0x10", "lots", ".", "1e"] {
            assert!(!quantity_ok(bad), "{bad}");
        }
    }

    #[test]
    fn pod_spec_errors() {
        let spec = json!({
            "activeDeadlineSeconds": 0,
            "volumes": [{"name": "h", "hostPath": {"path": "/a/../b"}}],
            "containers": [{"name": "c", "image": " x", "ports": [{"containerPort": 80, "name": "UPPER"}],
                            "volumeMounts": [{"name": "h", "mountPath": "/m", "subPath": "../x"}],
                            "livenessProbe": {"periodSeconds": 1}, "resources": {"limits": {"memory": "-1"}}}],
        });
        let mut errs = Vec::new();
        validate(&spec, &mut errs);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in ["spec.activeDeadlineSeconds", "spec.volumes[0].hostPath.path", "spec.containers[0].image", "spec.containers[0].ports[0].name", "spec.containers[0].volumeMounts[0].subPath", "spec.containers[0].livenessProbe", "spec.containers[0].resources.limits[memory]"] {
            assert!(fields.contains(&f), "{f}: {fields:?}");
        }
    }
}

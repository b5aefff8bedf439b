//! More of upstream's `ValidatePodCreate` (pkg/apis/core/validation) for static
//! pods, which reach the agent from a file and not through an API server: label
//! and annotation limits, paths that must stay local (`subPath`, downwardAPI
//! items, seccomp `localhostProfile`, hostPath without `..`), numbers in range,
//! quantities, probe and hook handlers, port names, DNS settings, sysctl names,
//! enum values. Messages follow upstream's field errors
//! (`<field>: Invalid value: <value>: <detail>`).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;


/// Upstream's limit on all annotations of an object (TotalAnnotationSizeLimitB).
const ANNOTATIONS_MAX: usize = 256 * 1024;
const INT32_MAX: i64 = i32::MAX as i64;

fn invalid(errs: &mut Vec<String>, field: &str, value: impl std::fmt::Debug, detail: &str) {
    errs.push(format!("{field}: Invalid value: {value:?}: {detail}"));
}

/// A path that must stay inside its volume (validateLocalDescendingPath).
fn local_descending(errs: &mut Vec<String>, field: &str, p: &str) {
    if p.starts_with('/') {
        invalid(errs, field, p, "must be a relative path");
    }
    if p.split('/').any(|c| c == "..") {
        invalid(errs, field, p, "must not contain '..'");
    }
}

/// `[prefix/]name` label and annotation keys (IsQualifiedName).
fn qualified_name(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && name.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric);
    name_ok && prefix.is_none_or(crate::config::is_dns_subdomain)
}

/// Label values: empty, or at most 63 alphanumerics, `-`, `_`, `.` starting and
/// ending alphanumeric.
fn label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && v.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric))
}

/// IANA service names (ports, named probe ports): at most 15 lowercase
/// alphanumerics and `-`, at least one letter, no `--`, no `-` at either end.
fn iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.contains("--")
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn port_or_name(errs: &mut Vec<String>, field: &str, p: &IntOrString) {
    match p {
        IntOrString::Int(n) if !(1..=65535).contains(n) => invalid(errs, field, n, "must be between 1 and 65535, inclusive"),
        IntOrString::String(s) if !iana_svc_name(s) => invalid(errs, field, s, "must contain only lowercase alphanumerics and '-', at most 15 characters, at least one letter"),
        _ => {}
    }
}

fn non_negative(errs: &mut Vec<String>, field: &str, v: Option<i64>) {
    if let Some(v) = v.filter(|v| *v < 0) {
        invalid(errs, field, v, "must be greater than or equal to 0");
    }
}

fn id_in_range(errs: &mut Vec<String>, field: &str, v: Option<i64>) {
    if let Some(v) = v.filter(|v| !(0..=INT32_MAX).contains(v)) {
        invalid(errs, field, v, "must be between 0 and 2147483647, inclusive");
    }
}

fn quantity(errs: &mut Vec<String>, field: &str, q: &str) {
    match crate::quantity::to_milli(q) {
        Err(e) => invalid(errs, field, q, &e.to_string()),
        Ok(v) if v < 0 => invalid(errs, field, q, "must be greater than or equal to 0"),
        Ok(_) => {}
    }
}

/// One handler of a probe or hook (validateHandler).
fn handler_count(exec: bool, http: bool, tcp: bool, grpc: bool, sleep: bool) -> usize {
    [exec, http, tcp, grpc, sleep].iter().filter(|b| **b).count()
}

fn one_handler(errs: &mut Vec<String>, field: &str, n: usize) {
    match n {
        0 => errs.push(format!("{field}: Required value: must specify a handler type")),
        1 => {}
        _ => errs.push(format!("{field}: Forbidden: may not specify more than 1 handler type")),
    }
}

fn probe(errs: &mut Vec<String>, field: &str, p: &Probe) {
    one_handler(errs, field, handler_count(p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some(), false));
    if let Some(h) = &p.http_get {
        port_or_name(errs, &format!("{field}.httpGet.port"), &h.port);
    }
    if let Some(t) = &p.tcp_socket {
        port_or_name(errs, &format!("{field}.tcpSocket.port"), &t.port);
    }
    for (name, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        non_negative(errs, &format!("{field}.{name}"), v.map(i64::from));
    }
    non_negative(errs, &format!("{field}.terminationGracePeriodSeconds"), p.termination_grace_period_seconds);
}

fn hook(errs: &mut Vec<String>, field: &str, h: &LifecycleHandler) {
    one_handler(errs, field, handler_count(h.exec.is_some(), h.http_get.is_some(), h.tcp_socket.is_some(), false, h.sleep.is_some()));
    if let Some(g) = &h.http_get {
        port_or_name(errs, &format!("{field}.httpGet.port"), &g.port);
    }
    if let Some(s) = &h.sleep {
        non_negative(errs, &format!("{field}.sleep.seconds"), Some(s.seconds));
    }
}

fn container(errs: &mut Vec<String>, at: &str, c: &Container, init: bool) {
    if let Some(img) = c.image.as_deref().filter(|i| i.trim() != *i && !i.trim().is_empty()) {
        invalid(errs, &format!("{at}.image"), img, "must not have leading or trailing whitespace");
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        // RelaxedEnvironmentVariableValidation (GA): printable ASCII but '='.
        if !e.name.is_empty() && !e.name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=') {
            invalid(errs, &format!("{at}.env[{j}].name"), &e.name, "a valid environment variable name must consist only of printable ASCII characters other than '='");
        }
    }
    let mut port_names = std::collections::HashSet::new();
    for (j, p) in c.ports.iter().flatten().enumerate() {
        if let Some(n) = p.name.as_deref() {
            if !iana_svc_name(n) {
                invalid(errs, &format!("{at}.ports[{j}].name"), n, "must be an IANA_SVC_NAME (at most 15 lowercase alphanumerics or '-', at least one letter)");
            } else if !port_names.insert(n) {
                errs.push(format!("{at}.ports[{j}].name: Duplicate value: {n:?}"));
            }
        }
        if let Some(h) = p.host_port.filter(|h| !(0..=65535).contains(h)) {
            invalid(errs, &format!("{at}.ports[{j}].hostPort"), h, "must be between 1 and 65535, inclusive");
        }
        if let Some(proto) = p.protocol.as_deref().filter(|p| !["TCP", "UDP", "SCTP"].contains(p)) {
            errs.push(format!("{at}.ports[{j}].protocol: Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""));
        }
    }
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        if let Some(s) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            local_descending(errs, &format!("{at}.volumeMounts[{j}].subPath"), s);
        }
    }
    if let Some(r) = &c.resources {
        for (kind, list) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (name, q) in list.iter().flatten() {
                quantity(errs, &format!("{at}.resources.{kind}[{name}]"), &q.0);
            }
        }
    }
    for (name, p) in [("livenessProbe", &c.liveness_probe), ("readinessProbe", &c.readiness_probe), ("startupProbe", &c.startup_probe)] {
        if let Some(p) = p {
            probe(errs, &format!("{at}.{name}"), p);
        }
    }
    if let Some(l) = &c.lifecycle {
        for (name, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            if let Some(h) = h {
                hook(errs, &format!("{at}.lifecycle.{name}"), h);
            }
        }
    }
    if let Some(p) = c.termination_message_policy.as_deref().filter(|p| !["File", "FallbackToLogsOnError"].contains(p)) {
        errs.push(format!("{at}.terminationMessagePolicy: Unsupported value: {p:?}: supported values: \"File\", \"FallbackToLogsOnError\""));
    }
    match (init, c.restart_policy.as_deref()) {
        (_, None) | (true, Some("Always")) => {}
        (true, Some(p)) => errs.push(format!("{at}.restartPolicy: Unsupported value: {p:?}: supported values: \"Always\"")),
        (false, Some(_)) => errs.push(format!("{at}.restartPolicy: Forbidden: may not be set for non-init containers")),
    }
    if let Some(sc) = &c.security_context {
        id_in_range(errs, &format!("{at}.securityContext.runAsUser"), sc.run_as_user);
        id_in_range(errs, &format!("{at}.securityContext.runAsGroup"), sc.run_as_group);
        if let Some(l) = sc.seccomp_profile.as_ref().and_then(|s| s.localhost_profile.as_deref()) {
            local_descending(errs, &format!("{at}.securityContext.seccompProfile.localhostProfile"), l);
        }
    }
}

fn spec(errs: &mut Vec<String>, s: &PodSpec) {
    non_negative(errs, "spec.terminationGracePeriodSeconds", s.termination_grace_period_seconds);
    if let Some(a) = s.active_deadline_seconds.filter(|a| !(1..=INT32_MAX).contains(a)) {
        invalid(errs, "spec.activeDeadlineSeconds", a, "must be between 1 and 2147483647, inclusive");
    }
    if let Some(p) = s.dns_policy.as_deref() {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !ok.contains(&p) {
            errs.push(format!("spec.dnsPolicy: Unsupported value: {p:?}: supported values: \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\""));
        }
        if p == "None" && s.dns_config.as_ref().and_then(|d| d.nameservers.as_ref()).is_none_or(Vec::is_empty) {
            errs.push("spec.dnsConfig: Required value: must provide at least one DNS nameserver when DNSPolicy is set to None".into());
        }
    }
    if let Some(ns) = s.dns_config.as_ref().and_then(|d| d.nameservers.as_ref()) {
        if ns.len() > 3 {
            invalid(errs, "spec.dnsConfig.nameservers", ns, "must not have more than 3 nameservers");
        }
        for (i, n) in ns.iter().enumerate() {
            if n.parse::<IpAddr>().is_err() {
                invalid(errs, &format!("spec.dnsConfig.nameservers[{i}]"), n, "must be a valid IP address");
            }
        }
    }
    for (i, h) in s.host_aliases.iter().flatten().enumerate() {
        if h.ip.parse::<IpAddr>().is_err() {
            invalid(errs, &format!("spec.hostAliases[{i}].ip"), &h.ip, "must be a valid IP address");
        }
    }
    for (i, v) in s.volumes.iter().flatten().enumerate() {
        if let Some(h) = &v.host_path {
            if h.path.split('/').any(|c| c == "..") {
                invalid(errs, &format!("spec.volumes[{i}].hostPath.path"), &h.path, "must not contain '..'");
            }
        }
        if let Some(q) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) {
            quantity(errs, &format!("spec.volumes[{i}].emptyDir.sizeLimit"), &q.0);
        }
        for (j, item) in v.downward_api.iter().flat_map(|d| d.items.iter().flatten()).enumerate() {
            let field = format!("spec.volumes[{i}].downwardAPI.items[{j}].path");
            if item.path.is_empty() {
                errs.push(format!("{field}: Required value"));
            }
            local_descending(errs, &field, &item.path);
        }
    }
    if let Some(sc) = &s.security_context {
        id_in_range(errs, "spec.securityContext.runAsUser", sc.run_as_user);
        id_in_range(errs, "spec.securityContext.runAsGroup", sc.run_as_group);
        id_in_range(errs, "spec.securityContext.fsGroup", sc.fs_group);
        if let Some(l) = sc.seccomp_profile.as_ref().and_then(|s| s.localhost_profile.as_deref()) {
            local_descending(errs, "spec.securityContext.seccompProfile.localhostProfile", l);
        }
        for (i, sysctl) in sc.sysctls.iter().flatten().enumerate() {
            if !crate::pod::sysctl::is_valid_pattern(&sysctl.name) || sysctl.name.contains('*') {
                invalid(errs, &format!("spec.securityContext.sysctls[{i}].name"), &sysctl.name, "must have at most 253 characters and match regex ^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$");
            }
        }
    }
    let groups = [("initContainers", s.init_containers.as_deref().unwrap_or(&[]), true), ("containers", &s.containers[..], false)];
    for (field, list, init) in groups {
        for (i, c) in list.iter().enumerate() {
            container(errs, &format!("spec.{field}[{i}]"), c, init);
        }
    }
}

/// The errors of these rules for `pod` (empty when valid).
pub fn validate(pod: &Pod) -> Vec<String> {
    let mut errs = Vec::new();
    for (k, v) in pod.metadata.labels.iter().flatten() {
        if !qualified_name(k) {
            invalid(&mut errs, "metadata.labels", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
        }
        if !label_value(v) {
            invalid(&mut errs, "metadata.labels", v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)");
        }
    }
    let annotations: usize = pod.metadata.annotations.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
    if annotations > ANNOTATIONS_MAX {
        errs.push(format!("metadata.annotations: Too long: must have at most {ANNOTATIONS_MAX} bytes"));
    }
    for k in pod.metadata.annotations.iter().flatten().map(|(k, _)| k) {
        if !qualified_name(&k.to_ascii_lowercase()) {
            invalid(&mut errs, "metadata.annotations", k, "name part must consist of alphanumeric characters, '-', '_' or '.'");
        }
    }
    if let Some(s) = &pod.spec {
        spec(&mut errs, s);
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASE: &str = "metadata: {name: p, labels: {app: web, example.com/tier: front}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn a_plain_pod_passes() {
        assert_eq!(validate(&pod(BASE)), Vec::<String>::new());
        let ok = format!("{BASE}    env: [{{name: 1SPACED NAME, value: x}}]\n    ports: [{{containerPort: 80, name: http}}]\n    volumeMounts: [{{name: v, mountPath: /m, subPath: a/b}}]\n    livenessProbe: {{httpGet: {{port: http}}, periodSeconds: 3}}\n    resources: {{limits: {{memory: 64Mi, cpu: 500m}}}}\n");
        assert_eq!(validate(&pod(&ok)), Vec::<String>::new(), "relaxed env names, named ports, local sub paths");
    }

    #[test]
    fn hostile_values_are_refused_with_field_errors() {
        let cases = [
            ("    volumeMounts: [{name: v, mountPath: /m, subPath: ../../etc}]\n", "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"../../etc\": must not contain '..'"),
            ("    volumeMounts: [{name: v, mountPath: /m, subPath: /etc}]\n", "must be a relative path"),
            ("    ports: [{containerPort: 80, name: UPPER}]\n", "spec.containers[0].ports[0].name"),
            ("    ports: [{containerPort: 80, name: a}, {containerPort: 81, name: a}]\n", "Duplicate value: \"a\""),
            ("    resources: {limits: {memory: '-1'}}\n", "must be greater than or equal to 0"),
            ("    resources: {limits: {memory: 1e999999}}\n", "quantities must match"),
            ("    livenessProbe: {periodSeconds: 3}\n", "must specify a handler type"),
            ("    livenessProbe: {exec: {command: [x]}, tcpSocket: {port: 80}}\n", "may not specify more than 1 handler type"),
            ("    livenessProbe: {httpGet: {port: 0}}\n", "must be between 1 and 65535"),
            ("    lifecycle: {preStop: {sleep: {seconds: -1}}}\n", "sleep.seconds"),
            ("    image: ' busybox'\n", "leading or trailing whitespace"),
            ("    env: [{name: A=B}]\n", "other than '='"),
            ("    securityContext: {runAsUser: -1}\n", "must be between 0 and 2147483647"),
            ("    restartPolicy: Sometimes\n", "spec.containers[0].restartPolicy: Forbidden"),
        ];
        for (extra, want) in cases {
            let y = format!("{BASE}{extra}").replace("    image: busybox\n    image: ' busybox'\n", "    image: ' busybox'\n");
            let errs = validate(&pod(&y));
            assert!(errs.iter().any(|e| e.contains(want)), "{extra}: {errs:?}");
        }
        let spec_cases = [
            ("  activeDeadlineSeconds: 0\n", "spec.activeDeadlineSeconds"),
            ("  terminationGracePeriodSeconds: -5\n", "spec.terminationGracePeriodSeconds"),
            ("  dnsPolicy: None\n", "spec.dnsConfig: Required value"),
            ("  dnsConfig: {nameservers: [1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4]}\n", "more than 3 nameservers"),
            ("  hostAliases: [{ip: nope, hostnames: [a]}]\n", "spec.hostAliases[0].ip"),
            ("  volumes: [{name: h, hostPath: {path: /tmp/a/../b}}]\n", "hostPath.path"),
            ("  volumes: [{name: d, downwardAPI: {items: [{path: ../x, fieldRef: {fieldPath: metadata.name}}]}}]\n", "downwardAPI.items[0].path"),
            ("  volumes: [{name: e, emptyDir: {sizeLimit: '-1Gi'}}]\n", "emptyDir.sizeLimit"),
            ("  securityContext: {sysctls: [{name: 'kernel/../x', value: '1'}]}\n", "sysctls[0].name"),
            ("  securityContext: {seccompProfile: {type: Localhost, localhostProfile: ../../etc/passwd}}\n", "localhostProfile"),
            ("  initContainers: [{name: i, image: x, restartPolicy: Never}]\n", "spec.initContainers[0].restartPolicy"),
        ];
        for (extra, want) in spec_cases {
            let errs = validate(&pod(&format!("{BASE}{extra}")));
            assert!(errs.iter().any(|e| e.contains(want)), "{extra}: {errs:?}");
        }
        let big = pod(&format!("metadata: {{name: p, annotations: {{a: '{}'}}}}\nspec: {{containers: [{{name: c, image: x}}]}}\n", "x".repeat(ANNOTATIONS_MAX)));
        assert!(validate(&big).iter().any(|e| e.contains("metadata.annotations: Too long")));
        let labels = pod("metadata: {name: p, labels: {'a b': x, ok: 'x/y'}}\nspec: {containers: [{name: c, image: x}]}\n");
        assert_eq!(validate(&labels).len(), 2, "{:?}", validate(&labels));
    }
}

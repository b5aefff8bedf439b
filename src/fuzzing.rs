//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer): one
//! function per target, each feeding arbitrary bytes to the parsers that see
//! bytes from outside the agent — kubelet API requests, streaming frames,
//! manifests and configuration files, plugin and registry documents, logs and
//! kernel files. None of them may panic, whatever the input. Not an API: the
//! functions reach into crate-private parsers so their modules stay as they are.

use std::path::Path;

use bytes::BytesMut;

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Splits `data` at its first NUL: two inputs for parsers that take two files.
fn two(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (data.get(..i).unwrap_or_default(), data.get(i + 1..).unwrap_or_default()),
        None => (data, &[]),
    }
}

/// A kubelet API request target (`/path?query`): the query decoding, the log
/// options, the streaming routes and options, port-forward ports, authorization
/// attributes.
pub fn kubelet_request(data: &[u8]) {
    let target = text(data);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let _ = crate::server::auth::attributes(&http::Method::GET, path);
    let _ = crate::server::streaming::is_streaming(path);
    let _ = crate::server::streaming::route(path);
    let Ok(q) = crate::server::query::parse(query) else { return };
    if let Ok(o) = crate::server::query::LogQuery::from_query(&q) {
        let _ = o.since(chrono::Utc::now());
        let _ = o.since(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    }
    let _ = crate::server::streaming::Options::from_query(&q);
    let _ = crate::server::streaming::portforward::query_ports(&q);
}

/// SPDY/3.1 frames as a client sends them (one decoder, so header blocks share
/// their zlib context), and a raw (inflated) header block.
pub fn spdy(data: &[u8]) {
    use crate::server::streaming::spdy;
    let mut dec = spdy::Decoder::default();
    let mut buf = BytesMut::from(data);
    for _ in 0..4096 {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let _ = spdy::parse_header_block(data);
}

/// WebSocket channel messages under every channel protocol, binary and text.
pub fn websocket(data: &[u8]) {
    use crate::server::streaming::websocket;
    use tokio_tungstenite::tungstenite::Message;
    let protocols = websocket::PROTOCOLS.iter().copied().chain([""]);
    for name in protocols {
        let Ok(p) = websocket::negotiate(&[name.to_string()]) else { continue };
        let _ = websocket::decode(&p, Message::binary(data.to_vec()));
        if let Ok(t) = std::str::from_utf8(data) {
            let _ = websocket::decode(&p, Message::text(t));
        }
    }
    let _ = websocket::negotiate(&[text(data).into_owned()]);
}

/// The remote command resize stream: JSON terminal sizes, split into chunks at
/// each NUL as they would arrive.
pub fn resize(data: &[u8]) {
    let mut buf = Vec::new();
    for chunk in data.split(|b| *b == 0) {
        buf.extend_from_slice(chunk);
        let (_, bad) = crate::server::streaming::remotecommand::take_sizes(&mut buf);
        if bad.is_some() {
            return;
        }
    }
}

/// A static pod manifest (YAML or JSON, Pod or PodList), then what the agent
/// works out from a pod before anything runs: QoS, cgroup resources, admission
/// requests, hostname, and per container its environment (downward API,
/// `$(VAR)` expansion), command, subPathExpr, capabilities and probe timing.
pub fn pod_manifest(data: &[u8]) {
    let Ok(pods) = crate::pod::manifest::decode(data, "/etc/kubernetes/manifests/fuzz.yaml", "fuzz-node") else { return };
    let pod_ips = ["10.244.0.5".to_string()];
    let allocatable = crate::pod::resources::Allocatable { cpu_milli: 4000, memory: 8 << 30, ephemeral_storage: 100 << 30 };
    for pod in &pods {
        let _ = crate::cgroups::qos_class(pod);
        let _ = crate::cgroups::pods::pod_config(pod, 1024);
        let _ = crate::pod::admission::pod_requests(pod);
        let _ = crate::pod::admission::pod_hugepages(pod);
        let _ = crate::pod::dns::hostname_and_domain(pod, Some("cluster.local"));
        let Some(spec) = pod.spec.as_ref() else { continue };
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            let ctx = crate::pod::env::EnvContext {
                pod_ips: &pod_ips,
                host_ip: Some("10.0.0.10"),
                node_name: "fuzz-node",
                allocatable,
                objects: None,
                services: None,
            };
            if let Ok(env) = crate::pod::env::resolve(pod, c, &ctx) {
                let strings: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = crate::runtime::spec::resolve_args(c, &Default::default(), &strings);
                for m in c.volume_mounts.iter().flatten() {
                    let _ = crate::volume::mounts::sub_path(m, &env);
                }
            }
            let _ = crate::runtime::spec::capability_list(c, &[]);
            for p in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe].into_iter().flatten() {
                let _ = crate::pod::prober::Timing::of(p);
            }
            for r in ["limits.cpu", "requests.memory", "limits.ephemeral-storage"] {
                let _ = crate::pod::resources::container_value(c, r, Some("1Mi"), &allocatable);
            }
        }
    }
}

/// A KubeletConfiguration file: the document, then (through a file, as `--config`
/// gives it) the whole flag-and-file resolution into the agent's Config.
pub fn kubelet_config(data: &[u8]) {
    use clap::Parser;
    let doc = text(data);
    let Ok(cfg) = crate::kubelet_config::KubeletConfiguration::parse(&doc, Path::new("/etc/kubelet.yaml")) else { return };
    let _ = cfg.unknown_fields();
    let path = std::env::temp_dir().join(format!("rkubelet-fuzz-config-{}.yaml", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let args = ["rkubelet", "--config", &path.to_string_lossy(), "--hostname-override", "fuzz-node"].map(String::from);
    if let Ok(cli) = crate::config::Cli::try_parse_from(args) {
        if let Ok(c) = crate::config::Config::from_args(&cli.agent) {
            let _ = c.to_kubelet_configuration();
        }
    }
}

/// A kubeconfig: kube's reader, then the current context, user and client
/// certificate as the TLS bootstrap reads them; also a certificate store file
/// (certificates and key in one PEM).
pub fn kubeconfig(data: &[u8]) {
    use base64::Engine;
    let _ = crate::api::bootstrap::CertPair::parse(data, std::time::SystemTime::UNIX_EPOCH);
    let Ok(kc) = kube::config::Kubeconfig::from_yaml(&text(data)) else { return };
    let Ok((_, Some(user))) = crate::api::bootstrap::current_entries(&kc) else { return };
    if let Some(d) = user.client_certificate_data.as_deref() {
        if let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(d.trim()) {
            let _ = crate::api::bootstrap::parse_certs(&pem);
        }
    }
}

/// What CNI plugins and the agent's CNI cache hand back: a plugin result and the
/// pod's IPs in it, an error document, a cache record, network configurations.
pub fn cni(data: &[u8]) {
    use crate::network::cni::{cache, config::NetworkConfigList, exec, result};
    use std::os::unix::process::ExitStatusExt;
    if let Ok(v) = result::parse_output(data) {
        let _ = result::pod_ips(&v, "eth0");
    }
    let (out, err) = two(data);
    let _ = exec::parse_failure(out, err, std::process::ExitStatus::from_raw(256));
    let _ = cache::decode(data, Path::new("/var/lib/cni/results/x.json"));
    for list in [NetworkConfigList::from_list_bytes(data), NetworkConfigList::from_conf_bytes(data)].into_iter().flatten() {
        let _ = list.plugin_types();
    }
}

/// Registry documents: an index or manifest (media type sniffed, platform
/// chosen, descriptors checked, GC labels), an image config (diff IDs, chain
/// IDs, the user from the image's /etc/passwd and /etc/group), image references.
pub fn image(data: &[u8]) {
    use crate::runtime::image::manifest::{self, HostPlatform, Index, Kind, Manifest};
    if let Ok(media_type) = manifest::sniff_media_type(data) {
        match manifest::kind_of(&media_type) {
            Some(Kind::Index) => {
                if let Ok(index) = serde_json::from_slice::<Index>(data) {
                    let _ = manifest::child_gc_labels(&index.manifests);
                    if let Some(d) = manifest::select_manifest(&index, &HostPlatform::current()) {
                        let _ = (d.check(), manifest::ingest_ref(d));
                    }
                }
            }
            Some(Kind::Manifest) => {
                if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
                    for d in std::iter::once(&m.config).chain(&m.layers) {
                        let _ = (d.check(), manifest::ingest_ref(d), d.to_proto());
                    }
                    let _ = manifest::child_gc_labels(std::iter::once(&m.config).chain(&m.layers));
                }
            }
            None => {}
        }
    }
    if let Ok(config) = serde_json::from_slice::<oci_spec::image::ImageConfiguration>(data) {
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.iter().all(|d| manifest::is_valid_digest(d)) {
            let _ = manifest::chain_ids(diff_ids);
        }
    }
    let (passwd, rest) = two(data);
    let (group, user) = two(rest);
    let users = crate::runtime::user::ImageUsers::parse(&text(passwd), &text(group));
    let pod = k8s_openapi::api::core::v1::Pod::default();
    let _ = crate::runtime::user::resolve(&pod, &Default::default(), &text(user), &users);
    let reference = text(data);
    let _ = crate::runtime::image::reference::parse(&reference);
    let _ = crate::runtime::image::normalize_reference(&reference);
}

/// Registry credentials and hosts: docker config.json and .dockercfg (node
/// file and pull secrets), the `auth` field, credential provider plugin
/// configuration, containerd's hosts.toml and config.toml.
pub fn registry_auth(data: &[u8]) {
    use crate::runtime::image::{auth, hosts, keyring, provider};
    let _ = keyring::parse_docker_config_json(data);
    let _ = keyring::parse_dockercfg(data);
    let _ = auth::parse_docker_config(data);
    let s = text(data);
    let _ = keyring::decode_auth_field(&s);
    let (a, b) = s.split_once('\n').unwrap_or((&s, ""));
    let _ = keyring::url_matches(a, b);
    let _ = keyring::glob_match(a, b);
    let _ = provider::check_config(Path::new("/etc/kubernetes/credential-providers.yaml"), data);
    let dir = Path::new("/etc/containerd/certs.d/registry.example");
    let _ = hosts::parse_hosts(&s, dir, &dir.join("hosts.toml"), "registry.example", false);
    let _ = hosts::containerd_config_path(&s);
    let _ = crate::cgroups::containerd_driver(&s);
}

/// A container log file in the CRI format, rendered with options taken from the
/// input's first byte.
pub fn cri_log(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else { return };
    for line in rest.split(|b| *b == b'\n') {
        let _ = crate::logs::parse(line);
    }
    let o = crate::logs::Options {
        tail_lines: (first & 1 != 0).then_some(usize::from(first >> 4)),
        since: (first & 2 != 0).then_some(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH),
        timestamps: first & 4 != 0,
        limit_bytes: (first & 8 != 0).then_some(usize::from(*first)),
    };
    let _ = crate::logs::render(rest, &o);
}

/// Kernel and host files: cgroup limit, stat, pressure and io files (v1 and v2),
/// the node's resolv.conf.
pub fn kernel_files(data: &[u8]) {
    use crate::cgroups::usage;
    let s = text(data);
    let _ = usage::parse_limit(&s);
    let _ = usage::flat_field(&s, "inactive_file");
    let _ = usage::parse_pressure(&s);
    let _ = usage::parse_io_stat(&s);
    let (bytes, ops) = two(data);
    let _ = usage::parse_blkio_v1(&text(bytes), &text(ops));
    let _ = crate::pod::dns::parse(&s);
}

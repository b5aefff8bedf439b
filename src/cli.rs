//! `rkubelet pods`: the standalone agent's pods as `kubectl get pods -o wide`
//! would show them, or as a v1 PodList in JSON/YAML, read from the agent's state.

use std::process::ExitCode;

use k8s_openapi::api::core::v1::Pod;

use crate::config::PodsArgs;

/// kubectl's STATUS column: the pod phase, or the most telling container reason.
pub fn display_status(p: &Pod) -> String {
    let st = p.status.as_ref();
    let mut reason = st.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into());
    let inits = st.and_then(|s| s.init_container_statuses.clone()).unwrap_or_default();
    let n_init = inits.len();
    for (i, c) in inits.iter().enumerate() {
        let s = c.state.clone().unwrap_or_default();
        if let Some(t) = s.terminated.clone().filter(|t| t.exit_code != 0) {
            return format!("Init:{}", t.reason.unwrap_or_else(|| format!("ExitCode:{}", t.exit_code)));
        }
        if let Some(w) = s.waiting.as_ref().and_then(|w| w.reason.clone()).filter(|r| r != "PodInitializing") {
            return format!("Init:{w}");
        }
        if s.terminated.is_none() {
            return format!("Init:{i}/{n_init}");
        }
    }
    for c in st.and_then(|s| s.container_statuses.clone()).unwrap_or_default() {
        let s = c.state.unwrap_or_default();
        if let Some(r) = s.waiting.and_then(|w| w.reason).filter(|r| !r.is_empty()) {
            reason = r;
        } else if let Some(t) = s.terminated {
            reason = t.reason.unwrap_or_else(|| format!("ExitCode:{}", t.exit_code));
        }
    }
    reason
}

fn age(p: &Pod) -> String {
    let Some(t) = p.status.as_ref().and_then(|s| s.start_time.as_ref()) else { return "<unknown>".into() };
    let s = (chrono::Utc::now().timestamp() - t.0.as_second()).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

pub fn pods(args: &PodsArgs) -> ExitCode {
    let root = args.root_dir.clone().unwrap_or_else(|| std::path::PathBuf::from("/var/lib/rkubelet"));
    let pods = crate::pod::store::load_all(&root);
    let errors: Vec<String> = std::fs::read(root.join(crate::agent::MANIFEST_ERRORS_FILE))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    for e in &errors {
        eprintln!("manifest error: {e}");
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods, "metadata": {"resourceVersion": ""}});
    match args.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default()),
        "yaml" => print!("{}", serde_yaml::to_string(&list).unwrap_or_default()),
        "wide" | "" => {
            println!("{:<12} {:<36} {:<7} {:<26} {:<9} {:<8} {:<16} NODE", "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP");
            for p in &pods {
                let cs = p.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
                let ready = cs.iter().filter(|c| c.ready).count();
                let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
                println!(
                    "{:<12} {:<36} {:<7} {:<26} {:<9} {:<8} {:<16} {}",
                    p.metadata.namespace.as_deref().unwrap_or(""),
                    p.metadata.name.as_deref().unwrap_or(""),
                    format!("{ready}/{}", cs.len()),
                    display_status(p),
                    restarts,
                    age(p),
                    p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_else(|| "<none>".into()),
                    p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
                );
            }
        }
        other => {
            eprintln!("rkubelet pods: unknown output format {other:?} (use wide, json or yaml)");
            return ExitCode::from(64);
        }
    }
    ExitCode::SUCCESS
}

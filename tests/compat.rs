//! Config compatibility with the upstream kubelet 1.36 (issue 12): the agent
//! started with upstream flags and KubeletConfiguration fields it does not
//! implement runs, and says so in one warning at start.
//!
//! * c1: `--node-status-max-images=90 --cpu-manager-policy=none` and a config file
//!   with `qosReserved` (and a field v1beta1 does not have): exactly one WARN line,
//!   naming `--node-status-max-images` and `qosReserved` but not
//!   `--cpu-manager-policy` (`none` is what rkubelet does); the unknown field in
//!   upstream's lenient-decoding INFO line; a pod runs.

mod common;

use std::time::Duration;

use common::{compat_config, Agent, BUSYBOX};

#[test]
fn c1_unimplemented_flags_and_fields_give_one_warning_and_the_agent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = compat_config(dir.path());
    let agent = Agent::with_options("c1", &[], &["--node-status-max-images=90", "--cpu-manager-policy=none", "--config", config.to_str().unwrap()]);
    agent.write_manifest(
        "sleep.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: sleep\nspec:\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [\"sleep\", \"3600\"]\n"),
    );
    agent.wait_pod("sleep", Duration::from_secs(60), "Running", |p| (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(()));

    let log = agent.log_tail(usize::MAX);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    let named: Vec<&&str> = warnings.iter().filter(|l| l.contains("--node-status-max-images") || l.contains("not implement")).collect();
    assert_eq!(named.len(), 1, "one warning names what is not implemented: {warnings:#?}");
    let line = named[0];
    assert!(line.contains("\"--node-status-max-images\"") && line.contains("\"qosReserved\"") && line.contains("\"containerLogMaxWorkers\""), "{line}");
    assert!(!log.lines().any(|l| l.contains(" WARN ") && l.contains("cpu-manager-policy")), "cpuManagerPolicy none is what rkubelet does:\n{log}");
    // The field v1beta1 does not have: upstream's lenient decoding, at INFO.
    let lenient: Vec<&str> = log.lines().filter(|l| l.contains("Using lenient decoding as strict decoding failed")).collect();
    assert_eq!(lenient.len(), 1, "{log}");
    assert!(lenient[0].contains(" INFO ") && lenient[0].contains("unknown field \\\"someFutureField\\\""), "{}", lenient[0]);
    agent.remove_all_pods();
}

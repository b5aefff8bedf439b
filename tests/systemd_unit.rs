//! Checks on `systemd/rkubelet.service`.
//!
//! * `systemd-analyze verify` accepts the unit (with ExecStart pointed at the
//!   binary cargo built for this test run, since verify insists the program
//!   exists) and prints no diagnostic about it: unknown keys only warn, so
//!   warnings fail the test too. A machine without `systemd-analyze` fails the
//!   test: `scripts/setup.sh` installs the `systemd` package.
//! * The settings the agent depends on are present: Type=notify,
//!   Restart=always, KillMode=process (restarting the agent must not kill
//!   pods), Delegate=yes, ordering after containerd, Alias=kubelet.service.
//! * `systemd/10-kubeadm.conf` carries kubeadm's environment contract, and
//!   `systemd-analyze verify kubelet.service` accepts the unit with that drop-in
//!   applied: both files in a temporary unit directory put first on systemd's
//!   search path (`$SYSTEMD_UNIT_PATH`), reached through the alias name. A
//!   control run with a bad key in the drop-in shows the drop-in is read.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNIT_NAME: &str = "rkubelet.service";

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(UNIT_NAME)
}

fn unit_text() -> String {
    let path = unit_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A unit file parsed into section -> key -> values (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    let mut pending = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        // Backslash at the end of a line continues it.
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        if full.starts_with('[') {
            assert!(
                full.ends_with(']'),
                "line {}: bad section header {full:?}",
                n + 1
            );
            let name = full[1..full.len() - 1].to_string();
            unit.entry(name.clone()).or_default();
            section = Some(name);
            continue;
        }
        let (key, value) = full
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {full:?}", n + 1));
        let sec = section
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: assignment outside a section", n + 1));
        unit.get_mut(sec)
            .unwrap()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    assert!(pending.is_empty(), "unit ends inside a continued line");
    unit
}

fn values<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a [String] {
    unit.get(section)
        .unwrap_or_else(|| panic!("unit has no [{section}] section"))
        .get(key)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The single value of a key that must appear exactly once.
fn single<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    match values(unit, section, key) {
        [v] => v,
        [] => panic!("[{section}] has no {key}="),
        vs => panic!("[{section}] has {key}= {} times: {vs:?}", vs.len()),
    }
}

/// All space-separated words of a list-valued key (After=, Wants=, ...).
fn words(unit: &Unit, section: &str, key: &str) -> Vec<String> {
    values(unit, section, key)
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

#[test]
fn unit_has_required_settings() {
    let unit = parse_unit(&unit_text());

    assert!(!single(&unit, "Unit", "Description").is_empty());
    assert!(
        !words(&unit, "Unit", "Documentation").is_empty(),
        "no Documentation="
    );
    for key in ["After", "Wants"] {
        let w = words(&unit, "Unit", key);
        for dep in ["containerd.service", "network-online.target"] {
            assert!(w.iter().any(|x| x == dep), "{key}= lacks {dep}: {w:?}");
        }
    }

    assert_eq!(single(&unit, "Service", "Type"), "notify");
    assert_eq!(single(&unit, "Service", "Restart"), "always");
    assert_eq!(single(&unit, "Service", "RestartSec"), "10");
    assert_eq!(
        single(&unit, "Service", "KillMode"),
        "process",
        "restarting the agent must never kill pods"
    );
    assert_eq!(single(&unit, "Service", "Delegate"), "yes");

    let exec = single(&unit, "Service", "ExecStart");
    let mut argv = exec.split_whitespace();
    assert_eq!(argv.next(), Some("/usr/local/bin/rkubelet"));
    assert!(
        argv.any(|a| a == "--pod-manifest-path=/etc/kubernetes/manifests"),
        "ExecStart lacks --pod-manifest-path: {exec}"
    );

    let wanted = words(&unit, "Install", "WantedBy");
    assert!(
        wanted.iter().any(|w| w == "multi-user.target"),
        "WantedBy={wanted:?}"
    );
    // kubeadm runs `systemctl restart kubelet`; people run `systemctl status kubelet`.
    assert_eq!(words(&unit, "Install", "Alias"), ["kubelet.service"]);
}

fn dropin_text() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd").join("10-kubeadm.conf");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn kubeadm_dropin_has_kubeadms_environment_contract() {
    let d = parse_unit(&dropin_text());
    let env: Vec<&String> = values(&d, "Service", "Environment").iter().collect();
    for want in [
        "\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"",
        "\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"",
    ] {
        assert!(env.iter().any(|e| *e == want), "Environment= lacks {want}: {env:?}");
    }
    assert_eq!(
        values(&d, "Service", "EnvironmentFile"),
        ["-/var/lib/kubelet/kubeadm-flags.env", "-/etc/default/kubelet"]
    );
    // ExecStart= is reset, then set to the agent with the four variables in kubeadm's order.
    assert_eq!(
        values(&d, "Service", "ExecStart"),
        [
            "",
            "/usr/local/bin/rkubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS"
        ]
    );
}

/// Runs `systemd-analyze verify --man=no <unit>` (a unit name or file) with `env`,
/// bounded to 60 s: (success, stdout + stderr).
fn analyze_verify(unit: &str, env: &[(&str, String)], cwd: &std::path::Path) -> (bool, String) {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no", unit]).current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run systemd-analyze ({e}); scripts/setup.sh installs the `systemd` package"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for systemd-analyze") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("systemd-analyze verify did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    (status.success(), out)
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_with_the_kubeadm_dropin() {
    let program = env!("CARGO_BIN_EXE_rkubelet");
    let dir = tempfile::tempdir().expect("temp dir");
    let units = dir.path().join("system");
    let dropins = units.join("rkubelet.service.d");
    std::fs::create_dir_all(&dropins).unwrap();
    // verify insists the programs exist: point both ExecStart= lines at the test build.
    std::fs::write(units.join(UNIT_NAME), unit_text().replace("/usr/local/bin/rkubelet", program)).unwrap();
    let dropin = dropin_text().replace("/usr/local/bin/rkubelet", program);
    std::fs::write(dropins.join("10-kubeadm.conf"), &dropin).unwrap();
    // The alias link `systemctl enable` makes, so the unit is reached as kubelet.service.
    std::os::unix::fs::symlink(units.join(UNIT_NAME), units.join("kubelet.service")).unwrap();
    // First on the search path; the trailing ':' keeps the defaults (sysinit.target...).
    let env = [("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))];

    let (ok, out) = analyze_verify("kubelet.service", &env, dir.path());
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    assert!(out.trim().is_empty(), "systemd-analyze verify complained:\n{out}");

    // Control: the same with an unknown key in the drop-in is reported, naming it.
    std::fs::write(dropins.join("10-kubeadm.conf"), format!("{dropin}NoSuchKey=1\n")).unwrap();
    let (_, out) = analyze_verify("kubelet.service", &env, dir.path());
    assert!(out.contains("10-kubeadm.conf") && out.contains("NoSuchKey"), "the drop-in was not read:\n{out}");
}

#[test]
fn systemd_analyze_verify_accepts_the_reset_path_and_service() {
    let program = env!("CARGO_BIN_EXE_rkubelet");
    let dir = tempfile::tempdir().expect("temp dir");
    let units = dir.path().join("system");
    std::fs::create_dir_all(&units).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let service = std::fs::read_to_string(repo.join("rkubelet-reset.service")).unwrap();
    let path = std::fs::read_to_string(repo.join("rkubelet-reset.path")).unwrap();
    let reset = parse_unit(&service);
    // kubeadm reset's last step deletes the kubeconfig: that change starts the service,
    // which runs only once the file is gone, and does nothing while the agent runs.
    assert_eq!(single(&parse_unit(&path), "Path", "PathChanged"), "/etc/kubernetes/kubelet.conf");
    assert_eq!(single(&parse_unit(&path), "Path", "Unit"), "rkubelet-reset.service");
    assert_eq!(single(&reset, "Unit", "ConditionPathExists"), "!/etc/kubernetes/kubelet.conf");
    assert_eq!(single(&reset, "Service", "Type"), "oneshot");
    let exec = words(&reset, "Service", "ExecStart");
    assert_eq!(exec.iter().rev().take(2).map(String::as_str).collect::<Vec<_>>(), ["--if-stopped", "reset"], "{exec:?}");
    std::fs::write(units.join("rkubelet-reset.service"), service.replace("/usr/local/bin/rkubelet", program)).unwrap();
    std::fs::write(units.join("rkubelet-reset.path"), &path).unwrap();
    let env = [("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))];
    for unit in ["rkubelet-reset.path", "rkubelet-reset.service"] {
        let (ok, out) = analyze_verify(unit, &env, dir.path());
        assert!(ok && out.trim().is_empty(), "systemd-analyze verify {unit}:\n{out}");
    }
}

/// The unit text with ExecStart's program replaced by `program`.
fn with_program(text: &str, program: &str) -> String {
    let quoted = if program.contains(char::is_whitespace) {
        format!("\"{program}\"")
    } else {
        program.to_string()
    };
    let mut replaced = 0;
    let out: Vec<String> = text
        .lines()
        .map(|line| match line.strip_prefix("ExecStart=") {
            Some(rest) => {
                replaced += 1;
                let args = rest
                    .split_once(char::is_whitespace)
                    .map(|(_, a)| a)
                    .unwrap_or("");
                format!("ExecStart={quoted} {args}").trim_end().to_string()
            }
            None => line.to_string(),
        })
        .collect();
    assert_eq!(replaced, 1, "expected exactly one ExecStart= line");
    out.join("\n") + "\n"
}

#[test]
fn systemd_analyze_verify_accepts_unit() {
    let program = env!("CARGO_BIN_EXE_rkubelet");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(UNIT_NAME);
    std::fs::write(&path, with_program(&unit_text(), program)).expect("write unit copy");

    let (ok, out) = analyze_verify(path.to_str().unwrap(), &[], dir.path());
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    // Unknown keys or bad values only warn (exit 0); any line about our unit fails.
    let complaints: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(UNIT_NAME))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complained about the unit:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn parser_and_rewrite_work() {
    let unit = parse_unit(
        "# c\n[Unit]\nAfter=a.service \\\n  b.service\nAfter=c.target\n[Service]\nExecStart=/x --y=1 z\n",
    );
    assert_eq!(
        words(&unit, "Unit", "After"),
        ["a.service", "b.service", "c.target"]
    );
    let text = with_program(
        "[Service]\nExecStart=/usr/local/bin/rkubelet --a=b\n",
        "/p q/r",
    );
    assert_eq!(text, "[Service]\nExecStart=\"/p q/r\" --a=b\n");
}

//! `scripts/install.sh` / `scripts/uninstall.sh` into a temporary root
//! (`--destdir`), and `rkubelet --version` against kubeadm's preflight pattern.
//!
//! * install lays out exactly the expected files, links and modes (including
//!   the `systemctl enable` links: multi-user.target.wants and the
//!   kubelet.service alias); a second run changes nothing (same tree, same
//!   contents, same mtimes);
//! * with a kubelet that is not rkubelet in the root, install refuses (exit 2)
//!   and changes nothing;
//! * uninstall removes what install added and nothing else.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a repo script with args, bounded to 120 s.
fn script(name: &str, args: &[&str]) -> Output {
    let mut child = Command::new(repo().join("scripts").join(name))
        .args(args)
        .env_remove("DESTDIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn install(root: &Path) -> Output {
    script("install.sh", &["--destdir", root.to_str().unwrap(), "--binary", env!("CARGO_BIN_EXE_rkubelet")])
}

/// Every entry below `root`: path -> "d 755", "f 644 <len> <mtime>", "l -> target".
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            if md.file_type().is_symlink() {
                out.insert(rel, format!("l -> {}", std::fs::read_link(&p).unwrap().display()));
            } else if md.is_dir() {
                out.insert(rel, format!("d {mode:o}"));
                walk(root, &p, out);
            } else {
                out.insert(rel, format!("f {mode:o} {} {}.{}", md.len(), md.mtime(), md.mtime_nsec()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The tree without sizes and mtimes: what must be there, and how.
fn layout(t: &BTreeMap<String, String>) -> Vec<String> {
    t.iter()
        .map(|(p, v)| {
            let kind: String = if v.starts_with('f') { v.split(' ').take(2).collect::<Vec<_>>().join(" ") } else { v.clone() };
            format!("{p} {kind}")
        })
        .collect()
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed ({}):\n{}{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

#[test]
fn install_lays_out_the_expected_files_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    ok(&install(root), "install");
    let first = tree(root);
    let units = "/etc/systemd/system";
    let expected = [
        "/etc d 755".to_string(),
        "/etc/kubernetes d 755".into(),
        "/etc/kubernetes/manifests d 755".into(),
        "/etc/systemd d 755".into(),
        format!("{units} d 755"),
        format!("{units}/kubelet.service l -> {units}/rkubelet.service"),
        format!("{units}/multi-user.target.wants d 755"),
        format!("{units}/multi-user.target.wants/rkubelet-reset.path l -> {units}/rkubelet-reset.path"),
        format!("{units}/multi-user.target.wants/rkubelet.service l -> {units}/rkubelet.service"),
        format!("{units}/rkubelet-reset.path f 644"),
        format!("{units}/rkubelet-reset.service f 644"),
        format!("{units}/rkubelet.service f 644"),
        format!("{units}/rkubelet.service.d d 755"),
        format!("{units}/rkubelet.service.d/10-kubeadm.conf f 644"),
        "/usr d 755".into(),
        "/usr/local d 755".into(),
        "/usr/local/bin d 755".into(),
        "/usr/local/bin/kubelet l -> rkubelet".into(),
        "/usr/local/bin/rkubelet f 755".into(),
    ];
    assert_eq!(layout(&first), expected);
    // Contents are the repo's files and the given binary.
    let same = |installed: &str, source: PathBuf| {
        assert_eq!(std::fs::read(root.join(installed.trim_start_matches('/'))).unwrap(), std::fs::read(&source).unwrap(), "{installed}");
    };
    same("/usr/local/bin/rkubelet", PathBuf::from(env!("CARGO_BIN_EXE_rkubelet")));
    same("/etc/systemd/system/rkubelet.service", repo().join("systemd/rkubelet.service"));
    same("/etc/systemd/system/rkubelet.service.d/10-kubeadm.conf", repo().join("systemd/10-kubeadm.conf"));
    same("/etc/systemd/system/rkubelet-reset.path", repo().join("systemd/rkubelet-reset.path"));
    same("/etc/systemd/system/rkubelet-reset.service", repo().join("systemd/rkubelet-reset.service"));
    // The kubelet on PATH is rkubelet.
    let v = Command::new(root.join("usr/local/bin/kubelet")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("+rkubelet."), "{v:?}");

    let second = install(root);
    ok(&second, "second install");
    assert_eq!(tree(root), first, "a second install changed the tree (contents, modes or mtimes)");
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(!log.contains("installed /") && !log.contains("enabled"), "a second install redid work:\n{log}");
}

#[test]
fn install_refuses_next_to_a_real_kubelet_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bin = root.join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("kubelet");
    std::fs::write(&fake, "#!/bin/sh\necho 'Kubernetes v1.36.0'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = tree(root);
    let out = install(root);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a kubelet that is not rkubelet is installed: /usr/bin/kubelet"), "{err}");
    assert_eq!(tree(root), before, "install changed files although it refused");
}

#[test]
fn uninstall_removes_what_install_added_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Something of the node's own that must survive.
    let manifests = root.join("etc/kubernetes/manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("web.yaml"), "kind: Pod\n").unwrap();
    let before = tree(root);
    ok(&install(root), "install");
    ok(&script("uninstall.sh", &["--destdir", root.to_str().unwrap()]), "uninstall");
    let left: BTreeMap<_, _> = tree(root).into_iter().filter(|(_, v)| !v.starts_with('d')).collect();
    let kept: BTreeMap<_, _> = before.into_iter().filter(|(_, v)| !v.starts_with('d')).collect();
    assert_eq!(left, kept, "uninstall left files behind or removed the node's own");
}

/// kubeadm's preflight reads `kubelet --version` with this pattern
/// (kubernetes/kubernetes cmd/kubeadm/app/preflight/utils.go, GetKubeletVersion).
const KUBEADM_KUBELET_VERSION_RE: &str = r"^\s*Kubernetes v((0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)([-0-9a-zA-Z_\.+]*)?)\s*$";

#[test]
fn version_is_one_line_kubeadm_preflight_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_rkubelet")).arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    // kubeadm trims the combined output first.
    let re = regex::Regex::new(KUBEADM_KUBELET_VERSION_RE).unwrap();
    let caps = re.captures(text.trim()).unwrap_or_else(|| panic!("kubeadm would reject {text:?}"));
    let minor: u32 = caps[3].parse().unwrap();
    assert_eq!(&caps[2], "1");
    assert!(minor >= 30, "API level {text:?}");
    assert!(text.contains(&format!("+rkubelet.{}", env!("CARGO_PKG_VERSION"))), "{text:?}");

    // `rkubelet version`: the full build information.
    let full = Command::new(env!("CARGO_BIN_EXE_rkubelet")).arg("version").output().unwrap();
    let full = String::from_utf8(full.stdout).unwrap();
    assert!(full.starts_with(text.trim()) && full.contains(&format!("rkubelet {}", env!("CARGO_PKG_VERSION"))), "{full}");
}

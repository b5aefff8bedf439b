//! A container's volume mounts (pkg/kubelet/kubelet_pods.go `makeMounts`):
//! `subPath` and `subPathExpr` (expanded from the container's env), `readOnly`,
//! and `mountPropagation` mapped like upstream (`translateMountPropagation`) and
//! containerd's CRI (None → rprivate, HostToContainer → rslave, Bidirectional →
//! rshared, only for privileged containers).

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, VolumeMount};

use super::VolumeMap;
use crate::runtime::spec::{expand, BindMount, Propagation};
use tracing::warn;

/// The propagation a mount asks for; privileged containers only for Bidirectional.
pub fn propagation(mode: Option<&str>, privileged: bool) -> Result<Propagation, String> {
    match mode {
        None | Some("None") => Ok(Propagation::Private),
        Some("HostToContainer") => Ok(Propagation::HostToContainer),
        Some("Bidirectional") if privileged => Ok(Propagation::Bidirectional),
        Some("Bidirectional") => Err("Bidirectional mount propagation is available only to privileged containers".into()),
        Some(other) => Err(format!("invalid MountPropagation mode: {other:?}")),
    }
}

/// The `$(VAR)` names `s` refers to (`$$` escapes a `$`), as upstream's expansion reads them.
fn references(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    out.push(&s[i + 2..i + 2 + end]);
                    i += 3 + end;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// `subPathExpr` expanded from the container's env; a reference to a missing or
/// empty variable fails (kubecontainer `ExpandContainerVolumeMounts`).
pub fn expand_sub_path(expr: &str, env: &[(String, String)]) -> Result<String, String> {
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let missing: BTreeSet<&str> = references(expr).into_iter().filter(|k| vars.get(*k).is_none_or(|v| v.is_empty())).collect();
    if !missing.is_empty() {
        return Err(format!("missing value for {}", missing.into_iter().collect::<Vec<_>>().join(", ")));
    }
    Ok(expand(expr, &vars))
}

/// The sub path of a mount, validated (upstream's messages).
pub fn sub_path(m: &VolumeMount, env: &[(String, String)]) -> Result<Option<String>, String> {
    let sub = match m.sub_path_expr.as_deref().filter(|s| !s.is_empty()) {
        Some(expr) => expand_sub_path(expr, env)?,
        None => m.sub_path.clone().unwrap_or_default(),
    };
    if sub.is_empty() {
        return Ok(None);
    }
    if sub.starts_with('/') {
        return Err(format!("error SubPath `{sub}` must not be an absolute path"));
    }
    if sub.split('/').any(|p| p == "..") {
        return Err(format!("unable to provision SubPath `{sub}`: must not contain '..'"));
    }
    Ok(Some(sub))
}

/// Fails when `path` (or, if it does not exist yet, its deepest existing ancestor)
/// resolves outside `volume` — a sub path through a symlink the container made
/// (upstream opens each component with O_NOFOLLOW for the same reason, pkg/volume/util/subpath).
pub fn ensure_within(volume: &Path, path: &Path, sub: &str) -> Result<(), String> {
    let base = std::fs::canonicalize(volume).map_err(|e| format!("error resolving volume path {}: {e}", volume.display()))?;
    let mut probe = path.to_path_buf();
    let resolved = loop {
        match std::fs::canonicalize(&probe) {
            Ok(r) => break r,
            Err(_) if probe.pop() && probe.starts_with(volume) => continue,
            Err(e) => return Err(format!("error resolving subpath {sub:?}: {e}")),
        }
    };
    if resolved.starts_with(&base) {
        Ok(())
    } else {
        Err(format!("subpath {:?} not within volume path {:?}", resolved.display().to_string(), base.display().to_string()))
    }
}

/// The mount point holding `path` and its optional fields, from mountinfo text
/// (the longest mount point that is a prefix; the last one mounted wins a tie).
fn mount_of<'a>(mountinfo: &'a str, path: &Path) -> Option<(&'a str, Vec<&'a str>)> {
    let mut best: Option<(&str, Vec<&str>)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(target), Some(sep)) = (fields.get(4), fields.iter().position(|f| *f == "-")) else { continue };
        if path.starts_with(target) && best.as_ref().is_none_or(|(b, _)| target.len() >= b.len()) {
            best = Some((target, fields.get(6..sep).map(<[&str]>::to_vec).unwrap_or_default()));
        }
    }
    best
}

/// containerd's CRI checks (`ensureShared` / `ensureSharedOrSlave`): Bidirectional
/// needs the source on a shared mount, HostToContainer on a shared or slave one.
pub fn check_propagation(mountinfo: &str, source: &Path, p: Propagation) -> Result<(), String> {
    if p == Propagation::Private {
        return Ok(());
    }
    let Some((target, optional)) = mount_of(mountinfo, source) else {
        return Err(format!("could not find the mount point of {:?}", source.display().to_string()));
    };
    let shared = optional.iter().any(|o| o.starts_with("shared:"));
    let slave = optional.iter().any(|o| o.starts_with("master:"));
    let src = source.display().to_string();
    match p {
        Propagation::Bidirectional if !shared => Err(format!("path {src:?} is mounted on {target:?} but it is not a shared mount")),
        Propagation::HostToContainer if !shared && !slave => Err(format!("path {src:?} is mounted on {target:?} but it is not a shared or slave mount")),
        _ => Ok(()),
    }
}

/// Where a container's sub path mounts are bound: `<pod dir>/volume-subpaths`
/// (upstream's layout: `<volume>/<container>/<index of the volumeMount>`).
pub const SUBPATHS_DIR: &str = "volume-subpaths";

/// Opens `sub` under `volume` without leaving it, whatever symlinks the
/// container put there or swaps in meanwhile (openat2 `RESOLVE_BENEATH`: a
/// symlink may lead elsewhere inside the volume, never out of it), and binds
/// the opened object onto `target` (created as an empty file or directory).
/// The container then gets `target`, which cannot change under it: the
/// kernel's answer to what upstream's `doSafeOpen` + bind of `/proc/<pid>/fd/<fd>`
/// does (pkg/volume/util/subpath/subpath_linux.go, CVE-2017-1002101).
pub fn bind_sub_path(volume: &Path, sub: &str, target: &Path) -> Result<(), String> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let escape = |e: nix::Error| match e {
        nix::Error::EXDEV | nix::Error::ELOOP => format!("subpath {sub:?} not within volume path {:?}", volume.display().to_string()),
        e => format!("cannot open subpath {sub:?} of {:?}: {e}", volume.display().to_string()),
    };
    let dir = std::fs::File::open(volume).map_err(|e| format!("error resolving volume path {}: {e}", volume.display()))?;
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(&dir, Path::new(sub.trim_start_matches('/')), how).map_err(escape)?;
    let is_dir = nix::sys::stat::fstat(&fd).map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR).map_err(|e| format!("stat of subpath {sub:?}: {e}"))?;
    if crate::volume::is_mountpoint(target) {
        // A restarted container: bind afresh (the sub path may have been replaced).
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(|e| format!("unmounting {}: {e}", target.display()))?;
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let made = if is_dir { std::fs::create_dir_all(target) } else { std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(target).map(|_| ()) };
    made.map_err(|e| format!("creating {}: {e}", target.display()))?;
    let proc_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    nix::mount::mount(Some(proc_fd.as_str()), target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("error mounting subpath {sub:?} of volume {:?}: {e}", volume.display().to_string()))
}

/// Creates the missing directories of `sub` under `volume` with `mode`, each
/// step opened beneath the volume (upstream's doSafeMakeDir): a symlink swapped
/// in meanwhile cannot make it create anything outside.
fn make_dirs_beneath(volume: &Path, sub: &str, mode: u32) -> Result<(), String> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let beneath = |dir: &std::fs::File, p: &Path| {
        let how = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        nix::fcntl::openat2(dir, p, how)
    };
    let root = std::fs::File::open(volume).map_err(|e| format!("{}: {e}", volume.display()))?;
    let mut so_far = PathBuf::new();
    for comp in Path::new(sub).components() {
        let Component::Normal(name) = comp else { return Err(format!("unexpected component in subpath {sub:?}")) };
        let parent = if so_far.as_os_str().is_empty() { root.try_clone().map_err(|e| e.to_string())?.into() } else { beneath(&root, &so_far).map_err(|e| format!("{sub:?}: {e}"))? };
        so_far.push(name);
        match nix::sys::stat::mkdirat(&parent, name, nix::sys::stat::Mode::from_bits_truncate(mode)) {
            Ok(()) => {
                let made = beneath(&root, &so_far).map_err(|e| format!("{sub:?}: {e}"))?;
                nix::sys::stat::fchmod(&made, nix::sys::stat::Mode::from_bits_truncate(mode)).map_err(|e| format!("{sub:?}: {e}"))?;
            }
            Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(format!("{sub:?}: {e}")),
        }
    }
    Ok(())
}

/// Unmounts and removes `<pod dir>/volume-subpaths` (never recursing into a
/// mount that would not go).
pub fn remove_sub_paths(pod_dir: &Path) -> std::io::Result<()> {
    let base = pod_dir.join(SUBPATHS_DIR);
    let Ok(volumes) = std::fs::read_dir(&base) else { return Ok(()) };
    for v in volumes.flatten() {
        for c in std::fs::read_dir(v.path()).into_iter().flatten().flatten() {
            for t in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                let p = t.path();
                if crate::volume::is_mountpoint(&p) {
                    nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)?;
                }
                if p.is_dir() { std::fs::remove_dir(&p)? } else { std::fs::remove_file(&p)? }
            }
            std::fs::remove_dir(c.path())?;
        }
        std::fs::remove_dir(v.path())?;
    }
    std::fs::remove_dir(&base)
}

/// The bind mounts for the container's `volumeMounts`. Missing sub paths are
/// created with the volume directory's mode. `env` is the container's resolved
/// env. With `pod_dir`, sub paths are bound under its [`SUBPATHS_DIR`] through
/// [`bind_sub_path`] (the container's mounts never follow a symlink out).
pub fn container_mounts(c: &Container, volumes: &VolumeMap, env: &[(String, String)], privileged: bool, pod_dir: Option<&Path>) -> Result<Vec<BindMount>, String> {
    let mut out = Vec::new();
    for (index, m) in c.volume_mounts.iter().flatten().enumerate() {
        let Some(vol) = volumes.get(&m.name) else {
            return Err(format!("cannot find volume {:?} to mount into container {:?}", m.name, c.name));
        };
        let mut host = vol.path.clone();
        if let Some(sub) = sub_path(m, env)? {
            host = vol.path.join(&sub);
            // Symlinks the container wrote must not lead a sub path out of its
            // volume. As upstream, the details (host paths) go to the log only.
            let prepare_failed = |detail: String| {
                warn!(container = %c.name, volume_mount = %m.name, error = %detail, "Failed to prepare subPath for volumeMount of the container");
                format!("failed to prepare subPath for volumeMount {:?} of container {:?}", m.name, c.name)
            };
            ensure_within(&vol.path, &host, &sub).map_err(prepare_failed)?;
            if std::fs::symlink_metadata(&host).is_err() {
                let mode = std::fs::metadata(&vol.path).map(|md| md.permissions().mode() & 0o7777).unwrap_or(0o755);
                make_dirs_beneath(&vol.path, &sub, mode).map_err(|e| {
                    warn!(container = %c.name, volume_mount = %m.name, error = %e, "creating the subPath directory");
                    format!("failed to create subPath directory for volumeMount {:?} of container {:?}", m.name, c.name)
                })?;
            }
            if let Some(pod_dir) = pod_dir {
                let target = pod_dir.join(SUBPATHS_DIR).join(&m.name).join(&c.name).join(index.to_string());
                bind_sub_path(&vol.path, &sub, &target).map_err(prepare_failed)?;
                host = target;
            }
        }
        let prop = propagation(m.mount_propagation.as_deref(), privileged)?;
        if prop != Propagation::Private {
            let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading mountinfo: {e}"))?;
            let real = std::fs::canonicalize(&host).unwrap_or_else(|_| host.clone());
            check_propagation(&info, &real, prop)?;
        }
        out.push(BindMount { host_path: host, container_path: m.mount_path.clone(), read_only: vol.read_only || m.read_only.unwrap_or(false), propagation: prop });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Prepared;

    fn env() -> Vec<(String, String)> {
        vec![("POD".into(), "web-1".into()), ("EMPTY".into(), String::new())]
    }

    #[test]
    fn sub_path_expr_expands_from_env_and_reports_missing_values() {
        assert_eq!(expand_sub_path("logs/$(POD)", &env()).unwrap(), "logs/web-1");
        assert_eq!(expand_sub_path("a$$(POD)", &env()).unwrap(), "a$(POD)");
        assert_eq!(expand_sub_path("$(NOPE)/$(EMPTY)/$(POD)", &env()).unwrap_err(), "missing value for EMPTY, NOPE");
        let m = |sub: Option<&str>, expr: Option<&str>| VolumeMount { name: "v".into(), mount_path: "/m".into(), sub_path: sub.map(String::from), sub_path_expr: expr.map(String::from), ..Default::default() };
        assert_eq!(sub_path(&m(Some("x"), Some("$(POD)")), &env()).unwrap().as_deref(), Some("web-1"), "subPathExpr wins");
        assert_eq!(sub_path(&m(Some("/abs"), None), &env()).unwrap_err(), "error SubPath `/abs` must not be an absolute path");
        assert_eq!(sub_path(&m(Some("a/../b"), None), &env()).unwrap_err(), "unable to provision SubPath `a/../b`: must not contain '..'");
        assert_eq!(sub_path(&m(None, None), &env()).unwrap(), None);
    }

    #[test]
    fn propagation_maps_like_upstream_and_bidirectional_needs_privilege() {
        assert_eq!(propagation(None, false), Ok(Propagation::Private));
        assert_eq!(propagation(Some("None"), false), Ok(Propagation::Private));
        assert_eq!(propagation(Some("HostToContainer"), false), Ok(Propagation::HostToContainer));
        assert_eq!(propagation(Some("Bidirectional"), true), Ok(Propagation::Bidirectional));
        assert!(propagation(Some("Bidirectional"), false).unwrap_err().contains("only to privileged containers"));
        assert_eq!(propagation(Some("Shared"), true).unwrap_err(), "invalid MountPropagation mode: \"Shared\"");
    }

    #[test]
    fn propagation_needs_a_shared_or_slave_source_mount_like_containerd() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    30 22 0:5 / /var/lib/k rw master:7 - tmpfs tmpfs rw\n\
                    31 22 0:6 / /srv rw - tmpfs tmpfs rw\n";
        let p = |s: &str| Path::new(s).to_path_buf();
        assert_eq!(check_propagation(info, &p("/home/x"), Propagation::Bidirectional), Ok(()));
        assert_eq!(check_propagation(info, &p("/var/lib/k/pods"), Propagation::HostToContainer), Ok(()));
        assert_eq!(
            check_propagation(info, &p("/var/lib/k/pods"), Propagation::Bidirectional).unwrap_err(),
            "path \"/var/lib/k/pods\" is mounted on \"/var/lib/k\" but it is not a shared mount"
        );
        assert_eq!(
            check_propagation(info, &p("/srv/a"), Propagation::HostToContainer).unwrap_err(),
            "path \"/srv/a\" is mounted on \"/srv\" but it is not a shared or slave mount"
        );
        assert_eq!(check_propagation(info, &p("/srv/a"), Propagation::Private), Ok(()));
        assert_eq!(check_propagation(info, &p("/srvx"), Propagation::HostToContainer), Ok(()), "/srvx is on /, not /srv");
    }

    #[test]
    fn sub_paths_are_bound_beneath_their_volume_and_symlinks_out_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (vol, pod) = (t.path().join("vol"), t.path().join("pod"));
        std::fs::create_dir_all(vol.join("data")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(vol.join("data/f"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("esc")).unwrap();
        std::os::unix::fs::symlink("../outside", vol.join("up")).unwrap();
        std::os::unix::fs::symlink("data", vol.join("inner")).unwrap();
        let target = |i: usize| pod.join(SUBPATHS_DIR).join("vol").join("c").join(i.to_string());
        bind_sub_path(&vol, "data", &target(0)).unwrap();
        assert_eq!(std::fs::read_to_string(target(0).join("f")).unwrap(), "inside");
        bind_sub_path(&vol, "data/f", &target(1)).unwrap();
        assert_eq!(std::fs::read_to_string(target(1)).unwrap(), "inside", "a file sub path");
        bind_sub_path(&vol, "inner", &target(2)).unwrap();
        assert!(target(2).join("f").exists(), "a symlink within the volume is followed");
        for bad in ["esc", "esc/passwd", "up", "inner/../../outside"] {
            let e = bind_sub_path(&vol, bad, &target(9)).unwrap_err();
            assert!(e.contains("not within volume path"), "{bad}: {e}");
        }
        // Bound again (a restarted container): still one mount.
        bind_sub_path(&vol, "data", &target(0)).unwrap();
        remove_sub_paths(&pod).unwrap();
        assert!(!pod.join(SUBPATHS_DIR).exists());
        assert_eq!(std::fs::read_to_string(vol.join("data/f")).unwrap(), "inside", "the volume's content stays");
        assert!(!crate::volume::is_mountpoint(&target(0)));
    }

    #[test]
    fn mounts_create_sub_paths_and_carry_read_only() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut vols = VolumeMap::new();
        vols.insert("data".into(), Prepared { path: t.path().to_path_buf(), read_only: false });
        vols.insert("cfg".into(), Prepared { path: "/cfg".into(), read_only: true });
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                VolumeMount { name: "data".into(), mount_path: "/d".into(), sub_path_expr: Some("pods/$(POD)".into()), read_only: Some(true), ..Default::default() },
                VolumeMount { name: "cfg".into(), mount_path: "/etc/cfg".into(), mount_propagation: Some("None".into()), ..Default::default() },
            ]),
            ..Default::default()
        };
        let m = container_mounts(&c, &vols, &env(), false, None).unwrap();
        assert_eq!(m[0].host_path, t.path().join("pods/web-1"));
        assert!(m[0].read_only);
        assert_eq!(std::fs::metadata(t.path().join("pods/web-1")).unwrap().permissions().mode() & 0o777, 0o777);
        assert!(m[1].read_only, "API data volumes are read-only");
        assert_eq!(m[1].propagation, Propagation::Private);
        // A symlink out of the volume is refused, before anything is created through it.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("evil")).unwrap();
        for sub in ["evil", "evil/deeper"] {
            let c = Container { name: "c".into(), volume_mounts: Some(vec![VolumeMount { name: "data".into(), mount_path: "/e".into(), sub_path: Some(sub.into()), ..Default::default() }]), ..Default::default() };
            let e = container_mounts(&c, &vols, &env(), false, None).unwrap_err();
            assert_eq!(e, "failed to prepare subPath for volumeMount \"data\" of container \"c\"", "upstream's message, details only in the log");
        }
        assert!(!outside.path().join("deeper").exists());
        // Links inside the volume are fine (configMap keys are links through ..data).
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", t.path().join("alias")).unwrap();
        assert!(ensure_within(t.path(), &t.path().join("alias"), "alias").is_ok());
        let c = Container { name: "c".into(), volume_mounts: Some(vec![VolumeMount { name: "nope".into(), mount_path: "/x".into(), ..Default::default() }]), ..Default::default() };
        assert_eq!(container_mounts(&c, &vols, &env(), false, None).unwrap_err(), "cannot find volume \"nope\" to mount into container \"c\"");
    }
}

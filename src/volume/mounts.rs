//! A container's volume mounts (pkg/kubelet/kubelet_pods.go `makeMounts`):
//! `subPath` and `subPathExpr` (expanded from the container's env), `readOnly`,
//! and `mountPropagation` mapped like upstream (`translateMountPropagation`) and
//! containerd's CRI (None → rprivate, HostToContainer → rslave, Bidirectional →
//! rshared, only for privileged containers).

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, VolumeMount};

use super::VolumeMap;
use crate::runtime::spec::{expand, BindMount, Propagation};

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

/// The bind mounts for the container's `volumeMounts`. Missing sub paths are
/// created with the volume directory's mode. `env` is the container's resolved env.
pub fn container_mounts(c: &Container, volumes: &VolumeMap, env: &[(String, String)], privileged: bool) -> Result<Vec<BindMount>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(vol) = volumes.get(&m.name) else {
            return Err(format!("cannot find volume {:?} to mount into container {:?}", m.name, c.name));
        };
        let mut host = vol.path.clone();
        if let Some(sub) = sub_path(m, env)? {
            host = vol.path.join(&sub);
            // Symlinks the container wrote must not lead a sub path out of its volume.
            ensure_within(&vol.path, &host, &sub)?;
            if std::fs::symlink_metadata(&host).is_err() {
                let mode = std::fs::metadata(&vol.path).map(|md| md.permissions().mode() & 0o7777).unwrap_or(0o755);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(&host)
                    .and_then(|_| std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode)))
                    .map_err(|_| format!("failed to create subPath directory for volumeMount {:?} of container {:?}", m.name, c.name))?;
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
        let m = container_mounts(&c, &vols, &env(), false).unwrap();
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
            let e = container_mounts(&c, &vols, &env(), false).unwrap_err();
            assert!(e.starts_with("subpath ") && e.contains("not within volume path"), "{e}");
        }
        assert!(!outside.path().join("deeper").exists());
        // Links inside the volume are fine (configMap keys are links through ..data).
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", t.path().join("alias")).unwrap();
        assert!(ensure_within(t.path(), &t.path().join("alias"), "alias").is_ok());
        let c = Container { name: "c".into(), volume_mounts: Some(vec![VolumeMount { name: "nope".into(), mount_path: "/x".into(), ..Default::default() }]), ..Default::default() };
        assert_eq!(container_mounts(&c, &vols, &env(), false).unwrap_err(), "cannot find volume \"nope\" to mount into container \"c\"");
    }
}

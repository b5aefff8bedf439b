//! AppArmor, as the kubelet checks it (pkg/security/apparmor/validate.go and
//! lifecycle's appArmorAdmitHandler) and containerd's CRI applies it
//! (pkg/cri/server/container_create_linux.go generateApparmorSpecOpts): a pod
//! that asks for a profile (`appArmorProfile` on the pod or a container, not
//! Unconfined, or the `container.apparmor.security.beta.kubernetes.io/`
//! annotations) on a host without AppArmor is not run: it stays Pending with
//! reason `AppArmor`, message `Cannot enforce AppArmor: <why>`, and its
//! containers wait as `Blocked` (upstream's soft admission, canRunPod). On an
//! AppArmor host a container gets its Localhost profile by name, or
//! containerd's default profile for RuntimeDefault when that is loaded.

use std::path::Path;

use k8s_openapi::api::core::v1::{AppArmorProfile, Container, Pod};

/// The pod status reason of a pod AppArmor blocks.
pub const REASON: &str = "AppArmor";
/// The waiting reason of its containers.
pub const BLOCKED: &str = "Blocked";
/// The annotation prefix of the deprecated per-container profiles.
const ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
/// containerd's default profile (what RuntimeDefault means under containerd).
pub const RUNTIME_DEFAULT_PROFILE: &str = "cri-containerd.apparmor.d";

/// Whether the kernel enforces AppArmor (runc's apparmor.IsEnabled): the
/// securityfs directory exists and the module says `Y`. Err: upstream's reason.
pub fn host_support(sys: &Path) -> Result<(), String> {
    let enabled = std::fs::read_to_string(sys.join("module/apparmor/parameters/enabled")).is_ok_and(|s| s.starts_with('Y'));
    if enabled && sys.join("kernel/security/apparmor").is_dir() {
        Ok(())
    } else {
        Err("AppArmor is not enabled on the host".into())
    }
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()).chain(std::iter::empty()))
}

fn asks(p: Option<&AppArmorProfile>) -> bool {
    p.is_some_and(|p| p.type_ != "Unconfined")
}

/// Whether the pod asks for AppArmor at all (upstream's isRequired).
pub fn required(pod: &Pod) -> bool {
    let pod_level = pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|s| s.app_armor_profile.as_ref());
    asks(pod_level)
        || all_containers(pod).any(|c| asks(c.security_context.as_ref().and_then(|s| s.app_armor_profile.as_ref())))
        || pod.metadata.annotations.iter().flatten().any(|(k, v)| k.starts_with(ANNOTATION_PREFIX) && v != "unconfined")
}

/// A container's profile: its own field, its annotation, the pod's field
/// (upstream's GetProfile order), as (type, localhost name).
fn profile(pod: &Pod, c: &Container) -> Option<(String, Option<String>)> {
    if let Some(p) = c.security_context.as_ref().and_then(|s| s.app_armor_profile.as_ref()) {
        return Some((p.type_.clone(), p.localhost_profile.clone()));
    }
    if let Some(v) = pod.metadata.annotations.as_ref().and_then(|a| a.get(&format!("{ANNOTATION_PREFIX}{}", c.name))) {
        return Some(match v.as_str() {
            "runtime/default" => ("RuntimeDefault".into(), None),
            "unconfined" => ("Unconfined".into(), None),
            other => match other.strip_prefix("localhost/") {
                Some(name) => ("Localhost".into(), Some(name.to_string())),
                None => ("Invalid".into(), Some(other.to_string())),
            },
        });
    }
    let p = pod.spec.as_ref()?.security_context.as_ref()?.app_armor_profile.as_ref()?;
    Some((p.type_.clone(), p.localhost_profile.clone()))
}

/// Why the pod cannot run here (upstream's Validate), or Ok.
pub fn validate(pod: &Pod, host: &Result<(), String>) -> Result<(), String> {
    if !required(pod) {
        return Ok(());
    }
    host.clone()?;
    for c in all_containers(pod) {
        match profile(pod, c) {
            Some((t, name)) if t == "Invalid" => return Err(format!("invalid AppArmor profile name: {:?}", name.unwrap_or_default())),
            Some((t, name)) if t == "Localhost" && name.as_deref().is_none_or(|n| n.trim().is_empty()) => {
                return Err("invalid empty AppArmor profile name".into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// The status message of a blocked pod.
pub fn message(err: &str) -> String {
    format!("Cannot enforce AppArmor: {err}")
}

/// The OCI `process.apparmorProfile` of a container on an AppArmor host, as
/// containerd's CRI sets it: its Localhost profile by name; for RuntimeDefault
/// (and, for unprivileged containers, no profile) containerd's default when
/// `loaded` lists it; nothing for Unconfined or privileged containers without
/// a profile. Err when RuntimeDefault is asked for and not loaded.
pub fn container_profile(pod: &Pod, c: &Container, privileged: bool, loaded: &str) -> Result<Option<String>, String> {
    let default_loaded = loaded.lines().any(|l| l.split(' ').next() == Some(RUNTIME_DEFAULT_PROFILE));
    match profile(pod, c) {
        Some((t, Some(name))) if t == "Localhost" => Ok(Some(name)),
        Some((t, _)) if t == "Unconfined" => Ok(None),
        Some((t, _)) if t == "RuntimeDefault" => {
            if default_loaded {
                Ok(Some(RUNTIME_DEFAULT_PROFILE.into()))
            } else {
                Err(format!("the RuntimeDefault AppArmor profile {RUNTIME_DEFAULT_PROFILE:?} is not loaded (rkubelet does not load it; load containerd's default profile with apparmor_parser)"))
            }
        }
        _ if privileged || !default_loaded => Ok(None),
        _ => Ok(Some(RUNTIME_DEFAULT_PROFILE.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_profile_on_a_host_without_apparmor_blocks_the_pod_with_upstreams_message() {
        let off = Err("AppArmor is not enabled on the host".to_string());
        let none = pod("metadata: {name: p}\nspec: {containers: [{name: c, image: x}]}\n");
        assert!(!required(&none));
        assert_eq!(validate(&none, &off), Ok(()), "no profile asked: runs anywhere");
        let unconfined = pod("metadata: {name: p}\nspec: {securityContext: {appArmorProfile: {type: Unconfined}}, containers: [{name: c, image: x}]}\n");
        assert_eq!(validate(&unconfined, &off), Ok(()));
        for p in [
            "metadata: {name: p}\nspec: {securityContext: {appArmorProfile: {type: RuntimeDefault}}, containers: [{name: c, image: x}]}\n",
            "metadata: {name: p}\nspec: {containers: [{name: c, image: x, securityContext: {appArmorProfile: {type: Localhost, localhostProfile: k8s-x}}}]}\n",
            "metadata: {name: p, annotations: {container.apparmor.security.beta.kubernetes.io/c: runtime/default}}\nspec: {containers: [{name: c, image: x}]}\n",
        ] {
            let e = validate(&pod(p), &off).unwrap_err();
            assert_eq!(message(&e), "Cannot enforce AppArmor: AppArmor is not enabled on the host");
        }
        let bad = pod("metadata: {name: p, annotations: {container.apparmor.security.beta.kubernetes.io/c: nonsense}}\nspec: {containers: [{name: c, image: x}]}\n");
        assert_eq!(validate(&bad, &Ok(())).unwrap_err(), "invalid AppArmor profile name: \"nonsense\"");
    }

    #[test]
    fn profiles_reach_the_spec_as_containerds_cri_sets_them() {
        let loaded = "cri-containerd.apparmor.d (enforce)\nk8s-x (enforce)\n";
        let p = pod("metadata: {name: p}\nspec:\n  securityContext: {appArmorProfile: {type: RuntimeDefault}}\n  containers:\n  - {name: a, image: x}\n  - {name: b, image: x, securityContext: {appArmorProfile: {type: Localhost, localhostProfile: k8s-x}}}\n  - {name: u, image: x, securityContext: {appArmorProfile: {type: Unconfined}}}\n");
        let c = |n: usize| &p.spec.as_ref().unwrap().containers[n];
        assert_eq!(container_profile(&p, c(0), false, loaded), Ok(Some(RUNTIME_DEFAULT_PROFILE.into())), "the pod's RuntimeDefault");
        assert_eq!(container_profile(&p, c(1), false, loaded), Ok(Some("k8s-x".into())), "the container's own wins");
        assert_eq!(container_profile(&p, c(2), false, loaded), Ok(None));
        assert!(container_profile(&p, c(0), false, "").is_err(), "RuntimeDefault asked, not loaded: a clear error");
        let plain = pod("metadata: {name: p}\nspec: {containers: [{name: a, image: x}]}\n");
        let pc = &plain.spec.as_ref().unwrap().containers[0];
        assert_eq!(container_profile(&plain, pc, false, loaded), Ok(Some(RUNTIME_DEFAULT_PROFILE.into())), "containerd's default for unprivileged containers");
        assert_eq!(container_profile(&plain, pc, true, loaded), Ok(None), "privileged: none");
        assert_eq!(container_profile(&plain, pc, false, ""), Ok(None), "not loaded and not asked: none");
        let t = tempfile::tempdir().unwrap();
        assert_eq!(host_support(t.path()), Err("AppArmor is not enabled on the host".into()));
        std::fs::create_dir_all(t.path().join("module/apparmor/parameters")).unwrap();
        std::fs::create_dir_all(t.path().join("kernel/security/apparmor")).unwrap();
        std::fs::write(t.path().join("module/apparmor/parameters/enabled"), "Y\n").unwrap();
        assert_eq!(host_support(t.path()), Ok(()));
    }
}

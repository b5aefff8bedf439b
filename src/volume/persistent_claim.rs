//! `persistentVolumeClaim` volumes bound to a `hostPath` or `local`
//! PersistentVolume (no CSI, no attach): the claim and its volume are read from
//! the API with upstream's checks (pkg/kubelet/volumemanager/populator
//! `getPVCExtractPV`/`getPVSpec`), then the PV's path is used like a hostPath.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod};
use kube::api::Api;

use super::{host_path, Prepared, VolumeError};

/// The volume a bound claim resolves to: its path on this node and read-only-ness.
pub fn resolve(claim: &PersistentVolumeClaim, pv: &PersistentVolume, read_only: bool) -> Result<(HostPathVolumeSource, bool), String> {
    let name = pv.metadata.name.as_deref().unwrap_or("");
    let spec = pv.spec.as_ref();
    let claim_ref = spec.and_then(|s| s.claim_ref.as_ref()).ok_or_else(|| {
        format!("found PV object {name} but it has a nil pv.Spec.ClaimRef indicating it is not yet bound to the claim")
    })?;
    let claim_uid = claim.metadata.uid.as_deref().unwrap_or("");
    if claim_ref.uid.as_deref().unwrap_or("") != claim_uid {
        return Err(format!(
            "found PV object {name} but its pv.Spec.ClaimRef.UID {} does not point to claim.UID {claim_uid}",
            claim_ref.uid.as_deref().unwrap_or("")
        ));
    }
    if let Some(h) = spec.and_then(|s| s.host_path.as_ref()) {
        Ok((HostPathVolumeSource { path: h.path.clone(), type_: h.type_.clone() }, read_only))
    } else if let Some(l) = spec.and_then(|s| s.local.as_ref()) {
        // A local volume must already exist; a directory or a file.
        Ok((HostPathVolumeSource { path: l.path.clone(), type_: None }, read_only))
    } else {
        Err(format!("PV {name} is neither a hostPath nor a local volume; rkubelet supports only those"))
    }
}

/// Checks that the claim is bound and returns its volume's path.
fn check_claim(claim: &PersistentVolumeClaim) -> Result<String, String> {
    if claim.metadata.deletion_timestamp.is_some() {
        return Err("PVC is being deleted".into());
    }
    if claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Err("PVC is not bound".into());
    }
    claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty()).ok_or_else(|| "PVC has empty pvc.Spec.VolumeName".into())
}

/// Looks the claim and its volume up and prepares the path.
pub async fn setup(pod: &Pod, volume: &str, src: &PersistentVolumeClaimVolumeSource, client: Option<&kube::Client>) -> Result<Prepared, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let claim_name = &src.claim_name;
    let fail = |m: String| VolumeError::Source { volume: volume.into(), message: format!("error processing PVC {ns}/{claim_name}: {m}") };
    let client = client.ok_or_else(|| fail("persistentVolumeClaim volumes need an API server".into()))?;
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(claim_name)
        .await
        .map_err(|e| fail(format!("failed to fetch PVC from API server: {e}")))?;
    let pv_name = check_claim(&claim).map_err(fail)?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await
        .map_err(|e| fail(format!("failed to fetch PV {pv_name} from API server: {e}")))?;
    let (hp, read_only) = resolve(&claim, &pv, src.read_only.unwrap_or(false)).map_err(fail)?;
    if hp.type_.is_none() && !std::path::Path::new(&hp.path).exists() {
        return Err(VolumeError::Source { volume: volume.into(), message: format!("path {:?} does not exist", hp.path) });
    }
    let path: PathBuf = host_path::setup(volume, &hp)?;
    Ok(Prepared { path, read_only })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostPathVolumeSource as HP, LocalVolumeSource, ObjectReference, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec};

    fn claim(phase: &str, volume: &str) -> PersistentVolumeClaim {
        let mut c = PersistentVolumeClaim::default();
        c.metadata.uid = Some("cu".into());
        c.spec = Some(PersistentVolumeClaimSpec { volume_name: Some(volume.into()), ..Default::default() });
        c.status = Some(PersistentVolumeClaimStatus { phase: Some(phase.into()), ..Default::default() });
        c
    }

    fn pv(uid: Option<&str>, spec: PersistentVolumeSpec) -> PersistentVolume {
        let mut p = PersistentVolume::default();
        p.metadata.name = Some("pv1".into());
        p.spec = Some(PersistentVolumeSpec { claim_ref: uid.map(|u| ObjectReference { uid: Some(u.into()), ..Default::default() }), ..spec });
        p
    }

    #[test]
    fn bound_claims_resolve_to_host_path_or_local_volumes() {
        assert_eq!(check_claim(&claim("Pending", "pv1")).unwrap_err(), "PVC is not bound");
        assert_eq!(check_claim(&claim("Bound", "")).unwrap_err(), "PVC has empty pvc.Spec.VolumeName");
        assert_eq!(check_claim(&claim("Bound", "pv1")).unwrap(), "pv1");
        let hp = PersistentVolumeSpec { host_path: Some(HP { path: "/data".into(), type_: Some("DirectoryOrCreate".into()) }), ..Default::default() };
        let (src, ro) = resolve(&claim("Bound", "pv1"), &pv(Some("cu"), hp.clone()), true).unwrap();
        assert_eq!((src.path.as_str(), src.type_.as_deref(), ro), ("/data", Some("DirectoryOrCreate"), true));
        let local = PersistentVolumeSpec { local: Some(LocalVolumeSource { path: "/mnt/disk".into(), fs_type: None }), ..Default::default() };
        assert_eq!(resolve(&claim("Bound", "pv1"), &pv(Some("cu"), local), false).unwrap().0.path, "/mnt/disk");
        assert_eq!(
            resolve(&claim("Bound", "pv1"), &pv(None, hp.clone()), false).unwrap_err(),
            "found PV object pv1 but it has a nil pv.Spec.ClaimRef indicating it is not yet bound to the claim"
        );
        assert_eq!(resolve(&claim("Bound", "pv1"), &pv(Some("other"), hp), false).unwrap_err(), "found PV object pv1 but its pv.Spec.ClaimRef.UID other does not point to claim.UID cu");
        assert!(resolve(&claim("Bound", "pv1"), &pv(Some("cu"), PersistentVolumeSpec::default()), false).is_err());
    }
}

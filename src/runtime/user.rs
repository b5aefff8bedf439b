//! The identity a container runs as, as the kubelet and containerd's CRI decide
//! it together: `runAsUser`/`runAsGroup` (container over pod) or else the
//! image's `USER` (`name`, `uid`, `name:group`, `uid:gid`), names and primary
//! groups resolved from the image's /etc/passwd and /etc/group (containerd's
//! `WithUser`), the supplementary groups that list the user in /etc/group plus
//! the pod's `supplementalGroups` and `fsGroup` (`WithAdditionalGIDs`,
//! `WithSupplementalGroups`); `runAsNonRoot` enforced with upstream's messages.

use k8s_openapi::api::core::v1::{Container, Pod};

use super::spec::UserIds;

/// One /etc/passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One /etc/group entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// An image's users and groups (empty when it has no such files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageUsers {
    pub passwd: Vec<Passwd>,
    pub group: Vec<Group>,
}

impl ImageUsers {
    /// Parses /etc/passwd and /etc/group contents (lines that do not parse are skipped, as libcontainer's user package does).
    pub fn parse(passwd: &str, group: &str) -> ImageUsers {
        let fields = |l: &str| l.split(':').map(str::to_string).collect::<Vec<_>>();
        let passwd = passwd
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let f = fields(l);
                Some(Passwd { name: f.first()?.clone(), uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()? })
            })
            .collect();
        let group = group
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let f = fields(l);
                let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()).unwrap_or_default();
                Some(Group { name: f.first()?.clone(), gid: f.get(2)?.parse().ok()?, members })
            })
            .collect();
        ImageUsers { passwd, group }
    }

    fn by_name(&self, name: &str) -> Option<&Passwd> {
        self.passwd.iter().find(|p| p.name == name)
    }

    fn by_uid(&self, uid: u32) -> Option<&Passwd> {
        self.passwd.iter().find(|p| p.uid == uid)
    }
}

/// The identity to run container `c` of `pod` as; `image_user` is the image's
/// `USER`, `users` its /etc/passwd and /etc/group.
pub fn resolve(pod: &Pod, c: &Container, image_user: &str, users: &ImageUsers) -> Result<UserIds, String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let run_as_user = sc.and_then(|s| s.run_as_user).or(psc.and_then(|s| s.run_as_user));
    let run_as_group = sc.and_then(|s| s.run_as_group).or(psc.and_then(|s| s.run_as_group));
    let non_root = sc.and_then(|s| s.run_as_non_root).or(psc.and_then(|s| s.run_as_non_root)).unwrap_or(false);
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let who = || format!("(pod: {:?}, container: {})", crate::pod::format_pod(pod), c.name);
    // The kubelet's check, before the runtime resolves anything.
    if non_root && run_as_user.is_none() && !user_part.is_empty() && user_part.parse::<u32>().is_err() {
        return Err(format!("container has runAsNonRoot and image has non-numeric user ({user_part}), cannot verify user is non-root {}", who()));
    }
    // The user string containerd resolves: runAsUser[:runAsGroup], else the image's.
    let (uid, mut gid) = match run_as_user {
        Some(u) => {
            let uid = u as u32;
            (uid, users.by_uid(uid).map(|p| p.gid).unwrap_or(0))
        }
        None if user_part.is_empty() => (0, 0),
        None => match user_part.parse::<u32>() {
            Ok(uid) => (uid, users.by_uid(uid).map(|p| p.gid).unwrap_or(0)),
            Err(_) => match users.by_name(user_part) {
                Some(p) => (p.uid, p.gid),
                None => return Err(format!("unable to find user {user_part}: no matching entries in passwd file")),
            },
        },
    };
    if run_as_user.is_none() {
        if let Some(g) = group_part.filter(|g| !g.is_empty()) {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => users.group.iter().find(|e| e.name == g).map(|e| e.gid).ok_or_else(|| format!("unable to find group {g}: no matching entries in group file"))?,
            };
        }
    }
    if let Some(g) = run_as_group {
        gid = g as u32;
    }
    if non_root && uid == 0 {
        return Err(format!("container has runAsNonRoot and image will run as root {}", who()));
    }
    // The primary group, the groups that list the user by name (not the one named
    // like it), then the pod's supplemental groups and fsGroup.
    let mut additional = vec![gid];
    let username = users.by_uid(uid).map(|p| p.name.clone()).unwrap_or_default();
    if !username.is_empty() {
        for g in users.group.iter().filter(|g| g.name != username && g.members.contains(&username)) {
            additional.push(g.gid);
        }
    }
    additional.extend(psc.and_then(|s| s.supplemental_groups.clone()).unwrap_or_default().into_iter().map(|g| g as u32));
    if let Some(fs) = psc.and_then(|s| s.fs_group) {
        additional.push(fs as u32);
    }
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| seen.insert(*g));
    Ok(UserIds { uid, gid, additional_gids: additional })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, SecurityContext};

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app,nobody\napp:x:1000:app\nnobody:x:65534:\ndocker:x:999:app\n";

    fn users() -> ImageUsers {
        ImageUsers::parse(PASSWD, GROUP)
    }

    fn pod_with(psc: Option<PodSecurityContext>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("u".into());
        p.spec = Some(PodSpec { security_context: psc, ..Default::default() });
        p
    }

    fn c(sc: Option<SecurityContext>) -> Container {
        Container { name: "c".into(), security_context: sc, ..Default::default() }
    }

    fn ids(uid: u32, gid: u32, extra: &[u32]) -> UserIds {
        UserIds { uid, gid, additional_gids: extra.to_vec() }
    }

    #[test]
    fn image_users_resolve_by_name_with_their_groups() {
        let (p, c) = (pod_with(None), c(None));
        assert_eq!(resolve(&p, &c, "nobody", &users()).unwrap(), ids(65534, 65534, &[65534, 50]));
        assert_eq!(resolve(&p, &c, "app:app", &users()).unwrap(), ids(1000, 1000, &[1000, 50, 999]), "the group named like the user is not supplementary");
        assert_eq!(resolve(&p, &c, "app:staff", &users()).unwrap(), ids(1000, 50, &[50, 999]));
        assert_eq!(resolve(&p, &c, "1000", &users()).unwrap(), ids(1000, 1000, &[1000, 50, 999]), "a uid's primary group from passwd");
        assert_eq!(resolve(&p, &c, "4242", &users()).unwrap(), ids(4242, 0, &[0]), "an unknown uid: gid 0");
        assert_eq!(resolve(&p, &c, "", &users()).unwrap(), ids(0, 0, &[0]));
        assert_eq!(resolve(&p, &c, "ghost", &users()).unwrap_err(), "unable to find user ghost: no matching entries in passwd file");
        assert_eq!(resolve(&p, &c, "app:ghosts", &users()).unwrap_err(), "unable to find group ghosts: no matching entries in group file");
        assert_eq!(resolve(&p, &c, "nobody", &ImageUsers::default()).unwrap_err(), "unable to find user nobody: no matching entries in passwd file");
    }

    #[test]
    fn run_as_non_root_rejects_root_and_unverifiable_users_with_upstream_messages() {
        let pod = pod_with(Some(PodSecurityContext { run_as_non_root: Some(true), ..Default::default() }));
        let e = resolve(&pod, &c(None), "", &users()).unwrap_err();
        assert_eq!(e, "container has runAsNonRoot and image will run as root (pod: \"p_ns(u)\", container: c)");
        assert_eq!(resolve(&pod, &c(None), "1000:1000", &users()).unwrap().uid, 1000);
        let e = resolve(&pod, &c(None), "app", &users()).unwrap_err();
        assert_eq!(e, "container has runAsNonRoot and image has non-numeric user (app), cannot verify user is non-root (pod: \"p_ns(u)\", container: c)");
    }

    #[test]
    fn the_security_context_wins_over_the_image_and_adds_groups() {
        let pod = pod_with(Some(PodSecurityContext { run_as_user: Some(5), supplemental_groups: Some(vec![7]), fs_group: Some(9), ..Default::default() }));
        let sc = SecurityContext { run_as_user: Some(1000), run_as_group: Some(8), ..Default::default() };
        assert_eq!(resolve(&pod, &c(Some(sc)), "nobody", &users()).unwrap(), ids(1000, 8, &[8, 50, 999, 7, 9]));
        assert_eq!(resolve(&pod, &c(None), "nobody:staff", &users()).unwrap(), ids(5, 0, &[0, 7, 9]), "runAsUser replaces the image's user and group");
    }
}

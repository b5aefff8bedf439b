//! Image names and pull policies: Docker-style name normalization (what
//! `distribution/reference.ParseNormalizedNamed` does, and so what the kubelet
//! and containerd's CRI plugin do), the kubelet's default `imagePullPolicy`,
//! and which registries are spoken to over plain HTTP.

use std::net::IpAddr;

use oci_client::Reference;

use super::ImageError;

/// When to contact the registry for a container's image (`Container.imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullPolicy {
    /// Resolve the reference on every container start (blobs already in the
    /// content store are not downloaded again).
    Always,
    /// Pull only when the image is not in containerd.
    IfNotPresent,
    /// Never pull; fail with `ErrImageNeverPull` when the image is absent.
    Never,
}

impl PullPolicy {
    /// The policy for a container: its `imagePullPolicy`, or when unset (or not
    /// one of the three API values) the API server's default: `Always` for a
    /// `:latest` tag or no tag and no digest, `IfNotPresent` otherwise.
    // Upstream: pkg/apis/core/v1/defaults.go SetDefaults_Container.
    pub fn from_k8s(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => match Reference::try_from(image) {
                // The parser fills in "latest" only when there is neither tag nor digest.
                Ok(reference) if reference.tag() == Some("latest") => PullPolicy::Always,
                _ => PullPolicy::IfNotPresent,
            },
        }
    }
}

/// Normalizes an image name the way Docker and containerd do:
/// `busybox` → `docker.io/library/busybox:latest`, `foo/bar` →
/// `docker.io/foo/bar:latest`; a first component with a `.` or `:` or equal
/// to `localhost` is a registry host and is kept (`127.0.0.1:5000/x/y:1`,
/// `localhost/x:1`); a digest is kept and suppresses the default tag.
pub fn normalize_reference(image: &str) -> Result<String, ImageError> {
    parse(image).map(|reference| reference.whole())
}

/// Parses and normalizes an image name.
pub(crate) fn parse(image: &str) -> Result<Reference, ImageError> {
    Reference::try_from(image).map_err(|source| ImageError::InvalidName {
        image: image.to_owned(),
        source,
    })
}

/// The host part of a `host[:port]` registry name (brackets of IPv6 literals removed).
pub(crate) fn registry_hostname(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

/// Whether a registry is on this host (`localhost`, `127.0.0.0/8`, `::1`).
/// containerd and Docker speak plain HTTP to such registries.
pub(crate) fn is_loopback_registry(registry: &str) -> bool {
    let host = registry_hostname(registry);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `registry` matches an insecure-registry entry: the same `host:port`,
/// or an entry without a port naming the registry's host.
pub(crate) fn is_listed(registry: &str, entries: &[String]) -> bool {
    entries.iter().any(|entry| {
        let entry = entry
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/');
        entry.eq_ignore_ascii_case(registry)
            || (registry_hostname(entry) == entry
                && entry.eq_ignore_ascii_case(registry_hostname(registry)))
    })
}

/// The distribution-source label of blobs pulled through `reference`:
/// `containerd.io/distribution.source.<hostname>` → `<repository>` (the port
/// is dropped, as containerd's `docker.AppendDistributionSourceLabel` does).
pub(crate) fn distribution_source(reference: &Reference) -> (String, String) {
    (
        format!(
            "containerd.io/distribution.source.{}",
            registry_hostname(reference.registry())
        ),
        reference.repository().to_owned(),
    )
}

/// Adds `repo` to a comma-separated distribution-source value, keeping it
/// sorted and free of duplicates (containerd `appendDistributionSourceLabel`).
pub(crate) fn append_source_repo(existing: Option<&str>, repo: &str) -> String {
    let mut repos: Vec<&str> = existing
        .map(|value| value.split(',').filter(|r| !r.is_empty()).collect())
        .unwrap_or_default();
    repos.push(repo);
    repos.sort_unstable();
    repos.dedup();
    repos.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(image: &str) -> String {
        normalize_reference(image).unwrap_or_else(|e| panic!("{image}: {e}"))
    }

    #[test]
    fn short_names_go_to_docker_hub_library() {
        assert_eq!(normalized("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalized("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalized("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(
            normalized("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalized("index.docker.io/foo/bar:2"),
            "docker.io/foo/bar:2"
        );
    }

    #[test]
    fn registry_hosts_are_kept() {
        assert_eq!(normalized("127.0.0.1:5000/x/y:1"), "127.0.0.1:5000/x/y:1");
        assert_eq!(normalized("localhost/x:1"), "localhost/x:1");
        assert_eq!(normalized("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(
            normalized("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(normalized("quay.io/a/b/c"), "quay.io/a/b/c:latest");
    }

    #[test]
    fn digests_are_kept_without_default_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalized(&format!("busybox@{digest}")),
            format!("docker.io/library/busybox@{digest}")
        );
        assert_eq!(
            normalized(&format!("127.0.0.1:5000/x:1@{digest}")),
            format!("127.0.0.1:5000/x:1@{digest}")
        );
    }

    #[test]
    fn invalid_names_are_rejected() {
        for image in [
            "",
            "Busybox",
            "busybox:",
            "bad name",
            "x@sha256:123",
            "a//b",
            ":tag",
            "busybox ",
        ] {
            match normalize_reference(image) {
                Err(ImageError::InvalidName {
                    image: ref name, ..
                }) => assert_eq!(name, image),
                other => panic!("{image:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_name_reason_and_message_follow_the_kubelet() {
        let err = normalize_reference("Bad:Name").unwrap_err();
        assert_eq!(err.reason(), "InvalidImageName");
        assert!(
            err.to_string()
                .contains(r#"couldn't parse image name "Bad:Name""#),
            "{err}"
        );
    }

    #[test]
    fn explicit_policies_win() {
        assert_eq!(
            PullPolicy::from_k8s(Some("Never"), "busybox"),
            PullPolicy::Never
        );
        assert_eq!(
            PullPolicy::from_k8s(Some("IfNotPresent"), "busybox:latest"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_k8s(Some("Always"), "busybox:1"),
            PullPolicy::Always
        );
    }

    #[test]
    fn default_policy_is_always_for_latest_or_untagged() {
        assert_eq!(PullPolicy::from_k8s(None, "busybox"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::from_k8s(None, "busybox:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::from_k8s(Some(""), "127.0.0.1:5000/x/y"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::from_k8s(None, "busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        let digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            PullPolicy::from_k8s(None, &format!("busybox@{digest}")),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_k8s(None, &format!("busybox:latest@{digest}")),
            PullPolicy::Always
        );
        // Unparseable names default like upstream (the pull then fails with InvalidImageName).
        assert_eq!(
            PullPolicy::from_k8s(None, "Not Valid"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_k8s(Some("Sometimes"), "busybox:1"),
            PullPolicy::IfNotPresent
        );
    }

    #[test]
    fn loopback_registries_are_detected() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("127.1.2.3"));
        assert!(is_loopback_registry("localhost"));
        assert!(is_loopback_registry("LOCALHOST:5000"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("docker.io"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
        assert!(!is_loopback_registry("localhost.example.com"));
    }

    #[test]
    fn insecure_entries_match_host_and_port() {
        let entries = vec!["registry.local:5000".to_owned(), "plain.example".to_owned()];
        assert!(is_listed("registry.local:5000", &entries));
        assert!(!is_listed("registry.local:6000", &entries));
        assert!(is_listed("plain.example", &entries));
        assert!(is_listed("plain.example:8080", &entries));
        assert!(!is_listed("docker.io", &entries));
    }

    #[test]
    fn distribution_source_drops_the_port() {
        let reference = parse("127.0.0.1:5000/test/busybox:1.0").unwrap();
        assert_eq!(
            distribution_source(&reference),
            (
                "containerd.io/distribution.source.127.0.0.1".to_owned(),
                "test/busybox".to_owned()
            )
        );
        let hub = parse("busybox").unwrap();
        assert_eq!(
            distribution_source(&hub).0,
            "containerd.io/distribution.source.docker.io"
        );
        assert_eq!(distribution_source(&hub).1, "library/busybox");
    }

    #[test]
    fn source_repos_are_sorted_and_unique() {
        assert_eq!(append_source_repo(None, "b/c"), "b/c");
        assert_eq!(append_source_repo(Some("x/y,a/b"), "m/n"), "a/b,m/n,x/y");
        assert_eq!(append_source_repo(Some("a/b"), "a/b"), "a/b");
    }
}

//! The resource registry: which resources exist, in which group/version, their kinds,
//! short names, verbs, subresources and the storage-strategy flags that differ per resource
//! upstream (unconditional update, create-on-update, returning the deleted object).

/// Verbs of a normal read-write resource.
pub const RW: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Static description of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Subresources served: `status`, `binding`, `token`, `approval`.
    pub subresources: &'static [&'static str],
    /// `AllowUnconditionalUpdate()` of the upstream strategy: PUT without resourceVersion is allowed.
    pub unconditional_update: bool,
    /// `AllowCreateOnUpdate()`: PUT of a missing object creates it.
    pub create_on_update: bool,
    /// The store returns the deleted object (pods, namespaces, services); others return a Status.
    pub return_deleted: bool,
    pub categories: &'static [&'static str],
}

impl ResourceDef {
    /// `pods`, `leases.coordination.k8s.io`: the name used in messages and store keys.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    /// `v1`, `coordination.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn has_subresource(&self, s: &str) -> bool {
        self.subresources.contains(&s)
    }
    /// Whether writes to the main resource ignore `status` (the resource has a status subresource).
    pub fn has_status(&self) -> bool {
        self.has_subresource("status")
    }
}

const fn def(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
) -> ResourceDef {
    ResourceDef {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        verbs: RW,
        subresources,
        unconditional_update: true,
        create_on_update: false,
        return_deleted: false,
        categories: &[],
    }
}

/// All served resources.
pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        return_deleted: true,
        categories: &["all"],
        ..def(
            "",
            "pods",
            "pod",
            "Pod",
            true,
            &["po"],
            &["status", "binding", "log", "ephemeralcontainers", "resize"],
        )
    },
    def("", "nodes", "node", "Node", false, &["no"], &["status"]),
    ResourceDef {
        create_on_update: true,
        ..def("", "events", "event", "Event", true, &["ev"], &[])
    },
    ResourceDef {
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        return_deleted: true,
        ..def(
            "",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            &["status"],
        )
    },
    def(
        "",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        &[],
    ),
    def("", "secrets", "secret", "Secret", true, &[], &[]),
    def(
        "",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        &["status"],
    ),
    def(
        "",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
        &["pv"],
        &["status"],
    ),
    def(
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        &["token"],
    ),
    ResourceDef {
        create_on_update: true,
        return_deleted: true,
        categories: &["all"],
        ..def(
            "",
            "services",
            "service",
            "Service",
            true,
            &["svc"],
            &["status"],
        )
    },
    ResourceDef {
        unconditional_update: false,
        create_on_update: true,
        ..def(
            "coordination.k8s.io",
            "leases",
            "lease",
            "Lease",
            true,
            &[],
            &[],
        )
    },
    def(
        "certificates.k8s.io",
        "certificatesigningrequests",
        "certificatesigningrequest",
        "CertificateSigningRequest",
        false,
        &["csr"],
        &["approval", "status"],
    ),
    def(
        "storage.k8s.io",
        "csinodes",
        "csinode",
        "CSINode",
        false,
        &[],
        &[],
    ),
    def(
        "storage.k8s.io",
        "csidrivers",
        "csidriver",
        "CSIDriver",
        false,
        &[],
        &[],
    ),
    def(
        "node.k8s.io",
        "runtimeclasses",
        "runtimeclass",
        "RuntimeClass",
        false,
        &[],
        &[],
    ),
    // Review APIs: create only, never stored (the kubelet's delegated authn/authz).
    ResourceDef {
        verbs: &["create"],
        ..def("authentication.k8s.io", "tokenreviews", "tokenreview", "TokenReview", false, &[], &[])
    },
    ResourceDef {
        verbs: &["create"],
        ..def("authorization.k8s.io", "subjectaccessreviews", "subjectaccessreview", "SubjectAccessReview", false, &[], &[])
    },
    def(
        "resource.k8s.io",
        "resourceslices",
        "resourceslice",
        "ResourceSlice",
        false,
        &[],
        &[],
    ),
];

/// The API groups served (besides the legacy core group), in discovery order.
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !g.contains(&r.group) {
            g.push(r.group);
        }
    }
    g
}

/// Look a resource up by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Look a resource up the way tests name them: `pods`, `pod`, `po`, `Pod`, `leases.coordination.k8s.io`.
pub fn lookup(name: &str) -> Option<&'static ResourceDef> {
    let lower = name.to_ascii_lowercase();
    let (res, group) = match lower.split_once('.') {
        Some((r, g)) => (r.to_string(), Some(g.to_string())),
        None => (lower.clone(), None),
    };
    RESOURCES.iter().find(|r| {
        group.as_deref().is_none_or(|g| g == r.group)
            && (r.plural == res
                || r.singular == res
                || r.short_names.contains(&res.as_str())
                || r.kind.eq_ignore_ascii_case(&res))
    })
}

/// Find by kind and apiVersion (for test helpers that take whole objects).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

//! Pod networking: network namespaces and CNI plugin invocation.
//! Mirrors libcni (containernetworking/cni) and the kubelet's CNI usage via the CRI.

pub mod cni;
pub mod netns;

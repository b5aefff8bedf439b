//! rkubelet: a Kubernetes node agent on containerd's native gRPC API.
//!
//! The binary (`src/main.rs`) is a thin shell around [`agent::run`]. Every concern
//! lives in its own module; see `ARCHITECTURE.md` for the data flow.

pub mod agent;
pub mod api;
pub mod cgroups;
pub mod cli;
pub mod compat;
pub mod config;
pub mod doctor;
pub mod events;
pub mod eviction;
#[doc(hidden)]
pub mod fuzzing;
pub mod gc;
pub mod kernel;
pub mod kubelet_config;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod pod;
pub mod probe;
pub mod quantity;
pub mod reset;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod systemd;
pub mod volume;

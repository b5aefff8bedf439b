//! Garbage collection of what pods leave on the node's disks: unused images
//! ([`images`]) and exited containers ([`containers`]), periodically and when
//! the eviction manager needs disk space back.

pub mod containers;
pub mod images;

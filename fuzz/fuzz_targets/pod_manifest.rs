#![no_main]
//! See rkubelet::fuzzing::pod_manifest.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkubelet::fuzzing::pod_manifest(data));

#![no_main]
//! See rkubelet::fuzzing::kubelet_request.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkubelet::fuzzing::kubelet_request(data));

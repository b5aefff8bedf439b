#![no_main]
//! See rkubelet::fuzzing::cni.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkubelet::fuzzing::cni(data));

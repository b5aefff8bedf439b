#![no_main]
//! See rkubelet::fuzzing::registry_auth.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkubelet::fuzzing::registry_auth(data));

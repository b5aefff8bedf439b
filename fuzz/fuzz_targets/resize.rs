#![no_main]
//! See rkubelet::fuzzing::resize.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkubelet::fuzzing::resize(data));

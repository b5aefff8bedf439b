#![no_main]
//! See rkubelet::fuzzing::spdy.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkubelet::fuzzing::spdy(data));

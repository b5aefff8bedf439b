#![no_main]
//! See rkubelet::fuzzing::image.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkubelet::fuzzing::image(data));

#![no_main]
//! See rkubelet::fuzzing::kernel_files.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkubelet::fuzzing::kernel_files(data));

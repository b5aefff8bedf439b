#![no_main]
//! See rkubelet::fuzzing::websocket.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rkubelet::fuzzing::websocket(data));

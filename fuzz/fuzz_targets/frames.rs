//! The frame decoder: any byte stream read as a server reads a client's WebSocket (with the
//! protocol's frame and message limits), then every binary message decoded. No input panics
//! or allocates past the limits (libFuzzer's -rss_limit_mb catches that).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rainmaker_engine::transport::read_frames(data);
});

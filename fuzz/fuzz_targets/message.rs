//! The message decoder: no input panics, and whatever decodes encodes back to bytes that
//! decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rainmaker_engine::protocol::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode(data) {
        let again = decode(&encode(&message)).expect("an encoded message decodes");
        assert_eq!(again, message, "decode(encode(m)) == m");
    }
});

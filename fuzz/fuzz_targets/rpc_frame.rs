//! Fuzzes the primary's request decoder: any frame must be answered with a
//! request or a coded error, never a panic or an unbounded allocation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err((_, e)) = grove::protocol::decode_request(data) {
        let _ = e.code();
    }
});

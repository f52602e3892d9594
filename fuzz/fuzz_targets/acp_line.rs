//! Fuzzes the ACP line reader and message parse: bounded lines, no panic.
#![no_main]

use grove::acp::framing::{Line, LineReader};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        let mut r = LineReader::new(data);
        loop {
            match r.next().await {
                Line::Eof => break,
                Line::TooLong => {}
                Line::Text(t) => {
                    let _ = serde_json::from_str::<serde_json::Value>(&t);
                }
            }
        }
    });
});

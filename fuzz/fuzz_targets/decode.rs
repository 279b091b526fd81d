//! The decoder on arbitrary input: it must answer every record with a decoded value or a
//! permanent error, never a panic, an abort or unbounded work.
//!
//!     cargo +nightly fuzz run decode -- -max_total_time=600
#![no_main]

use harmony::ingest::envelope::{Decoder, Limits, RecordHeaders};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: where the key ends; the rest is key then value.
    let Some((&split, rest)) = data.split_first() else { return };
    let at = (split as usize).min(rest.len());
    let (key, value) = rest.split_at(at);
    let mut decoder = Decoder::new(Limits { max_record_bytes: 64 * 1024, ..Limits::default() });
    let headers = RecordHeaders { new_key: (split & 1 == 1).then_some(key), old_key: None };
    if let Err(e) = decoder.decode(Some(key), Some(value), headers) {
        assert!(!e.kind().is_empty());
    }
});

//! Feeds arbitrary bytes to the batch and sketch decoders. Whatever decodes must re-encode to
//! the same bytes (the encoding is canonical) and decode again to the same value.

#![no_main]

use hitcount_wire::{DeltaBatch, Sketch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = DeltaBatch::decode(data) {
        let encoded = batch.encode().expect("a decoded batch encodes");
        let again = DeltaBatch::decode(&encoded).expect("an encoded batch decodes");
        assert_eq!(again, batch);
    }
    if let Ok(sketch) = Sketch::from_bytes(data) {
        let bytes = sketch.to_bytes();
        assert_eq!(
            Sketch::from_bytes(&bytes).expect("re-decodes").to_bytes(),
            bytes
        );
    }
});

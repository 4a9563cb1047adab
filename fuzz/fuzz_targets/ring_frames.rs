//! The ring's frame decoders on any bytes: a whole frame, a stream of frames, and the payload
//! of a sparse contribution.
#![no_main]

use common::collective::wire::{decode_frame, decode_sparse, read_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame(data);
    let mut stream = data;
    let mut buf = Vec::new();
    while read_frame(&mut stream, &mut buf).is_ok() {}
    if let Some((&count, blob)) = data.split_first() {
        let _ = decode_sparse(blob, usize::from(count));
    }
});

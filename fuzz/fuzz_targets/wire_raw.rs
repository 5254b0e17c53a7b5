//! Raw bytes into the bridge's protobuf validator and router, checked against prost. The
//! first byte picks the request type (even: traces, odd: logs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: dlog_fuzz::Counting = dlog_fuzz::Counting;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    dlog_fuzz::check_protobuf(bytes, which & 1 == 1);
});

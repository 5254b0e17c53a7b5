//! Structure-aware: an `arbitrary` export request (nested AnyValues, many and colliding ids,
//! redacted keys, heartbeats) encoded by prost, then changed by a few mutations (groups,
//! huge lengths, repeated fields, truncation), into the same checks as `wire_raw`.
#![no_main]

use dlog_fuzz::{Mutation, Request};
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[global_allocator]
static ALLOC: dlog_fuzz::Counting = dlog_fuzz::Counting;

fuzz_target!(|input: (bool, Request, Vec<Mutation>)| {
    let (logs, request, mutations) = input;
    let encoded = if logs {
        request.logs().map(|r| r.encode_to_vec())
    } else {
        request.traces().map(|r| r.encode_to_vec())
    };
    let Some(mut bytes) = encoded else {
        return;
    };
    for mutation in mutations.iter().take(8) {
        mutation.apply(&mut bytes);
    }
    if bytes.len() > 2 * dlog_fuzz::MAX_BODY {
        return;
    }
    dlog_fuzz::dump(&bytes);
    dlog_fuzz::check_protobuf(&bytes, logs);
});

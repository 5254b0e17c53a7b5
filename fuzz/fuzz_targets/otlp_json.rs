//! OTLP/JSON bodies, decoded as the HTTP receiver decodes them (both request types) within
//! the memory it reserves, then routed. The first byte picks raw bytes (even) or an
//! `arbitrary` request serialized to JSON and then cut or spliced (odd).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use dlog_fuzz::{Mutation, Request};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: dlog_fuzz::Counting = dlog_fuzz::Counting;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        dlog_fuzz::check_json(rest);
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok((logs, request, mutations)) = <(bool, Request, Vec<Mutation>)>::arbitrary(&mut u) else {
        return;
    };
    let encoded = if logs {
        request.logs().map(|r| serde_json::to_vec(&r))
    } else {
        request.traces().map(|r| serde_json::to_vec(&r))
    };
    let Some(Ok(mut body)) = encoded else {
        return;
    };
    for mutation in mutations.iter().take(4) {
        mutation.apply(&mut body);
    }
    // JSON spells bytes in hex and names every field: up to a few times the protobuf size.
    if body.len() > 4 * dlog_fuzz::MAX_BODY {
        return;
    }
    dlog_fuzz::dump(&body);
    dlog_fuzz::check_json(&body);
});

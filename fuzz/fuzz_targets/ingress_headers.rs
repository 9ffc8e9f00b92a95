#![no_main]
//! Fuzz target `ingress_headers`: see `refund_worker::fuzzing` (the corpus test calls the same function).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    refund_worker::fuzzing::run("ingress_headers", data);
});

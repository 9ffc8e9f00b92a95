#![no_main]
//! Fuzz target `retry_after`: see `refund_worker::fuzzing` (the corpus test calls the same function).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    refund_worker::fuzzing::run("retry_after", data);
});

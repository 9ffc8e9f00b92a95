#![no_main]
//! Fuzz target `command`: see `refund_worker::fuzzing` (the corpus test calls the same function).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    refund_worker::fuzzing::run("command", data);
});

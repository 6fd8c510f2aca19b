#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ocm::fuzzing::relay(data));

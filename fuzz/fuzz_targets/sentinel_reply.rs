//! libFuzzer entry for `havip_agent::fuzzing::sentinel_reply` (all checks live there).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| havip_agent::fuzzing::sentinel_reply(data));

#![no_main]
//! See fuzz/README.md and strait_sim::fuzz_targets::admin_json.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_sim::fuzz_targets::admin_json(data));

#![no_main]
//! See fuzz/README.md and strait_sim::fuzz_targets::route_matcher.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_sim::fuzz_targets::route_matcher(data));

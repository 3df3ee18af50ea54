//! The fuzz corpus (fuzz/corpus/<target>/) replayed on stable Rust, through
//! the same functions the cargo-fuzz targets call, plus a few thousand cheap
//! mutations of it: what the fuzzers found stays found without nightly.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use strait_sim::fuzz_targets::TARGETS;
use strait_sim::rng::Rng;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a readable corpus folder").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), bytes)
        })
        .collect();
    files.sort();
    files
}

fn run(target: &str, f: fn(&[u8]), name: &str, data: &[u8]) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(data))) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("fuzz target {target} fails on {name} ({} bytes, {data:02x?}): {message}", data.len());
    }
}

#[test]
fn every_corpus_file_passes_its_target() {
    for (target, f) in TARGETS {
        let files = corpus(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} holds a corpus");
        for (name, data) in &files {
            run(target, f, name, data);
        }
    }
}

/// A poor man's fuzzer on stable: byte flips, cuts, splices and random tails
/// of the corpus, from a fixed seed (so a failure replays).
#[test]
fn mutated_corpus_files_pass_their_targets() {
    let rounds = strait_sim::env_u64("STRAIT_FUZZ_ROUNDS").unwrap_or(300);
    for (t, (target, f)) in TARGETS.into_iter().enumerate() {
        let files = corpus(target);
        let mut rng = Rng::new(t as u64);
        for round in 0..rounds {
            let (_, base) = rng.pick(&files);
            let mut data = base.clone();
            for _ in 0..rng.range(1, 8) {
                match rng.below(5) {
                    0 if !data.is_empty() => {
                        let i = rng.below(data.len() as u64) as usize;
                        data[i] ^= 1 << rng.below(8);
                    }
                    1 if !data.is_empty() => {
                        let i = rng.below(data.len() as u64) as usize;
                        data[i] = rng.next_u64() as u8;
                    }
                    2 => data.truncate(rng.below(data.len() as u64 + 1) as usize),
                    3 => {
                        let (_, other) = rng.pick(&files);
                        let from = rng.below(other.len() as u64 + 1) as usize;
                        data.extend_from_slice(&other[from..]);
                    }
                    _ => data.extend((0..rng.skewed(64)).map(|_| rng.next_u64() as u8)),
                }
            }
            run(target, f, &format!("mutation {round} (seed {t})"), &data);
        }
    }
}

//! Replays every file of the fuzz corpus (`fuzz/corpus/<target>/`: seeds, interesting
//! inputs and every crasher the fuzzer found, kept after the fix) through the same harness
//! the fuzz target uses (`refund_worker::fuzzing`). No fuzzer needed: each input must
//! return (Ok or a clean Err), never panic.

use refund_worker::fuzzing::{self, TARGETS};
use std::path::Path;

#[test]
fn every_corpus_file_runs_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = Vec::new();
    let mut total = 0;
    for target in TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{target} has no corpus files");
        for file in files {
            let data = std::fs::read(&file).expect("corpus file");
            total += 1;
            let outcome = std::panic::catch_unwind(|| fuzzing::run(target, &data));
            match outcome {
                Ok(true) => {}
                Ok(false) => failures.push(format!("{target}: unknown target")),
                Err(_) => failures.push(format!("{target}: {} panicked", file.display())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for target in TARGETS {
        assert!(root.join(format!("{target}.rs")).is_file(), "{target}");
    }
    assert!(!fuzzing::run("no_such_target", b""));
}

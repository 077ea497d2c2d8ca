//! Every fuzz target of `havip_agent::fuzzing` under `cargo test`: its committed seed corpus
//! (`fuzz/corpus/<target>/`), then mutations of it, bounded in count and in time so CI exercises each target
//! without cargo-fuzz. A target reports a broken rule by panicking, which fails the test with the input.
//! The long coverage-guided runs are in RELIABILITY.md ("Fuzzing").

use std::path::PathBuf;
use std::time::{Duration, Instant};

use havip_agent::fuzzing::TARGETS;

/// Generated inputs per target, at most.
const MUTATIONS: usize = 4000;
/// Time per target for the generated inputs, at most: the loop stops by itself.
const BUDGET: Duration = Duration::from_secs(3);

/// xorshift64*: deterministic, so a failure reproduces with the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes worth splicing in: the tokens the parsers branch on.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"*2\r\n",
    b"$-1\r\n",
    b"%1\r\n",
    b"|1\r\n",
    b"-ERR ",
    b"!5\r\n",
    b":",
    b"@",
    b" ",
    b"\"",
    b"=",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\n",
    b"\0",
    b"::ffff:1.2.3.4",
    b"65536",
    b"0",
    b"secret_key = \"",
    b"Response",
    b"Error",
    b"Code",
    b"HaVipSet",
    b"master ",
    b"--master",
    b"-",
    b"+",
    b"\xff",
    b"18446744073709551616",
];

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            4 if !other.is_empty() => {
                // Splice a piece of another seed in.
                let from = rng.below(other.len());
                let to = (from + 1 + rng.below(64)).min(other.len());
                v.splice(at..at, other[from..to].iter().copied());
            }
            5 => v.truncate(at),
            _ => {
                let n = rng.below(8);
                v.splice(at..at, (0..n).map(|_| rng.next() as u8));
            }
        }
    }
    v
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    // The corpus lives with the harness, at the workspace root (`fuzz/corpus/<target>/`).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            (path, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no seeds", dir.display());
    files
}

/// Runs `target` over its corpus, then over mutations until `MUTATIONS` inputs or `BUDGET` is spent.
fn run(name: &str) {
    let target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no target {name}"));
    let seeds = corpus(name);
    for (path, data) in &seeds {
        let ok = std::panic::catch_unwind(|| target(data));
        assert!(ok.is_ok(), "{name}: seed {} failed", path.display());
    }
    let mut rng =
        Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64 ^ (name.as_bytes()[0] as u64) << 32);
    let started = Instant::now();
    let mut ran = 0;
    while ran < MUTATIONS && started.elapsed() < BUDGET {
        let seed = &seeds[rng.below(seeds.len())].1;
        let other = &seeds[rng.below(seeds.len())].1;
        let input = mutate(&mut rng, seed, other);
        let ok = std::panic::catch_unwind(|| target(&input));
        assert!(
            ok.is_ok(),
            "{name}: generated input {ran} failed: {:?}",
            String::from_utf8_lossy(&input)
        );
        ran += 1;
    }
    // At least the seeds and some generated inputs ran (a debug build does thousands in the budget).
    assert!(ran > 0, "{name}: no generated input ran");
}

#[test]
fn every_target_is_tested_here() {
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "sentinel_reply",
            "sentinel_event",
            "config",
            "cloud_response",
            "metadata",
            "migrate_args",
            "decision"
        ]
    );
}

#[test]
fn sentinel_reply_target_holds_on_its_corpus_and_mutations() {
    run("sentinel_reply");
}

#[test]
fn sentinel_event_target_holds_on_its_corpus_and_mutations() {
    run("sentinel_event");
}

#[test]
fn config_target_holds_on_its_corpus_and_mutations() {
    run("config");
}

#[test]
fn cloud_response_target_holds_on_its_corpus_and_mutations() {
    run("cloud_response");
}

#[test]
fn metadata_target_holds_on_its_corpus_and_mutations() {
    run("metadata");
}

#[test]
fn migrate_args_target_holds_on_its_corpus_and_mutations() {
    run("migrate_args");
}

#[test]
fn decision_target_holds_on_its_corpus_and_mutations() {
    run("decision");
}

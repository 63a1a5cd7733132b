//! A seeded mutation fuzz of the pipeline parser: every example in `configs/`, cut,
//! doubled and sprinkled with TOML's own punctuation, must parse or fail with an
//! error, never panic or hang. Bounded (a fixed number of mutations per file), so it
//! runs with the unit tests in CI; the seed and the input of a failure are printed.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::registry::Registry;

/// Mutated inputs per example file.
const ROUNDS: usize = 4000;
/// The longest one parse may take before the run counts as hung.
const HANG: Duration = Duration::from_secs(20);

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Characters that change what TOML means.
const PUNCTUATION: &[char] = &[
    '[', ']', '{', '}', '=', '"', '\'', '\n', '.', ',', '#', '$', ':', '-', '0', '9', ' ', 'é',
    '\\', '\u{0}',
];

/// `text` with one to four random edits.
fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1).min(chars.len());
        let len = rng.below(16).min(chars.len() - at);
        match rng.below(5) {
            0 => {
                chars.drain(at..at + len);
            }
            1 => {
                let copy: Vec<char> = chars[at..at + len].to_vec();
                chars.splice(at..at, copy);
            }
            2 => chars.insert(at, PUNCTUATION[rng.below(PUNCTUATION.len())]),
            3 if at < chars.len() => chars[at] = PUNCTUATION[rng.below(PUNCTUATION.len())],
            _ => {
                // a line of the file again somewhere else: keys and tables doubled
                let line: String = text
                    .lines()
                    .nth(rng.below(text.lines().count()))
                    .unwrap_or_default()
                    .to_string();
                chars.splice(at..at, line.chars().chain(['\n']));
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_example_configs_parse_or_fail_without_panic_or_hang() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("configs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no example configs in {}", dir.display());
    for (n, file) in files.into_iter().enumerate() {
        let text = std::fs::read_to_string(&file).unwrap();
        let seed = 0x5EED_0000 + n as u64;
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            let registry = Registry::builtin();
            let mut rng = Rng(seed);
            for round in 0..ROUNDS {
                let input = mutate(&text, &mut rng);
                let _ = tx.send((round, input.clone()));
                let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    super::parse(Path::new("fuzz.toml"), input.clone(), &registry)
                }));
                if parsed.is_err() {
                    return Err(format!(
                        "seed {seed:#x} round {round} panicked on:\n{input}"
                    ));
                }
            }
            Ok(())
        });
        let mut last = None;
        loop {
            match rx.recv_timeout(HANG) {
                Ok(sent) => last = Some(sent),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{}: the parser hung (seed {seed:#x}) on:\n{:?}",
                    file.display(),
                    last
                ),
            }
        }
        if let Err(e) = worker.join().expect("fuzz worker") {
            panic!("{}: {e}", file.display());
        }
    }
}

//! Short fuzz runs inside `cargo test`: every cargo-fuzz target's property (`fuzz/checks/*.rs`,
//! the very file the fuzz target compiles) over the checked-in seed corpus, then over
//! deterministic pseudo-random mutations of it for a bounded time per target.
//!
//! This is no substitute for `scripts/fuzz.sh` (libFuzzer, coverage-guided, minutes per target):
//! it is the smoke run that keeps the properties and the corpus honest on every `cargo test`, and
//! catches a parser change that panics on a near-miss of a known input.
//!
//! A failure names the target, the mutation steps, the panic message, a hex dump of the input
//! and the file it was saved to (under the cargo target tmp dir), which `cargo fuzz run TARGET
//! FILE` replays. `ZENTINEL_FUZZ_SHORT_MS` changes the per-target budget (default 2500 ms) and
//! `ZENTINEL_FUZZ_SHORT_SEED` the seed (default fixed, so a failure replays).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zentinel_tests::load::Rng;

#[path = "../../fuzz/checks/chunked_body.rs"]
mod chunked_body;
#[path = "../../fuzz/checks/frame_decoder.rs"]
mod frame_decoder;
#[path = "../../fuzz/checks/http_request.rs"]
mod http_request;
#[path = "../../fuzz/checks/state_file.rs"]
mod state_file;

/// Upper bound on mutants per target, so the run is bounded even on a very fast machine.
const MAX_MUTANTS: u64 = 2_000_000;
/// Fewer than this many mutants within the budget means the run proved next to nothing.
const MIN_MUTANTS: u64 = 200;
/// As `scripts/fuzz.sh` (`-max_len=65536`).
const MAX_LEN: usize = 64 * 1024;

/// Byte strings that matter to the parsers under test: line ends, separators, chunk-size
/// digits and extensions, framing headers, boundary lengths.
const TOKENS: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\0",
    b":",
    b";",
    b" ",
    b"\t",
    b",",
    b"0",
    b"1",
    b"9",
    b"a",
    b"F",
    b"x",
    b"-",
    b"+",
    b"0\r\n\r\n",
    b"ffffffffffffffff",
    b"10000000000000000",
    b"00000000000000000001",
    b";ext=val",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"Content-Length: 5\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b" chunked",
    b"Host: a\r\n",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/9.9",
];

/// Boundary values written over the input as little-endian integers (frame and state-file
/// lengths, counts, versions).
const NUMBERS: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0xffff_ffff,
    0x1_0000_0000,
    u64::MAX,
    u64::MAX / 2,
];

/// One random edit of `data`; returns its name for the failure report.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) -> &'static str {
    let len = data.len();
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
            "bit-flip"
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
            "byte-set"
        }
        2 => {
            data.truncate(rng.at(len));
            "truncate"
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            data.drain(start..end);
            "remove-range"
        }
        4 => {
            // Splice: this input's head with another corpus entry's tail.
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.at(len);
            let from = rng.at(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
            "splice"
        }
        5 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(32)).min(len);
            let piece = data[start..end].to_vec();
            let at = rng.at(len);
            let times = 1 + rng.below(4);
            for _ in 0..times {
                data.splice(at..at, piece.iter().copied());
            }
            "duplicate-range"
        }
        6 if len > 0 => {
            let width = [1usize, 2, 4, 8][rng.below(4)];
            let value = NUMBERS[rng.below(NUMBERS.len())];
            let at = rng.below(len);
            let end = (at + width).min(len);
            data[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            "number-overwrite"
        }
        7 if len > 0 => {
            // Overwrite one interesting byte in place (keeps offsets, unlike an insertion).
            let token = TOKENS[rng.below(TOKENS.len())];
            let i = rng.below(len);
            data[i] = token[0];
            "token-overwrite"
        }
        _ => {
            let token = TOKENS[rng.below(TOKENS.len())];
            let at = rng.at(len);
            data.splice(at..at, token.iter().copied());
            "token-insert"
        }
    }
}

/// FNV-1a 64, as the state file's payload checksum (`protocol/src/state.rs`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Repairs the fields that would reject almost every mutant at the door, so the mutants reach
/// the code behind them: the state file's payload length and checksum (then bytecheck and the
/// rkyv validator get the mutated payload), a channel frame's payload length.
type Fixup = fn(&mut [u8]) -> &'static str;

fn fix_state_file(data: &mut [u8]) -> &'static str {
    // magic (8) | version u32 | payload length u64 | checksum u64 | payload
    const HEADER: usize = 28;
    if data.len() < HEADER {
        return "state-fixup (too short)";
    }
    let payload_len = (data.len() - HEADER) as u64;
    let checksum = fnv1a64(&data[HEADER..]);
    data[12..20].copy_from_slice(&payload_len.to_le_bytes());
    data[20..28].copy_from_slice(&checksum.to_le_bytes());
    "state-fixup"
}

fn fix_frame(data: &mut [u8]) -> &'static str {
    // payload length u32 | fd count u32 | payload: make it one frame of exactly the rest.
    if data.len() < 8 {
        return "frame-fixup (too short)";
    }
    let payload_len = (data.len() - 8) as u32;
    data[..4].copy_from_slice(&payload_len.to_le_bytes());
    "frame-fixup"
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

fn hex_dump(data: &[u8]) -> String {
    const SHOWN: usize = 1024;
    let mut out = String::new();
    for (row, chunk) in data[..data.len().min(SHOWN)].chunks(16).enumerate() {
        out.push_str(&format!("    {:06x} ", row * 16));
        for b in chunk {
            out.push_str(&format!(" {b:02x}"));
        }
        out.push_str(&"   ".repeat(16 - chunk.len()));
        out.push_str("  |");
        for &b in chunk {
            out.push(if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            });
        }
        out.push_str("|\n");
    }
    if data.len() > SHOWN {
        out.push_str(&format!("    ... {} more bytes\n", data.len() - SHOWN));
    }
    out
}

/// Runs `check` on `input`; on a panic, saves the input and fails the test with everything
/// needed to replay it.
fn run_one(target: &str, check: fn(&[u8]), input: &[u8], origin: &str) {
    let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| check(input))) else {
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz_short");
    let file = dir.join(format!("{target}-crash-{:016x}", fnv1a64(input)));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, input))
        .map(|()| file.display().to_string())
        .unwrap_or_else(|e| format!("(not saved: {}: {e})", file.display()));
    panic!(
        "fuzz target {target}: check panicked on {origin}\n  panic: {}\n  input ({} bytes), saved to {saved} \
         (replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {target} {saved}):\n{}",
        panic_message(payload.as_ref()),
        input.len(),
        hex_dump(input)
    );
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("read corpus dir entry").path())
        .filter(|path| path.is_file())
        .collect();
    // read_dir order is the file system's: sort so the mutation sequence is the same everywhere.
    files.sort();
    assert!(!files.is_empty(), "seed corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value:?}: not a whole number: {e}")),
        Err(_) => default,
    }
}

fn short_fuzz(target: &str, check: fn(&[u8]), fixup: Option<Fixup>) {
    let seeds = corpus(target);
    for (path, data) in &seeds {
        run_one(target, check, data, &format!("seed {}", path.display()));
    }
    let corpus: Vec<Vec<u8>> = seeds.iter().map(|(_, data)| data.clone()).collect();

    let budget = Duration::from_millis(env_u64("ZENTINEL_FUZZ_SHORT_MS", 2500));
    // Per-target seed so the targets do not walk the same sequence of choices.
    let seed = env_u64("ZENTINEL_FUZZ_SHORT_SEED", 0x5eed_2e47_14e1) ^ fnv1a64(target.as_bytes());
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut mutants = 0u64;
    let mut steps: Vec<&'static str> = Vec::new();
    while mutants < MAX_MUTANTS && (!mutants.is_multiple_of(64) || started.elapsed() < budget) {
        let base = rng.below(corpus.len());
        let mut input = corpus[base].clone();
        steps.clear();
        // Mostly small edits (near-misses of valid inputs), sometimes a pile of them.
        let edits = if rng.one_in(8) {
            1 + rng.below(16)
        } else {
            1 + rng.below(3)
        };
        for _ in 0..edits {
            steps.push(mutate_once(&mut rng, &mut input, &corpus));
            input.truncate(MAX_LEN);
        }
        if let Some(fix) = fixup {
            if rng.one_in(2) {
                steps.push(fix(&mut input));
            }
        }
        let origin = format!(
            "mutant {mutants} (seed {seed:#x}) of {} via {}",
            seeds[base].0.display(),
            steps.join(" + ")
        );
        run_one(target, check, &input, &origin);
        mutants += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "fuzz target {target}: {} seeds and {mutants} mutants passed in {elapsed:.2?}",
        seeds.len()
    );
    assert!(
        mutants >= MIN_MUTANTS,
        "fuzz target {target}: only {mutants} mutants in {elapsed:.2?} (at least {MIN_MUTANTS} \
         expected): the check is far too slow for a short run"
    );
}

#[test]
fn http_request_short_fuzz() {
    short_fuzz("http_request", http_request::check, None);
}

#[test]
fn chunked_body_short_fuzz() {
    short_fuzz("chunked_body", chunked_body::check, None);
}

#[test]
fn frame_decoder_short_fuzz() {
    short_fuzz("frame_decoder", frame_decoder::check, Some(fix_frame));
}

#[test]
fn state_file_short_fuzz() {
    short_fuzz("state_file", state_file::check, Some(fix_state_file));
}

/// The harness itself: a check that panics on some inputs must be reported, with the target
/// name and the saved input, not swallowed by the catch_unwind.
#[test]
fn a_panicking_check_fails_with_the_input() {
    fn picky(data: &[u8]) {
        assert!(!data.contains(&b'\0'), "NUL seen");
    }
    let result =
        panic::catch_unwind(|| run_one("selftest", picky, b"GET /\0 HTTP/1.1\r\n", "seed x"));
    let message = panic_message(result.expect_err("a panicking check must fail").as_ref());
    assert!(message.contains("fuzz target selftest"), "{message}");
    assert!(message.contains("NUL seen"), "{message}");
    assert!(message.contains("fuzz_short/selftest-crash-"), "{message}");
    assert!(message.contains(" 47 45 54 20 2f 00"), "{message}");
}

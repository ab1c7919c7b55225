//! Issue 16's evaluation: what serving HTTP/2 costs per request through the `h2` crate, driven
//! the way the worker drives it (`worker/src/http2/conn.rs`: runtime-free, the product's
//! `Driver` and `FrameGuard`), against a frame layer written here over an HPACK crate
//! (`loona-hpack`, as sozu's mux used; and `httlib-hpack`, to see what the codec weighs) —
//! `server.rs`, `head.rs`, `frame.rs`, `hpack.rs`.
//!
//! For each case, the `h2` client talks to the h2 server path in memory once, and every
//! chunk it wrote is recorded. The same chunks are then fed to each server path (h2 as the
//! product runs it, h2 without the guard, h2 with other buffer settings, the frame layer),
//! each answering every request with the same response; the process's CPU time, heap
//! allocations and output bytes are measured per request, and the output is decoded and its
//! responses counted (`check.rs`), so a path that answered wrongly cannot look cheap. The
//! frame layer is first checked live against the h2 client.
//!
//! `scripts/h2-frame-cost.sh` builds it with `--release` and prints the table;
//! `docs/design/http2.md` records it. Options: `--requests N` (100000), `--runs R` (3, the
//! table shows medians), `--only TEXT` (cases whose name contains it).

mod alloc;
mod app;
mod check;
mod client;
#[path = "../../src/http2/driver.rs"]
#[allow(dead_code)]
mod driver;
mod frame;
#[path = "../../src/http2/guard.rs"]
#[allow(dead_code)]
mod guard;
mod h2_path;
mod head;
mod hpack;
mod measure;
mod send;
mod server;

use bytes::Bytes;

use app::{Answer, FrameServer};
use check::Checker;
use client::Workload;
use h2_path::{H2Options, H2Server};
use hpack::{Hpack, Httlib, Loona};
use measure::Sample;
use server::Config;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// `worker/src/http2/conn.rs`'s settings (`STREAM_WINDOW`, `CONNECTION_WINDOW`), a listener's
/// default `max-concurrent-streams` and the default `max-header-size-bytes`.
const CONFIG: Config = Config {
    max_concurrent_streams: 100,
    stream_window: 256 * 1024,
    connection_window: 1024 * 1024,
    max_header_list: 8192,
};

/// h2's own default send buffer (`max_send_buffer_size`), for the variant without ours.
const H2_DEFAULT_SEND_BUFFER: usize = 400 * 1024;
/// The upstream side's data-frame budget (`up_conn.rs`: four connection windows).
const UPSTREAM_BUDGET: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Loona,
    Httlib,
    H2(H2Options, &'static str),
}

impl Path {
    fn name(&self) -> &'static str {
        match self {
            Path::Loona => "frame layer + loona-hpack",
            Path::Httlib => "frame layer + httlib-hpack",
            Path::H2(_, name) => name,
        }
    }
}

const PRODUCT: Path = Path::H2(H2Options::PRODUCT, "h2 as conn.rs runs it (+guard)");
const BARE: Path = Path::H2(
    H2Options {
        guard: false,
        ..H2Options::PRODUCT
    },
    "h2 without the guard",
);

struct Case {
    name: &'static str,
    w: Workload,
    extra: Option<Path>,
}

fn cases(requests: usize) -> Vec<Case> {
    let get = |concurrency, response_body| Workload {
        requests,
        concurrency,
        request_body: 0,
        body_frames: 0,
        response_body,
    };
    let post = |body_frames| Workload {
        request_body: 1024,
        body_frames,
        ..get(10, 0)
    };
    vec![
        Case {
            name: "GET, 1 stream at a time",
            w: get(1, 0),
            extra: None,
        },
        Case {
            name: "GET, 10 concurrent streams",
            w: get(10, 0),
            extra: None,
        },
        Case {
            name: "GET, 100 concurrent streams",
            w: get(100, 0),
            extra: None,
        },
        Case {
            name: "GET 16 KiB response, 10 streams",
            w: get(10, 16 * 1024),
            extra: None,
        },
        Case {
            name: "GET 64 KiB response, 10 streams",
            w: get(10, 64 * 1024),
            extra: Some(Path::H2(
                H2Options {
                    send_buffer: H2_DEFAULT_SEND_BUFFER,
                    ..H2Options::PRODUCT
                },
                "h2 (+guard), h2's 400 KiB send buffer",
            )),
        },
        Case {
            name: "POST 1 KiB body, 10 streams",
            w: post(1),
            extra: None,
        },
        Case {
            name: "POST 1 KiB as 16 DATA frames, 10 streams",
            w: post(16),
            extra: Some(Path::H2(
                H2Options {
                    data_frame_budget: Some(UPSTREAM_BUDGET),
                    ..H2Options::PRODUCT
                },
                "h2 (+guard), data-frame budget 4 MiB",
            )),
        },
    ]
}

fn answer(w: &Workload, queue_ready: bool) -> Answer {
    Answer::new(
        w.method(),
        w.request_body as u64,
        w.response_body,
        queue_ready,
    )
}

/// One measured replay of `chunks` through `path`; errors when any response or request was
/// not as expected.
fn run(path: Path, w: &Workload, chunks: &[Bytes]) -> Result<Sample, String> {
    let mut checker = Checker::new(w.response_body);
    let (sample, verified, bad) = match path {
        Path::Loona => run_frame::<Loona>(w, chunks, &mut checker)?,
        Path::Httlib => run_frame::<Httlib>(w, chunks, &mut checker)?,
        Path::H2(opts, _) => {
            let mut s = H2Server::new(CONFIG, opts, answer(w, false));
            let sample = measure::replay(chunks, &mut s, &mut checker);
            if let Some(e) = s.error.take() {
                return Err(format!("h2: {e}"));
            }
            (sample, s.answer.verified, s.answer.bad)
        }
    };
    let n = w.requests as u64;
    if verified != n || bad != 0 || checker.ok != n || checker.bad != 0 {
        return Err(format!(
            "{}: {verified} requests read right ({bad} not), {} responses whole ({} not), of {n}",
            path.name(),
            checker.ok,
            checker.bad
        ));
    }
    Ok(sample)
}

fn run_frame<H: Hpack>(
    w: &Workload,
    chunks: &[Bytes],
    checker: &mut Checker,
) -> Result<(Sample, u64, u64), String> {
    let mut s = FrameServer::<H>::new(CONFIG, answer(w, true));
    let sample = measure::replay(chunks, &mut s, checker);
    if let Some(e) = s.conn.closed() {
        return Err(format!(
            "frame layer over {} closed the connection: {e:?}",
            H::NAME
        ));
    }
    if s.conn.open_streams() != 0 {
        return Err(format!(
            "frame layer: {} streams left open",
            s.conn.open_streams()
        ));
    }
    Ok((sample, s.answer.verified, s.answer.bad))
}

/// The frame layer over `H` against the h2 client, live.
fn live_check<H: Hpack>(w: &Workload) -> Result<(), String> {
    let live = Workload {
        requests: w.requests.min(2000),
        ..*w
    };
    let mut frame = FrameServer::<H>::new(CONFIG, answer(&live, true));
    let got = client::exchange(&live, &mut frame, None)
        .map_err(|e| format!("live check of the frame layer over {}: {e}", H::NAME))?;
    if got != live.requests || frame.answer.verified != live.requests as u64 {
        return Err(format!("live check over {}: {got} responses", H::NAME));
    }
    Ok(())
}

/// HPACK decoding of a case's request heads alone with `H`, `runs` times.
fn decode_samples<H: Hpack>(
    blocks: &[Vec<u8>],
    runs: usize,
    requests: usize,
) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for _ in 0..runs {
        let (sample, good) = measure::decode_only::<H>(blocks, CONFIG.max_header_list as usize);
        if good != requests {
            return Err(format!(
                "{}: {good} request heads decoded of {requests}",
                H::NAME
            ));
        }
        samples.push(sample);
    }
    Ok(samples)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

struct Args {
    requests: usize,
    runs: usize,
    only: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        requests: 100_000,
        runs: 3,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--requests" => a.requests = value.parse().map_err(|_| "--requests: a number")?,
            "--runs" => a.runs = value.parse().map_err(|_| "--runs: a number")?,
            "--only" => a.only = Some(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

fn main() {
    if let Err(e) = main_() {
        eprintln!("h2_frame_cost: {e}");
        std::process::exit(1);
    }
}

fn main_() -> Result<(), String> {
    let a = args()?;
    println!(
        "{} requests per case, median of {} runs; CPU = process CPU time per request",
        a.requests, a.runs
    );
    println!();
    println!("| case | server path | CPU ns/req | vs h2 | allocs/req | alloc bytes/req | output bytes/req |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for case in cases(a.requests) {
        if a.only
            .as_ref()
            .is_some_and(|o| !case.name.contains(o.as_str()))
        {
            continue;
        }
        let w = &case.w;
        let mut chunks = Vec::new();
        let mut recorder = H2Server::new(CONFIG, H2Options::PRODUCT, answer(w, false));
        let got = client::exchange(w, &mut recorder, Some(&mut chunks))?;
        if got != w.requests || recorder.answer.verified != w.requests as u64 {
            return Err(format!("{}: recording got {got} responses", case.name));
        }
        // The frame layer against the real client first.
        live_check::<Loona>(w).map_err(|e| format!("{}: {e}", case.name))?;
        live_check::<Httlib>(w).map_err(|e| format!("{}: {e}", case.name))?;
        let mut paths = vec![PRODUCT, BARE, Path::Loona, Path::Httlib];
        paths.extend(case.extra);
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len()];
        for _ in 0..a.runs {
            for (i, &path) in paths.iter().enumerate() {
                samples[i].push(run(path, w, &chunks)?);
            }
        }
        let n = w.requests as u64;
        let per = |s: &[Sample], f: fn(&Sample) -> u64| {
            median(s.iter().map(f).collect()) as f64 / n as f64
        };
        let product_cpu = per(&samples[0], |s| s.cpu_ns);
        for (path, s) in paths.iter().zip(&samples) {
            let cpu = per(s, |s| s.cpu_ns);
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.1} | {:.0} | {:.0} |",
                case.name,
                path.name(),
                cpu,
                cpu / product_cpu,
                per(s, |s| s.allocs.calls),
                per(s, |s| s.allocs.bytes),
                per(s, |s| s.out_bytes),
            );
        }
        let blocks = measure::request_blocks(&chunks);
        let decoded = [
            (
                Loona::NAME,
                decode_samples::<Loona>(&blocks, a.runs, w.requests)?,
            ),
            (
                Httlib::NAME,
                decode_samples::<Httlib>(&blocks, a.runs, w.requests)?,
            ),
        ];
        for (codec, decode) in decoded {
            let cpu = per(&decode, |s| s.cpu_ns);
            println!(
                "| {} | of which {codec} decoding the request heads | {:.0} | {:.2} | {:.1} | {:.0} | |",
                case.name,
                cpu,
                cpu / product_cpu,
                per(&decode, |s| s.allocs.calls),
                per(&decode, |s| s.allocs.bytes),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(
        requests: usize,
        concurrency: usize,
        request_body: usize,
        response_body: usize,
    ) -> Workload {
        Workload {
            requests,
            concurrency,
            request_body,
            body_frames: 3,
            response_body,
        }
    }

    fn answers_the_h2_client<H: Hpack>() {
        for w in [workload(3, 1, 0, 40_000), workload(25, 10, 1024, 10)] {
            let mut s = FrameServer::<H>::new(CONFIG, answer(&w, true));
            let got = client::exchange(&w, &mut s, None).expect("exchange");
            assert_eq!(got, w.requests);
            assert_eq!((s.answer.verified, s.answer.bad), (w.requests as u64, 0));
            assert_eq!(s.conn.open_streams(), 0);
        }
    }

    /// The frame layer answers the h2 client (GETs with a body larger than a DATA frame,
    /// POSTs with a body in several frames), and the requests it passed on were whole.
    #[test]
    fn frame_layer_answers_the_h2_client() {
        answers_the_h2_client::<Loona>();
        answers_the_h2_client::<Httlib>();
    }

    /// Recorded bytes replayed to both paths give the same whole responses, as the checker
    /// counts them.
    #[test]
    fn replay_is_checked_on_both_paths() {
        let w = workload(30, 10, 1024, 20_000);
        let mut chunks = Vec::new();
        let mut recorder = H2Server::new(CONFIG, H2Options::PRODUCT, answer(&w, false));
        assert_eq!(
            client::exchange(&w, &mut recorder, Some(&mut chunks)),
            Ok(30)
        );
        for path in [Path::Loona, Path::Httlib, BARE, PRODUCT] {
            assert!(run(path, &w, &chunks).is_ok(), "{}", path.name());
        }
        // A response short of its body is caught.
        let mut checker = Checker::new(20_001);
        let mut s = FrameServer::<Loona>::new(CONFIG, answer(&w, true));
        measure::replay(&chunks, &mut s, &mut checker);
        assert_eq!((checker.ok, checker.bad), (0, 30));
    }

    /// A client that does not start with the preface gets GOAWAY(PROTOCOL_ERROR).
    #[test]
    fn bad_preface_is_refused() {
        let mut s = FrameServer::<Loona>::new(CONFIG, answer(&workload(1, 1, 0, 0), true));
        client::Peer::feed(&mut s, Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"));
        assert_eq!(
            s.conn.closed().map(|e| e.0),
            Some(frame::Code::PROTOCOL_ERROR)
        );
        let out = &s.conn.out;
        let goaway = frame::Head::parse(&out[out.len() - 17..]).expect("a frame");
        assert_eq!(goaway.kind, frame::GOAWAY);
    }
}

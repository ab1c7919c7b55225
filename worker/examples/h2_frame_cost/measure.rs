//! Feeding recorded client bytes to a server path and measuring what it costs: CPU time of the
//! process (`CLOCK_PROCESS_CPUTIME_ID`), allocations, output bytes. The output is checked
//! (`check`) in groups of a few MiB with the clocks stopped, so the checking is not measured.

use bytes::Bytes;
use nix::time::{clock_gettime, ClockId};

use crate::alloc::Allocs;
use crate::check::Checker;
use crate::client::Peer;
use crate::frame::{self, CONTINUATION, HEADERS, HEADER_LEN, PREFACE, PRIORITY_FLAG};
use crate::head::{self, Head};
use crate::hpack::Hpack;

/// Output collected before it is checked; the buffer is reserved once, so collecting does
/// not allocate.
const GROUP_FLUSH: usize = 4 << 20;
const GROUP_CAP: usize = 16 << 20;

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu_ns: u64,
    pub allocs: Allocs,
    pub out_bytes: u64,
}

/// CPU time used by the process so far.
pub fn cpu_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// A running measurement: the clocks run between `start` and `stop`.
struct Meter {
    sample: Sample,
    cpu_at: u64,
    allocs_at: Allocs,
}

impl Meter {
    fn start() -> Self {
        Meter {
            sample: Sample::default(),
            allocs_at: Allocs::now(),
            cpu_at: cpu_ns(),
        }
    }

    fn stop(&mut self) {
        self.sample.cpu_ns += cpu_ns() - self.cpu_at;
        self.sample.allocs.add(Allocs::now().since(self.allocs_at));
    }

    fn resume(&mut self) {
        self.allocs_at = Allocs::now();
        self.cpu_at = cpu_ns();
    }
}

/// Feed `chunks` to `peer` one by one (each processed to the end, as one socket read's worth
/// of events), collecting its output; every byte of output goes through `checker`.
pub fn replay(chunks: &[Bytes], peer: &mut dyn Peer, checker: &mut Checker) -> Sample {
    let mut group = Vec::with_capacity(GROUP_CAP);
    let mut meter = Meter::start();
    for chunk in chunks {
        peer.feed(chunk.clone());
        peer.take_output(&mut group);
        if group.len() >= GROUP_FLUSH {
            meter.stop();
            checker.feed(&group);
            meter.sample.out_bytes += group.len() as u64;
            group.clear();
            meter.resume();
        }
    }
    meter.stop();
    checker.feed(&group);
    meter.sample.out_bytes += group.len() as u64;
    meter.sample
}

/// The request header blocks in a client's byte stream (HEADERS and their CONTINUATIONs).
pub fn request_blocks(chunks: &[Bytes]) -> Vec<Vec<u8>> {
    let mut all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    if all.starts_with(PREFACE) {
        all.drain(..PREFACE.len());
    }
    let mut blocks = Vec::new();
    let mut at = 0;
    while let Some(h) = frame::Head::parse(&all[at..]) {
        let end = at + HEADER_LEN + h.len;
        let Some(p) = all.get(at + HEADER_LEN..end) else {
            break;
        };
        match h.kind {
            HEADERS => {
                let mut frag = frame::unpad(&h, p).unwrap_or_default();
                if h.has(PRIORITY_FLAG) {
                    frag = frag.get(5..).unwrap_or_default();
                }
                blocks.push(frag.to_vec());
            }
            CONTINUATION => {
                if let Some(b) = blocks.last_mut() {
                    b.extend_from_slice(p);
                }
            }
            _ => {}
        }
        at = end;
    }
    blocks
}

/// The HPACK part of the frame layer's work alone: every request block decoded (and checked)
/// into a [`Head`] as the frame layer does it. Returns the sample and the heads decoded.
pub fn decode_only<H: Hpack>(blocks: &[Vec<u8>], max_list: usize) -> (Sample, usize) {
    let mut decoder = H::create();
    let mut head = Head::default();
    let mut good = 0;
    let mut meter = Meter::start();
    for block in blocks {
        if head::decode(&mut decoder, block, &mut head, false, max_list).is_ok() {
            good += 1;
        }
    }
    meter.stop();
    (meter.sample, good)
}

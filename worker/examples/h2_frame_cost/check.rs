//! Reads a server's output as a client would (frames, HPACK with its own decoder) and counts
//! the responses that arrived whole: `:status` 200, the announced `content-length`, that many
//! DATA bytes, END_STREAM. Anything else (RST_STREAM, GOAWAY, a short body) counts as bad,
//! so a measured path that stopped answering cannot pass for a fast one.

use std::collections::HashMap;

use loona_hpack::Decoder;

use crate::frame::{self, Head, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS};
use crate::frame::{HEADER_LEN, RST_STREAM};

pub struct Checker {
    expect_body: u64,
    carry: Vec<u8>,
    decoder: Decoder<'static>,
    block: Vec<u8>,
    /// A header block continued: its stream and whether END_STREAM came with it.
    continuing: Option<(u32, bool)>,
    /// Streams with a head seen: whether the head was right, body bytes so far.
    open: HashMap<u32, (bool, u64)>,
    pub ok: u64,
    pub bad: u64,
    pub bytes: u64,
}

impl Checker {
    pub fn new(expect_body: usize) -> Self {
        Checker {
            expect_body: expect_body as u64,
            carry: Vec::new(),
            decoder: Decoder::new(),
            block: Vec::new(),
            continuing: None,
            open: HashMap::new(),
            ok: 0,
            bad: 0,
            bytes: 0,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        let joined;
        let buf: &[u8] = if self.carry.is_empty() {
            data
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(data);
            joined = carry;
            &joined
        };
        let mut at = 0;
        while let Some(h) = Head::parse(&buf[at..]) {
            let end = at + HEADER_LEN + h.len;
            if buf.len() < end {
                break;
            }
            self.frame(h, &buf[at + HEADER_LEN..end]);
            at = end;
        }
        self.carry = buf[at..].to_vec();
    }

    fn frame(&mut self, h: Head, p: &[u8]) {
        match h.kind {
            HEADERS => {
                let Some(frag) = frame::unpad(&h, p) else {
                    self.bad += 1;
                    return;
                };
                self.block.clear();
                self.block.extend_from_slice(frag);
                self.continuing = Some((h.stream, h.has(END_STREAM)));
                if h.has(END_HEADERS) {
                    self.end_block();
                }
            }
            CONTINUATION => {
                self.block.extend_from_slice(p);
                if h.has(END_HEADERS) {
                    self.end_block();
                }
            }
            DATA => {
                let Some((_, got)) = self.open.get_mut(&h.stream) else {
                    self.bad += 1;
                    return;
                };
                *got += frame::unpad(&h, p).map_or(0, |d| d.len() as u64);
                if h.has(END_STREAM) {
                    self.complete(h.stream);
                }
            }
            RST_STREAM | GOAWAY => self.bad += 1,
            _ => {}
        }
    }

    fn end_block(&mut self) {
        let Some((stream, end)) = self.continuing.take() else {
            self.bad += 1;
            return;
        };
        let mut status_ok = false;
        let mut length_ok = false;
        let expect = self.expect_body.to_string();
        let decoded = self
            .decoder
            .decode_with_cb(&self.block, |name, value| match &*name {
                b":status" => status_ok = &*value == b"200",
                b"content-length" => length_ok = *value == *expect.as_bytes(),
                _ => {}
            });
        let head_ok = decoded.is_ok() && status_ok && length_ok;
        self.open.insert(stream, (head_ok, 0));
        if end {
            self.complete(stream);
        }
    }

    fn complete(&mut self, stream: u32) {
        match self.open.remove(&stream) {
            Some((true, got)) if got == self.expect_body => self.ok += 1,
            _ => self.bad += 1,
        }
    }
}

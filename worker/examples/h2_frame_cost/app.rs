//! The application both server paths answer with: it checks every request it is handed
//! (method, path, body length) and answers each with the same response head and body.

use std::collections::HashMap;

use bytes::Bytes;

use crate::client::Peer;
use crate::head::Head;
use crate::hpack::Hpack;
use crate::server::{App, Config, FrameConn};

/// What one case's requests look like, and the response they all get.
pub struct Answer {
    method: &'static [u8],
    request_body: u64,
    body: Bytes,
    content_length: String,
    /// Streams whose request is being read: body bytes so far.
    open: HashMap<u32, u64>,
    /// Requests read whole and as expected.
    pub verified: u64,
    /// Requests not as expected (or reset).
    pub bad: u64,
    /// Streams whose request is complete, for a frame layer to answer (the h2 path answers
    /// from its stream's pump).
    pub ready: Vec<u32>,
    queue_ready: bool,
}

pub const CONTENT_TYPE: &str = "application/octet-stream";

impl Answer {
    pub fn new(
        method: &'static [u8],
        request_body: u64,
        response_body: usize,
        queue_ready: bool,
    ) -> Self {
        Answer {
            method,
            request_body,
            body: Bytes::from(vec![b'z'; response_body]),
            content_length: response_body.to_string(),
            open: HashMap::new(),
            verified: 0,
            bad: 0,
            ready: Vec::new(),
            queue_ready,
        }
    }

    pub fn request(&mut self, id: u32, method: &[u8], path: &[u8], content_length: Option<u64>) {
        let expected_length = (self.request_body > 0).then_some(self.request_body);
        if method != self.method
            || !path.starts_with(b"/items/")
            || content_length != expected_length
        {
            self.bad += 1;
            return;
        }
        self.open.insert(id, 0);
    }

    pub fn body(&mut self, id: u32, n: usize, end: bool) {
        let Some(got) = self.open.get_mut(&id) else {
            return;
        };
        *got += n as u64;
        if end {
            let got = *got;
            self.open.remove(&id);
            if got == self.request_body {
                self.verified += 1;
                if self.queue_ready {
                    self.ready.push(id);
                }
            } else {
                self.bad += 1;
            }
        }
    }

    pub fn body_bytes(&self) -> Bytes {
        self.body.clone()
    }

    pub fn fields(&self) -> [(&str, &str); 2] {
        [
            ("content-type", CONTENT_TYPE),
            ("content-length", &self.content_length),
        ]
    }
}

impl App for Answer {
    fn request(&mut self, stream: u32, head: &Head, end: bool) {
        let method = head.method().unwrap_or_default();
        let path = head.path().unwrap_or_default();
        Answer::request(self, stream, method, path, head.content_length);
        if end {
            self.body(stream, 0, true);
        }
    }

    fn data(&mut self, stream: u32, data: &[u8], end: bool) {
        self.body(stream, data.len(), end);
    }

    fn reset(&mut self, stream: u32) {
        if self.open.remove(&stream).is_some() {
            self.bad += 1;
        }
    }
}

/// The frame layer with [`Answer`] behind it: the frame layer's side of the comparison.
pub struct FrameServer<H> {
    pub conn: FrameConn<H>,
    pub answer: Answer,
}

/// `io.rs`'s read size: the frame layer is fed what one socket read would return.
const READ_CHUNK: usize = 32 * 1024;

impl<H: Hpack> FrameServer<H> {
    pub fn new(cfg: Config, answer: Answer) -> Self {
        FrameServer {
            conn: FrameConn::new(cfg),
            answer,
        }
    }
}

impl<H: Hpack> Peer for FrameServer<H> {
    fn feed(&mut self, chunk: Bytes) {
        for piece in chunk.chunks(READ_CHUNK) {
            if self.conn.feed(piece, &mut self.answer).is_err() {
                return;
            }
            let mut ready = std::mem::take(&mut self.answer.ready);
            let body = self.answer.body_bytes();
            let [(n1, v1), (n2, v2)] = self.answer.fields();
            let fields: [(&[u8], &[u8]); 2] = [
                (n1.as_bytes(), v1.as_bytes()),
                (n2.as_bytes(), v2.as_bytes()),
            ];
            for id in ready.drain(..) {
                self.conn.respond(id, 200, &fields, body.clone());
            }
            self.answer.ready = ready;
        }
    }

    fn take_output(&mut self, into: &mut Vec<u8>) {
        into.extend_from_slice(&self.conn.out);
        self.conn.out.clear();
    }
}

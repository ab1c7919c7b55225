//! The frame layer's sending side: response heads, and bodies as DATA within the client's
//! connection and stream windows (`server.rs` has the rest of the connection).

use bytes::Bytes;

use crate::frame::{self, DATA, END_STREAM};
use crate::head;
use crate::hpack::Hpack;
use crate::server::FrameConn;

impl<H: Hpack> FrameConn<H> {
    pub(crate) fn finish_if_done(&mut self, stream: u32) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| !s.recv_open && s.send_done)
        {
            self.streams.remove(&stream);
        }
    }

    /// Answer `stream`: the head now, the body as the client's windows allow. A stream the
    /// client reset meanwhile is skipped.
    pub fn respond(&mut self, stream: u32, status: u16, fields: &[(&[u8], &[u8])], body: Bytes) {
        if self.closed.is_some() {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let end = body.is_empty();
        head::encode_response(
            &mut self.codec,
            &mut self.out,
            stream,
            status,
            fields,
            end,
            self.peer_max_frame,
        );
        if end {
            s.send_done = true;
            self.finish_if_done(stream);
        } else {
            s.body = Some((body, 0));
            self.sending.push(stream);
            self.flush_data();
        }
    }

    /// Write DATA for every stream with a body waiting, within the windows.
    pub(crate) fn flush_data(&mut self) {
        let mut i = 0;
        while i < self.sending.len() && self.send_window > 0 {
            let id = self.sending[i];
            let Some(s) = self.streams.get_mut(&id) else {
                self.sending.swap_remove(i);
                continue;
            };
            while let Some((body, sent)) = s.body.as_mut() {
                let room = s.send_window.min(self.send_window);
                if room <= 0 {
                    break;
                }
                let left = body.len() - *sent;
                let n = left
                    .min(self.peer_max_frame)
                    .min(usize::try_from(room).unwrap_or(usize::MAX));
                let last = n == left;
                let flags = if last { END_STREAM } else { 0 };
                frame::write_head(&mut self.out, n, DATA, flags, id);
                self.out.extend_from_slice(&body[*sent..*sent + n]);
                *sent += n;
                s.send_window -= n as i64;
                self.send_window -= n as i64;
                if last {
                    s.body = None;
                    s.send_done = true;
                }
            }
            if s.send_done {
                self.sending.swap_remove(i);
                self.finish_if_done(id);
            } else {
                i += 1;
            }
        }
    }
}

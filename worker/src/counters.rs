//! The worker's counters, reported to the master in `WorkerMessage::Status`.

use zentinel_protocol::messages::{Http2Refusals, WorkerCounters};

#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub c: WorkerCounters,
    /// HTTP/2 connections closed for abuse, by kind (`http2::guard`).
    pub http2: Http2Refusals,
}

impl Counters {
    pub fn response(&mut self, status: u16) {
        match status {
            100..=199 => self.c.responses_1xx += 1,
            200..=299 => self.c.responses_2xx += 1,
            300..=399 => self.c.responses_3xx += 1,
            400..=499 => self.c.responses_4xx += 1,
            _ => self.c.responses_5xx += 1,
        }
    }

    pub fn snapshot(&self) -> WorkerCounters {
        self.c.clone()
    }

    /// The HTTP/2 refusals for a `Status`: `None` while there are none (the master reads
    /// that as zeros).
    pub fn http2_snapshot(&self) -> Option<Box<Http2Refusals>> {
        (self.http2 != Http2Refusals::default()).then(|| Box::new(self.http2.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let mut c = Counters::default();
        for s in [100, 101, 200, 204, 301, 404, 413, 502, 504] {
            c.response(s);
        }
        let s = c.snapshot();
        assert_eq!(
            (
                s.responses_1xx,
                s.responses_2xx,
                s.responses_3xx,
                s.responses_4xx,
                s.responses_5xx
            ),
            (2, 2, 1, 2, 2)
        );
    }
}

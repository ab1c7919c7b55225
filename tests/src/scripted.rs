//! A backend whose answers the test writes: per path, the status, the header fields, the body
//! and its framing (Content-Length, chunked in pieces of a given size, or close-delimited),
//! and optionally a [`Gate`] the body stops at until the test opens it. For what
//! `zentinel-backend` cannot send: any `Content-Type`, `Content-Encoding`, `Cache-Control`,
//! `ETag`, a 206, a response held half-way.
//!
//! A real HTTP/1.1 server on a loopback socket, a thread per connection (keep-alive honoured),
//! stopped on drop. It reads request heads only (the tests that use it send no bodies).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// How long a connection waits for a request head, and a gate for the test to open it.
const WAIT: Duration = Duration::from_secs(30);

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked`, in chunks of this many bytes.
    Chunked(usize),
    /// No length: the connection's close ends it.
    Close,
}

/// Where a body stops until the test says go.
#[derive(Debug, Default)]
pub struct Gate {
    /// Body bytes sent before stopping.
    pub at: usize,
    open: Mutex<bool>,
    cv: Condvar,
    /// The backend reached the gate (everything before it was written).
    pub reached: AtomicBool,
    /// The backend wrote the whole body.
    pub finished: AtomicBool,
}

impl Gate {
    pub fn new(at: usize) -> Arc<Gate> {
        Arc::new(Gate {
            at,
            ..Gate::default()
        })
    }

    /// Let the body go on.
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) -> bool {
        self.reached.store(true, Ordering::SeqCst);
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (open, _) = self
            .cv
            .wait_timeout_while(open, WAIT, |o| !*o)
            .unwrap_or_else(|e| e.into_inner());
        *open
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status line after `HTTP/1.1 `, e.g. `"200 OK"`.
    pub status: String,
    /// Fields as written (`"Content-Type: text/html"`), framing fields left to `framing`.
    pub headers: Vec<String>,
    pub body: Vec<u8>,
    pub framing: Framing,
    pub gate: Option<Arc<Gate>>,
}

impl Reply {
    /// `200 OK` with `Content-Type: content_type` and `body`, framed by Content-Length.
    pub fn ok(content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status: "200 OK".into(),
            headers: vec![format!("Content-Type: {content_type}")],
            body,
            framing: Framing::Length,
            gate: None,
        }
    }

    /// One more header field.
    pub fn header(mut self, field: &str) -> Reply {
        self.headers.push(field.to_owned());
        self
    }

    pub fn framing(mut self, framing: Framing) -> Reply {
        self.framing = framing;
        self
    }

    pub fn status(mut self, status: &str) -> Reply {
        self.status = status.to_owned();
        self
    }

    pub fn gate(mut self, gate: &Arc<Gate>) -> Reply {
        self.gate = Some(Arc::clone(gate));
        self
    }
}

type Script = Arc<HashMap<String, Reply>>;

/// The running backend (see the module docs).
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl ScriptedBackend {
    /// Serve `replies` (by request path, query included) on a free loopback port; anything
    /// else gets a 404.
    pub fn start(replies: Vec<(&str, Reply)>) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the scripted backend");
        let addr = listener.local_addr().expect("local_addr");
        let script: Script = Arc::new(
            replies
                .into_iter()
                .map(|(p, r)| (p.to_owned(), r))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let script = Arc::clone(&script);
                thread::spawn(move || {
                    let _ = serve(conn, &script);
                });
            }
        });
        ScriptedBackend { addr, stop }
    }

    /// `host:port`, as an upstream target.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Requests of one connection until it closes (or a reply closes it).
fn serve(mut conn: TcpStream, script: &Script) -> io::Result<()> {
    conn.set_read_timeout(Some(WAIT))?;
    conn.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut tmp = [0u8; 4096];
            let n = conn.read(&mut tmp)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or("");
        let target = words.next().unwrap_or("");
        let reply = script.get(target).cloned().unwrap_or_else(|| {
            Reply::ok(
                "text/plain",
                format!("no script for {target}\n").into_bytes(),
            )
            .status("404 Not Found")
        });
        if !respond(&mut conn, &reply, method == "HEAD")? {
            return Ok(());
        }
    }
}

/// Write `reply`; false when the connection closes after it.
fn respond(conn: &mut TcpStream, reply: &Reply, head_only: bool) -> io::Result<bool> {
    let mut head = format!("HTTP/1.1 {}\r\n", reply.status);
    for h in &reply.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    match reply.framing {
        Framing::Length => head.push_str(&format!("Content-Length: {}\r\n", reply.body.len())),
        Framing::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::Close => head.push_str("Connection: close\r\n"),
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if head_only {
        return Ok(reply.framing != Framing::Close);
    }
    let gate_at = reply.gate.as_ref().map_or(usize::MAX, |g| g.at);
    let piece = match reply.framing {
        Framing::Chunked(n) => n.max(1),
        _ => 64 * 1024,
    };
    let mut sent = 0;
    while sent < reply.body.len() {
        let mut end = (sent + piece).min(reply.body.len());
        if sent < gate_at {
            end = end.min(gate_at);
        }
        let bytes = &reply.body[sent..end];
        if let Framing::Chunked(_) = reply.framing {
            conn.write_all(format!("{:x}\r\n", bytes.len()).as_bytes())?;
            conn.write_all(bytes)?;
            conn.write_all(b"\r\n")?;
        } else {
            conn.write_all(bytes)?;
        }
        sent = end;
        if sent == gate_at {
            if let Some(g) = &reply.gate {
                if !g.wait() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "gate never opened"));
                }
            }
        }
    }
    if let Framing::Chunked(_) = reply.framing {
        conn.write_all(b"0\r\n\r\n")?;
    }
    if let Some(g) = &reply.gate {
        g.finished.store(true, Ordering::SeqCst);
    }
    Ok(reply.framing != Framing::Close)
}

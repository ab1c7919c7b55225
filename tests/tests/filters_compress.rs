//! The `compress` route filter on real processes: a proxy whose route names `filters "gz"`, a
//! scripted backend (tests/src/scripted.rs) answering with the fields each case needs, and real
//! clients (curl over HTTP/1.1 and HTTP/2, raw sockets). Every compressed body is decoded here
//! (flate2, brotli, zstd) and compared byte for byte with what the backend sent.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zentinel_tests::scripted::{Framing, Gate, Reply, ScriptedBackend};
use zentinel_tests::*;

/// Text that compresses well but not trivially: about `n` bytes of varied lines.
fn text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(
            format!(
                "{{\"id\": {i}, \"name\": \"item {}\", \"price\": {}.{:02}}}\n",
                i % 613,
                i % 97,
                pattern_byte(i) % 100
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

const PAGE: usize = 300_000;
/// The streamed response, and where the backend stops until the test has seen its start.
const LARGE: usize = 8 * 1024 * 1024;
const LARGE_GATE: usize = 1024 * 1024;

/// One worker, an HTTP/1.1 listener and an h2 listener (prior knowledge), both on route
/// "all" with `filters "gz"`.
fn proxy(backend: &ScriptedBackend) -> Zentinel {
    let (http, h2) = (free_port(), free_port());
    Zentinel::start(&format!(
        r#"
system {{
    worker-processes 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{http}"
        protocol "http"
        default-route "all"
    }}
    listener "h2" {{
        address "127.0.0.1:{h2}"
        protocol "h2"
        default-route "all"
    }}
}}
routes {{
    route "all" {{
        upstream "b"
        filters "gz"
    }}
}}
upstreams {{
    upstream "b" {{
        target "{target}"
    }}
}}
filters {{
    filter "gz" {{
        type "compress"
        algorithms "gzip" "br" "zstd"
        min-size 1024
        content-types "text/html" "application/json"
        level 6
    }}
}}
"#,
        target = backend.target()
    ))
}

struct Site {
    page: Vec<u8>,
    small: Vec<u8>,
    pre_gzipped: Vec<u8>,
    z: Zentinel,
    _backend: ScriptedBackend,
}

fn site() -> Site {
    let page = text(PAGE);
    let small = text(1000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
    gz.write_all(&page).expect("gzip");
    let pre_gzipped = gz.finish().expect("gzip");
    let html = "text/html; charset=utf-8";
    let backend = ScriptedBackend::start(vec![
        (
            "/page.html",
            Reply::ok(html, page.clone())
                .header("ETag: \"v1\"")
                .header("Accept-Ranges: bytes")
                .header("Vary: Origin"),
        ),
        (
            "/chunked.json",
            Reply::ok("application/json", page.clone()).framing(Framing::Chunked(777)),
        ),
        (
            "/close.json",
            Reply::ok("application/json", page.clone()).framing(Framing::Close),
        ),
        ("/small.html", Reply::ok(html, small.clone())),
        ("/photo.png", Reply::ok("image/png", page.clone())),
        (
            "/encoded.html",
            Reply::ok(html, pre_gzipped.clone()).header("Content-Encoding: gzip"),
        ),
        (
            "/no-transform.html",
            Reply::ok(html, page.clone()).header("Cache-Control: public, no-transform"),
        ),
        (
            "/partial.html",
            Reply::ok(html, page[..5000].to_vec())
                .status("206 Partial Content")
                .header(&format!("Content-Range: bytes 0-4999/{PAGE}")),
        ),
    ]);
    let z = proxy(&backend);
    Site {
        page,
        small,
        pre_gzipped,
        z,
        _backend: backend,
    }
}

/// A request on a fresh connection (`Connection: close`), its response read whole.
fn fetch(z: &Zentinel, line: &str, headers: &str) -> Response {
    let mut c = z.client();
    c.send(format!("{line}\r\nHost: app.test\r\n{headers}Connection: close\r\n\r\n").as_bytes());
    c.try_read_response(true, line.starts_with("HEAD "))
        .unwrap_or_else(|e| panic!("{line} {headers:?}: {e}"))
}

fn get_ae(z: &Zentinel, path: &str, accept_encoding: &str) -> Response {
    fetch(
        z,
        &format!("GET {path} HTTP/1.1"),
        &format!("Accept-Encoding: {accept_encoding}\r\n"),
    )
}

fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let r = match coding {
        "gzip" => flate2::read::GzDecoder::new(bytes).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out),
        "zstd" => zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut out)),
        other => panic!("no decoder for {other:?}"),
    };
    if let Err(e) = r {
        panic!("{coding}: not a valid stream: {e}");
    }
    out
}

/// A compressed answer: `coding`, chunked, no length, varying on Accept-Encoding, decoding
/// to `body`.
fn assert_compressed(r: &Response, coding: &str, body: &[u8], what: &str) {
    assert_eq!(r.status, 200, "{what}: {:?}", r.headers);
    assert_eq!(
        r.header("content-encoding"),
        Some(coding),
        "{what}: {:?}",
        r.headers
    );
    assert!(
        r.chunked && r.content_length().is_none(),
        "{what}: {:?}",
        r.headers
    );
    assert!(
        r.body.len() < body.len() / 3,
        "{what}: {} bytes",
        r.body.len()
    );
    assert!(
        decode(coding, &r.body) == body,
        "{what}: decoded body differs"
    );
}

/// The backend's answer as it was: no coding, its length, its bytes.
fn assert_identity(r: &Response, body: &[u8], what: &str) {
    assert_as_sent(r, None, body, what);
}

/// The backend's answer as it was: its `Content-Encoding` (`encoded`), length and bytes.
fn assert_as_sent(r: &Response, encoded: Option<&str>, body: &[u8], what: &str) {
    assert_eq!(
        r.header("content-encoding"),
        encoded,
        "{what}: {:?}",
        r.headers
    );
    assert_eq!(r.content_length(), Some(body.len() as u64), "{what}");
    assert!(r.body == body, "{what}: body differs");
}

#[test]
fn gzip_br_and_zstd_decode_to_the_backends_bytes() {
    let s = &site();
    for coding in ["gzip", "br", "zstd"] {
        for path in ["/page.html", "/chunked.json", "/close.json"] {
            let r = get_ae(&s.z, path, coding);
            assert_compressed(&r, coding, &s.page, &format!("{coding} {path}"));
            assert_eq!(
                r.header("vary"),
                Some(if path == "/page.html" {
                    "Origin, Accept-Encoding"
                } else {
                    "Accept-Encoding"
                })
            );
        }
    }
    // The head of a compressed answer: a weak tag, no ranges of the encoded bytes.
    let r = get_ae(&s.z, "/page.html", "gzip");
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    assert_eq!(r.header("accept-ranges"), None);
    // Negotiation: q-values, the filter's order (gzip, br, zstd) at equal weights, `*`.
    let coding = |ae: &str| {
        get_ae(&s.z, "/page.html", ae)
            .header("content-encoding")
            .map(str::to_owned)
    };
    assert_eq!(coding("zstd, br, gzip").as_deref(), Some("gzip"));
    assert_eq!(coding("br;q=0.5, zstd;q=0.8").as_deref(), Some("zstd"));
    assert_eq!(coding("gzip;q=0, br").as_deref(), Some("br"));
    assert_eq!(coding("*;q=0.5, gzip;q=0").as_deref(), Some("br"));
    assert_eq!(coding("deflate").as_deref(), None, "not offered");
    assert_eq!(coding("gzip;q=0.5, identity").as_deref(), None);
    assert_eq!(coding("identity;q=0, zstd;q=0.1").as_deref(), Some("zstd"));
    // Kept-alive: each compressed body ends cleanly for the next request.
    let mut c = s.z.client();
    for coding in ["br", "zstd", "gzip"] {
        c.send(
            format!(
                "GET /chunked.json HTTP/1.1\r\nHost: app.test\r\nAccept-Encoding: {coding}\r\n\r\n"
            )
            .as_bytes(),
        );
        let r = c.read_response();
        assert_compressed(&r, coding, &s.page, &format!("{coding} kept alive"));
    }
    c.send(b"GET /small.html HTTP/1.1\r\nHost: app.test\r\nAccept-Encoding: gzip\r\n\r\n");
    assert_identity(&c.read_response(), &s.small, "after compressed ones");
}

#[test]
fn where_compression_does_not_apply() {
    let s = &site();
    let r = get_ae(&s.z, "/page.html", "identity");
    assert_identity(&r, &s.page, "identity asked");
    assert_eq!(
        r.header("vary"),
        Some("Origin, Accept-Encoding"),
        "varies all the same"
    );
    assert_eq!(
        r.header("etag"),
        Some("\"v1\""),
        "the tag of the identity bytes"
    );
    let r = fetch(&s.z, "GET /page.html HTTP/1.1", "");
    assert_identity(&r, &s.page, "no Accept-Encoding");
    // A Range request: the backend's answer is passed as it is (here it ignored the Range).
    let r = fetch(
        &s.z,
        "GET /page.html HTTP/1.1",
        "Accept-Encoding: gzip, br\r\nRange: bytes=0-99\r\n",
    );
    assert_identity(&r, &s.page, "Range asked");
    let r = get_ae(&s.z, "/partial.html", "gzip");
    assert_eq!(r.status, 206);
    assert_identity(&r, &s.page[..5000], "206");
    let r = get_ae(&s.z, "/encoded.html", "gzip, br");
    assert_as_sent(&r, Some("gzip"), &s.pre_gzipped, "already encoded");
    let r = get_ae(&s.z, "/no-transform.html", "gzip");
    assert_identity(&r, &s.page, "no-transform");
    for (path, body) in [("/small.html", &s.small), ("/photo.png", &s.page)] {
        let r = get_ae(&s.z, path, "gzip, br, zstd");
        assert_identity(&r, body, path);
        assert_eq!(r.header("vary"), None, "{path} never varies");
    }
    // HEAD: no body to compress, the fields a GET's identity answer would have.
    let r = fetch(
        &s.z,
        "HEAD /page.html HTTP/1.1",
        "Accept-Encoding: gzip\r\n",
    );
    assert_eq!(r.header("content-encoding"), None, "{:?}", r.headers);
    assert_eq!(r.content_length(), Some(PAGE as u64));
    assert_eq!(r.header("vary"), Some("Origin, Accept-Encoding"));
    assert!(r.body.is_empty());
}

#[test]
fn http10_clients_get_a_close_delimited_body() {
    let s = &site();
    for path in ["/page.html", "/chunked.json"] {
        let r = fetch(
            &s.z,
            &format!("GET {path} HTTP/1.0"),
            "Accept-Encoding: gzip\r\n",
        );
        assert_eq!(
            r.header("content-encoding"),
            Some("gzip"),
            "{path}: {:?}",
            r.headers
        );
        assert!(
            !r.chunked && r.content_length().is_none(),
            "{path}: {:?}",
            r.headers
        );
        assert!(
            r.close_delimited && r.connection_has("close"),
            "{path}: {:?}",
            r.headers
        );
        assert!(
            decode("gzip", &r.body) == s.page,
            "{path}: decoded body differs"
        );
    }
}

fn curl_available() -> bool {
    Command::new("curl").arg("--version").output().is_ok()
}

/// curl with `args` (its body to `out`); returns what `-w` wrote.
fn curl(out: &std::path::Path, args: &[&str]) -> String {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o"])
        .arg(out)
        .args(["-w", "%{http_code} %{http_version} %{size_download}"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        o.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Real clients: curl decodes gzip, br and zstd itself (`--compressed`), over HTTP/1.1 and
/// over HTTP/2 with prior knowledge; without `--compressed` it keeps the encoded bytes,
/// decoded here.
#[test]
fn curl_over_http1_and_http2() {
    if !curl_available() {
        eprintln!("curl not installed: skipping");
        return;
    }
    let s = &site();
    let dir = TempDir::new("compress-curl");
    let out = dir.0.join("body");
    let headers = dir.0.join("headers");
    let headers_file = headers.to_str().expect("a UTF-8 temp path");
    let h2 = s.z.listeners[1];
    for (addr, version, flag) in [
        (s.z.addr(), "1.1", "--http1.1"),
        (h2, "2", "--http2-prior-knowledge"),
    ] {
        for coding in ["gzip", "br", "zstd"] {
            let url = format!("http://{addr}/chunked.json");
            let ae = format!("Accept-Encoding: {coding}");
            let said = curl(&out, &[flag, "--compressed", "-H", &ae, &url]);
            let fields: Vec<&str> = said.split(' ').collect();
            assert_eq!(&fields[..2], ["200", version], "{said}");
            let wire: usize = fields[2].parse().expect("size_download");
            assert!(
                wire < PAGE / 3,
                "{coding} over {version}: {wire} bytes on the wire"
            );
            assert!(
                fs::read(&out).expect("read") == s.page,
                "curl decoded {coding}"
            );
            // The encoded bytes as they came, decoded here.
            let said = curl(&out, &[flag, "-D", headers_file, "-H", &ae, &url]);
            assert!(said.starts_with(&format!("200 {version} ")), "{said}");
            let head = fs::read_to_string(&headers)
                .expect("headers")
                .to_ascii_lowercase();
            assert!(
                head.contains(&format!("content-encoding: {coding}\r\n")),
                "{head}"
            );
            assert!(head.contains("vary: accept-encoding\r\n"), "{head}");
            assert!(!head.contains("content-length:"), "{head}");
            let raw = fs::read(&out).expect("read");
            assert!(
                decode(coding, &raw) == s.page,
                "{coding} over HTTP/{version}"
            );
            eprintln!(
                "{coding} over HTTP/{version}: {} of {PAGE} bytes",
                raw.len()
            );
        }
    }
}

/// Reads a chunked body as it arrives, feeding a gzip decoder.
struct ChunkedGunzip {
    sock: TcpStream,
    buf: Vec<u8>,
    decoder: flate2::write::GzDecoder<Vec<u8>>,
    /// Payload bytes left in the current chunk.
    left: usize,
    done: bool,
}

impl ChunkedGunzip {
    /// Read more (waiting up to the socket's read timeout) and decode what can be; false at
    /// EOF.
    fn step(&mut self) -> bool {
        let mut tmp = [0u8; 64 * 1024];
        let n = match self.sock.read(&mut tmp) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return true
            }
            Err(e) => panic!("reading the body: {e}"),
        };
        self.buf.extend_from_slice(&tmp[..n]);
        self.parse();
        n > 0
    }

    fn parse(&mut self) {
        loop {
            if self.left > 0 {
                let take = self.left.min(self.buf.len());
                if take == 0 {
                    return;
                }
                self.decoder
                    .write_all(&self.buf[..take])
                    .expect("valid gzip");
                // The decoder keeps its last output until asked for it.
                self.decoder.flush().expect("valid gzip");
                self.buf.drain(..take);
                self.left -= take;
                continue;
            }
            // After a payload (or at the start): [CRLF] size CRLF.
            let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let line = String::from_utf8_lossy(&self.buf[..eol]).into_owned();
            self.buf.drain(..eol + 2);
            if line.is_empty() {
                continue;
            }
            let size = usize::from_str_radix(line.trim(), 16).expect("a chunk size");
            if size == 0 {
                self.done = true;
                return;
            }
            self.left = size;
        }
    }

    fn decoded(&self) -> &[u8] {
        self.decoder.get_ref()
    }
}

/// 8 MiB of chunked JSON, compressed as it streams: the backend stops after 1 MiB until the
/// client has decoded all of that 1 MiB (the proxy flushes when the upstream pauses), so the
/// proxy cannot be holding the whole body; the worker's peak memory grows by far less than
/// the body.
#[test]
fn a_large_response_streams_through_the_encoder() {
    let body = Arc::new(text(LARGE));
    let gate = Gate::new(LARGE_GATE);
    let backend = ScriptedBackend::start(vec![
        (
            "/large.json",
            Reply::ok("application/json", body.to_vec())
                .framing(Framing::Chunked(16 * 1024))
                .gate(&gate),
        ),
        ("/warm.json", Reply::ok("application/json", text(100_000))),
    ]);
    let z = proxy(&backend);
    let warm = get_ae(&z, "/warm.json", "gzip");
    assert_eq!(warm.header("content-encoding"), Some("gzip"));
    let worker = *z.worker_pids().first().expect("a worker");
    let rss_before = peak_rss_kib(worker).expect("VmHWM");

    let mut sock = TcpStream::connect(z.addr()).expect("connect");
    // Short reads, so the deadlines below (shorter than the backend's wait at its gate) are
    // what ends a stalled stream.
    sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    sock.write_all(
        b"GET /large.json HTTP/1.1\r\nHost: app.test\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let head_deadline = Instant::now() + Duration::from_secs(20);
    while !head.ends_with(b"\r\n\r\n") {
        match sock.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => panic!("head cut short: {:?}", String::from_utf8_lossy(&head)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(Instant::now() < head_deadline, "no response head");
            }
            Err(e) => panic!("reading the head: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    let mut reader = ChunkedGunzip {
        sock,
        buf: Vec::new(),
        decoder: flate2::write::GzDecoder::new(Vec::new()),
        left: 0,
        done: false,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    while reader.decoded().len() < LARGE_GATE {
        assert!(
            Instant::now() < deadline,
            "the first MiB never came through"
        );
        assert!(reader.step(), "connection closed early");
    }
    assert_eq!(
        reader.decoded().len(),
        LARGE_GATE,
        "everything the backend sent, no more"
    );
    assert!(reader.decoded() == &body[..LARGE_GATE]);
    assert!(
        gate.reached.load(Ordering::SeqCst) && !gate.finished.load(Ordering::SeqCst),
        "the backend is still holding the rest"
    );
    eprintln!(
        "first MiB decoded by the client {:?} after the request, the backend holding 7 MiB",
        started.elapsed()
    );
    gate.open();
    while !reader.done {
        assert!(Instant::now() < deadline, "the rest never came through");
        assert!(reader.step(), "connection closed before the last chunk");
    }
    let decoded = reader.decoder.finish().expect("a complete gzip stream");
    assert!(decoded == *body, "8 MiB decoded byte for byte");
    let rss_after = peak_rss_kib(worker).expect("VmHWM");
    let grew = rss_after.saturating_sub(rss_before);
    eprintln!("worker peak RSS {rss_before} KiB -> {rss_after} KiB (+{grew} KiB) for 8 MiB");
    assert!(
        grew < (LARGE / 1024 / 2) as u64,
        "the worker's peak memory grew by {grew} KiB for an 8 MiB body"
    );
}

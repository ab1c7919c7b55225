//! `static-files` routes on real processes: index files, MIME types, the route prefix removed
//! from the path, ranges, conditional requests, traversal refused, SPA fallback, and large
//! files sent by sendfile: whole, in part, to a paused reader without stalling the worker,
//! replaced or cut short under the transfer.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use zentinel_tests::*;

/// Sends `head` (request line and headers, no blank line) on a fresh connection.
fn request(z: &Zentinel, head: &str) -> Response {
    let mut c = z.client();
    c.send(format!("{head}\r\nHost: files.test\r\nConnection: close\r\n\r\n").as_bytes());
    c.try_read_response(true, head.starts_with("HEAD "))
        .unwrap_or_else(|e| panic!("{head}: {e}"))
}

fn get(z: &Zentinel, path: &str) -> Response {
    request(z, &format!("GET {path} HTTP/1.1"))
}

struct Site {
    dir: TempDir,
    www: PathBuf,
    z: Zentinel,
}

const BIG: usize = 6 * 1024 * 1024 + 123;

fn site() -> Site {
    let dir = TempDir::new("static-files");
    let www = dir.0.join("www");
    let app = dir.0.join("app");
    let secret = dir.0.join("secret");
    for d in [&www, &app, &secret, &www.join("docs"), &www.join("bare")] {
        fs::create_dir_all(d).expect("mkdir");
    }
    fs::write(www.join("index.html"), "<h1>home</h1>").expect("write");
    fs::write(www.join("docs/index.html"), "<h1>docs</h1>").expect("write");
    fs::write(www.join("bare/readme.txt"), "read me").expect("write");
    fs::write(www.join("style.css"), "body{}").expect("write");
    fs::write(www.join("data.bin"), b"0123456789").expect("write");
    fs::write(www.join("big.bin"), pattern(BIG)).expect("write");
    fs::write(secret.join("passwd"), "root:x").expect("write");
    std::os::unix::fs::symlink(&secret, www.join("escape")).expect("symlink");
    fs::write(app.join("app.html"), "<h1>spa</h1>").expect("write");
    fs::write(app.join("main.js"), "run()").expect("write");
    let port = free_port();
    // One worker: every connection of a test shares its event loop.
    let cfg = format!(
        r#"
system {{
    worker-threads 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
    }}
}}
routes {{
    route "app" {{
        matches {{ path-prefix "/app"; }}
        static-files {{
            root "{app}"
            index "app.html"
            fallback "app.html"
            cache-control "no-cache"
        }}
    }}
    route "list" {{
        matches {{ path-prefix "/list"; }}
        static-files {{
            root "{www}"
            directory-listing #true
        }}
    }}
    route "site" {{
        priority "low"
        matches {{ path-prefix "/"; }}
        static-files {{
            root "{www}"
        }}
    }}
}}
"#,
        app = app.display(),
        www = www.display(),
    );
    let z = Zentinel::start(&cfg);
    Site { dir, www, z }
}

#[test]
fn files_index_types_and_prefix() {
    let Site { z, .. } = &site();
    let r = get(z, "/");
    assert_eq!((r.status, r.body_str().as_str()), (200, "<h1>home</h1>"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r
        .header("last-modified")
        .is_some_and(|d| d.ends_with(" GMT")));
    let r = get(z, "/docs/");
    assert_eq!(r.body_str(), "<h1>docs</h1>");
    // A directory without the slash is redirected so relative links work.
    let r = get(z, "/docs");
    assert_eq!((r.status, r.header("location")), (301, Some("/docs/")));
    let r = get(z, "/style.css");
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(r.body_str(), "body{}");
    // No index and no listing: 403. Missing: 404.
    assert_eq!(get(z, "/bare/").status, 403);
    assert_eq!(get(z, "/nope.html").status, 404);
    // The route's prefix is removed: /app/main.js is <app>/main.js; the index is honoured.
    let r = get(z, "/app/main.js");
    assert_eq!((r.status, r.body_str().as_str()), (200, "run()"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(get(z, "/app/").body_str(), "<h1>spa</h1>");
    // SPA fallback for paths that do not exist.
    let r = get(z, "/app/some/client/route");
    assert_eq!((r.status, r.body_str().as_str()), (200, "<h1>spa</h1>"));
    // HEAD: the same head, no body. Other methods: 405.
    let r = request(z, "HEAD /style.css HTTP/1.1");
    assert_eq!((r.status, r.header("content-length")), (200, Some("6")));
    assert!(r.body.is_empty());
    let r = request(z, "DELETE /style.css HTTP/1.1");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
}

#[test]
fn directory_listing() {
    let Site { z, .. } = &site();
    let r = get(z, "/list/bare/");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let body = r.body_str();
    assert!(body.contains("Index of /list/bare/"), "{body}");
    assert!(
        body.contains("<a href=\"readme.txt\">readme.txt</a>"),
        "{body}"
    );
    // An index still wins over the listing.
    let body = get(z, "/list/docs/").body_str();
    assert_eq!(body, "<h1>docs</h1>");
    let body = request(z, "GET /list/?x HTTP/1.1").body_str();
    assert_eq!(body, "<h1>home</h1>");
}

#[test]
fn ranges_and_conditionals() {
    let Site { z, .. } = &site();
    let r = request(z, "GET /data.bin HTTP/1.1\r\nRange: bytes=2-5");
    assert_eq!((r.status, r.body_str().as_str()), (206, "2345"));
    assert_eq!(r.header("content-range"), Some("bytes 2-5/10"));
    let r = request(z, "GET /data.bin HTTP/1.1\r\nRange: bytes=-3");
    assert_eq!((r.status, r.body_str().as_str()), (206, "789"));
    let r = request(z, "GET /data.bin HTTP/1.1\r\nRange: bytes=10-");
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */10"))
    );
    let r = request(z, "GET /data.bin HTTP/1.1\r\nRange: bytes=0-1,4-5");
    assert_eq!((r.status, r.body.len()), (200, 10));

    let full = get(z, "/data.bin");
    let etag = full.header("etag").expect("etag").to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    let r = request(
        z,
        &format!("GET /data.bin HTTP/1.1\r\nIf-None-Match: {etag}"),
    );
    assert_eq!((r.status, r.header("etag")), (304, Some(etag.as_str())));
    assert!(r.body.is_empty());
    let r = request(z, "GET /data.bin HTTP/1.1\r\nIf-None-Match: \"other\"");
    assert_eq!(r.status, 200);
    let lm = full.header("last-modified").expect("last-modified");
    let r = request(
        z,
        &format!("GET /data.bin HTTP/1.1\r\nIf-Modified-Since: {lm}"),
    );
    assert_eq!(r.status, 304);
    let r = request(
        z,
        "GET /data.bin HTTP/1.1\r\nIf-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn traversal_is_refused() {
    let Site { z, .. } = &site();
    for path in [
        "/../secret/passwd",
        "/docs/../../secret/passwd",
        "/%2e%2e/secret/passwd",
        "/%2E%2E%2Fsecret%2Fpasswd",
        "/docs/..%2f..%2fsecret/passwd",
        "/escape/passwd",
        "/app/../../secret/passwd",
    ] {
        let r = get(z, path);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(!r.body_str().contains("root:x"), "{path}");
    }
}

#[test]
fn large_file_streams_whole_and_in_part() {
    let Site { z, .. } = &site();
    let mut c = z.client();
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: files.test\r\n\r\n");
    let r = c.read_response_hashed();
    assert_eq!(r.status, 200);
    r.assert_pattern_body(BIG as u64);
    // Same connection: keep-alive survives a streamed body.
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: files.test\r\nRange: bytes=5000000-\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len(), BIG - 5_000_000);
    assert_eq!(&r.body[..], &pattern(BIG)[5_000_000..]);
}

/// 20 MB: several times what the kernel buffers of one loopback connection hold, so a client
/// that stops reading leaves the proxy in the middle of the transfer.
const HUGE: usize = 20 * 1000 * 1000;

/// A download whose reader stops after the head and `first` body bytes. Its receive buffer
/// is kept small so that little of the body waits in the kernel while it is paused.
struct Paused {
    stream: TcpStream,
    content_length: usize,
    body: Vec<u8>,
}

impl Paused {
    fn start(z: &Zentinel, path: &str, first: usize) -> Paused {
        let mut stream = TcpStream::connect(z.addr()).expect("connect");
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::RcvBuf, &65536)
            .expect("SO_RCVBUF");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: files.test\r\n\r\n").as_bytes())
            .expect("send");
        let (head, mut body) =
            read_response_head(&mut stream).unwrap_or_else(|e| panic!("read head: {e}"));
        assert_eq!((head.minor_version, head.status), (1, 200), "{head:?}");
        let content_length = head
            .content_length()
            .and_then(|len| usize::try_from(len).ok())
            .unwrap_or_else(|| panic!("no Content-Length: {head:?}"));
        let mut chunk = vec![0u8; 64 * 1024];
        while body.len() < first {
            let n = stream.read(&mut chunk).expect("read body");
            assert!(n > 0, "closed after {} body bytes", body.len());
            body.extend_from_slice(&chunk[..n]);
        }
        Paused {
            stream,
            content_length,
            body,
        }
    }

    /// Reads on until the announced length or the connection's end: the body received.
    fn finish(mut self) -> Vec<u8> {
        let mut chunk = vec![0u8; 256 * 1024];
        while self.body.len() < self.content_length {
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.body.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading the rest ({} bytes so far): {e}", self.body.len()),
            }
        }
        self.body
    }
}

fn curl_available() -> bool {
    let ok = Command::new("curl").arg("--version").output().is_ok();
    if !ok {
        eprintln!("curl not installed: skipping");
    }
    ok
}

/// curl downloads `path` into `out`: "status size seconds".
fn curl_to(z: &Zentinel, path: &str, out: &std::path::Path, extra: &[&str]) -> String {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(out)
        .args(["-w", "%{http_code} %{size_download} %{time_total}"])
        .args(extra)
        .arg(format!("http://{}{path}", z.addr()))
        .output()
        .expect("run curl");
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn huge_file_downloads_intact_with_curl() {
    let site = site();
    if !curl_available() {
        return;
    }
    let data = pattern(HUGE);
    fs::write(site.www.join("huge.bin"), &data).expect("write");
    let out = site.dir.0.join("download.bin");
    let said = curl_to(&site.z, "/huge.bin", &out, &[]);
    let fields: Vec<&str> = said.split(' ').collect();
    assert_eq!(&fields[..2], ["200", HUGE.to_string().as_str()], "{said}");
    let got = fs::read(&out).expect("read download");
    assert!(got == data, "20 MB body differs from the file");
    eprintln!("20 MB served by sendfile to curl in {} s", fields[2]);
    let said = curl_to(&site.z, "/huge.bin", &out, &["-r", "10000000-10999999"]);
    assert!(said.starts_with("206 1000000 "), "{said}");
    let got = fs::read(&out).expect("read range");
    assert!(
        got[..] == data[10_000_000..11_000_000],
        "range bytes differ"
    );
    // HEAD on a keep-alive connection: no body byte may follow, or the next answer would
    // start inside it.
    let mut c = site.z.client();
    c.send(b"HEAD /huge.bin HTTP/1.1\r\nHost: files.test\r\n\r\n");
    let r = c.try_read_response(true, true).expect("HEAD");
    assert_eq!(r.header("content-length"), Some(HUGE.to_string().as_str()));
    let r = c.get("/style.css", "files.test");
    assert_eq!((r.status, r.body_str().as_str()), (200, "body{}"));
}

#[test]
fn a_paused_download_does_not_stall_the_worker() {
    let Site { z, www, .. } = &site();
    fs::write(www.join("huge.bin"), pattern(HUGE)).expect("write");
    let a = Paused::start(z, "/huge.bin", 1 << 20);
    // One worker, mid-transfer to a client that reads nothing: others are answered at once.
    let t = Instant::now();
    for _ in 0..5 {
        let r = get(z, "/style.css");
        assert_eq!((r.status, r.body_str().as_str()), (200, "body{}"));
    }
    let mut c = z.client();
    c.send(b"GET /huge.bin HTTP/1.1\r\nHost: files.test\r\nRange: bytes=-100\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, &r.body[..]), (206, &pattern(HUGE)[HUGE - 100..]));
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(3), "answers took {waited:?}");
    let body = a.finish();
    assert_eq!(body.len(), HUGE);
    assert!(body == pattern(HUGE), "the paused download's bytes differ");
}

#[test]
fn a_file_replaced_mid_transfer_goes_out_as_the_version_begun() {
    let Site { z, www, .. } = &site();
    let path = www.join("huge.bin");
    fs::write(&path, pattern(HUGE)).expect("write");
    let a = Paused::start(z, "/huge.bin", 1 << 20);
    // A deploy renames the new version over the old one.
    let next = www.join("huge.bin.new");
    fs::write(&next, vec![b'n'; HUGE / 2]).expect("write");
    fs::rename(&next, &path).expect("rename");
    let body = a.finish();
    assert!(body == pattern(HUGE), "the download mixed versions");
    let r = get(z, "/huge.bin");
    assert_eq!(r.body.len(), HUGE / 2, "a new request gets the new version");
}

#[test]
fn a_file_cut_short_mid_transfer_closes_the_connection() {
    let Site { z, www, .. } = &site();
    let path = www.join("huge.bin");
    fs::write(&path, pattern(HUGE)).expect("write");
    let a = Paused::start(z, "/huge.bin", 1 << 20);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(2_000_000))
        .expect("truncate");
    let body = a.finish();
    assert!(body.len() < HUGE, "the announced length cannot be kept");
    assert!(
        wait_until(Duration::from_secs(5), || z
            .log_text()
            .contains("could not be sent whole")),
        "{}",
        z.log()
    );
}

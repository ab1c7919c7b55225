//! `static-files { compress }` on real processes: gzip and br negotiated from Accept-Encoding
//! (q-values honoured), the encoded variant's headers and ETag, and where compression does not
//! apply: ranges, small files, other types, HTTP/1.0, files over the cap, `compress #false`.

use std::fs;
use std::io::Read;
use std::process::Command;

use zentinel_tests::*;

/// Text that compresses well but not trivially: about `n` bytes of varied lines.
fn text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(
            format!(
                "function f{}(x) {{ return x * {} + {}; }}\n",
                i,
                i % 97,
                pattern_byte(i)
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

/// 700 KB: about ten turns of the event loop (each compresses a bounded piece), and quick
/// enough for the debug build's brotli (its encoder is generic, so mostly unoptimised there).
const APP_JS: usize = 700_000;
/// Over the 10 MiB cap: sent as it is.
const HUGE_TXT: usize = 11 * 1024 * 1024;

struct Site {
    dir: TempDir,
    z: Zentinel,
    app: Vec<u8>,
}

fn site() -> Site {
    let dir = TempDir::new("static-compress");
    let www = dir.0.join("www");
    let plain = dir.0.join("plain");
    fs::create_dir_all(&www).expect("mkdir");
    fs::create_dir_all(&plain).expect("mkdir");
    let app = text(APP_JS);
    fs::write(www.join("app.js"), &app).expect("write");
    fs::write(plain.join("app.js"), &app).expect("write");
    fs::write(www.join("tiny.css"), text(1000)).expect("write");
    fs::write(www.join("photo.png"), text(50_000)).expect("write");
    fs::write(www.join("huge.txt"), text(HUGE_TXT)).expect("write");
    let port = free_port();
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
    route "plain" {{
        matches {{ path-prefix "/plain"; }}
        static-files {{
            root "{plain}"
            compress #false
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
        www = www.display(),
        plain = plain.display(),
    );
    let z = Zentinel::start(&cfg);
    Site { dir, z, app }
}

/// GET (or another request line) with extra header lines, on a fresh connection.
fn fetch(z: &Zentinel, line: &str, headers: &str) -> Response {
    let mut c = z.client();
    c.send(format!("{line}\r\nHost: files.test\r\n{headers}Connection: close\r\n\r\n").as_bytes());
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

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a valid gzip stream");
    out
}

fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096)
        .read_to_end(&mut out)
        .expect("a valid brotli stream");
    out
}

/// An identity answer: the file's bytes with a Content-Length, no Content-Encoding.
fn assert_identity(r: &Response, body: &[u8], what: &str) {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    assert_eq!(r.header("content-encoding"), None, "{what}");
    assert_eq!(
        r.header("content-length"),
        Some(body.len().to_string().as_str()),
        "{what}"
    );
    assert!(r.body == body, "{what}: body differs");
}

#[test]
fn gzip_and_br_are_negotiated_with_q_values() {
    let Site { z, app, .. } = &site();
    let plain = get_ae(z, "/app.js", "identity");
    assert_identity(&plain, app, "identity only");
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    let file_tag = plain.header("etag").expect("etag").to_owned();

    let r = get_ae(z, "/app.js", "gzip, deflate");
    assert_eq!(r.header("content-encoding"), Some("gzip"), "{r:?}");
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert!(r.chunked && r.header("content-length").is_none(), "{r:?}");
    assert!(r.body.len() < app.len() / 3, "gzip: {} bytes", r.body.len());
    assert!(gunzip(&r.body) == *app, "gzip round trip");
    let gz_tag = r.header("etag").expect("etag").to_owned();
    assert!(gz_tag.ends_with("-gz\"") && gz_tag != file_tag, "{gz_tag}");

    let r = get_ae(z, "/app.js", "gzip, deflate, br");
    assert_eq!(r.header("content-encoding"), Some("br"), "{r:?}");
    assert!(r.body.len() < app.len() / 3, "br: {} bytes", r.body.len());
    assert!(unbrotli(&r.body) == *app, "br round trip");
    assert!(r.header("etag").is_some_and(|t| t.ends_with("-br\"")));

    // q-values: the higher wins, q=0 refuses, `*` stands for the codings not named.
    let coding = |ae: &str| {
        get_ae(z, "/app.js", ae)
            .header("content-encoding")
            .map(str::to_owned)
    };
    assert_eq!(coding("br;q=0.4, gzip;q=0.8").as_deref(), Some("gzip"));
    assert_eq!(coding("br;q=0, gzip").as_deref(), Some("gzip"));
    assert_eq!(coding("gzip;q=0").as_deref(), None);
    assert_eq!(coding("*").as_deref(), Some("br"));
    assert_eq!(coding("*, br;q=0").as_deref(), Some("gzip"));
    let r = fetch(z, "GET /app.js HTTP/1.1", "");
    assert_identity(&r, app, "no Accept-Encoding");

    // The encoded variant is validated by its own tag.
    let r = fetch(
        z,
        "GET /app.js HTTP/1.1",
        &format!("Accept-Encoding: gzip\r\nIf-None-Match: {gz_tag}\r\n"),
    );
    assert_eq!((r.status, r.header("etag")), (304, Some(gz_tag.as_str())));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    let r = fetch(
        z,
        "GET /app.js HTTP/1.1",
        &format!("If-None-Match: {gz_tag}\r\n"),
    );
    assert_eq!(
        r.status, 200,
        "the gzip tag does not validate the identity variant"
    );
}

#[test]
fn where_compression_does_not_apply() {
    let Site { z, app, dir } = &site();
    // A Range is served from the file's own bytes.
    let r = fetch(
        z,
        "GET /app.js HTTP/1.1",
        "Accept-Encoding: gzip, br\r\nRange: bytes=100-199\r\n",
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-encoding"), None);
    assert!(r.body[..] == app[100..200]);
    // Below 1 KiB, other types, HTTP/1.0 (no chunked framing), `compress #false`.
    let tiny = fs::read(dir.0.join("www/tiny.css")).expect("read");
    let r = get_ae(z, "/tiny.css", "gzip, br");
    assert_identity(&r, &tiny, "tiny file");
    assert_eq!(r.header("vary"), None);
    let png = fs::read(dir.0.join("www/photo.png")).expect("read");
    let r = get_ae(z, "/photo.png", "gzip, br");
    assert_identity(&r, &png, "image/png");
    assert_eq!(r.header("vary"), None);
    let r = fetch(z, "GET /app.js HTTP/1.0", "Accept-Encoding: gzip, br\r\n");
    assert_identity(&r, app, "HTTP/1.0");
    let r = get_ae(z, "/plain/app.js", "gzip, br");
    assert_identity(&r, app, "compress #false");
    assert_eq!(r.header("vary"), None);
    // Over the cap: as it is (by sendfile), whole.
    let r = get_ae(z, "/huge.txt", "gzip, br");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body.len(), HUGE_TXT);
}

#[test]
fn head_and_keep_alive_with_a_compressed_variant() {
    let Site { z, app, .. } = &site();
    let mut c = z.client();
    c.send(b"HEAD /app.js HTTP/1.1\r\nHost: files.test\r\nAccept-Encoding: br\r\n\r\n");
    let r = c.try_read_response(true, true).expect("HEAD");
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    // Nothing followed the head, and a compressed body ends cleanly for the next request.
    for ae in ["gzip", "br"] {
        c.send(
            format!("GET /app.js HTTP/1.1\r\nHost: files.test\r\nAccept-Encoding: {ae}\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.header("content-encoding"), Some(ae));
        let back = if ae == "gzip" {
            gunzip(&r.body)
        } else {
            unbrotli(&r.body)
        };
        assert!(back == *app, "{ae} round trip on a kept-alive connection");
    }
    let r = c.get("/tiny.css", "files.test");
    assert_eq!(r.status, 200);
}

/// A real client: curl asks for and decodes gzip (and br where built with it) itself.
#[test]
fn curl_compressed_gets_the_file() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed: skipping");
        return;
    }
    let Site { z, app, dir } = &site();
    let out = dir.0.join("curl.out");
    let curl = |extra: &[&str]| {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--compressed", "-o"])
            .arg(&out)
            .args(["-w", "%{http_code} %{size_download} %{time_total}"])
            .args(extra)
            .arg(format!("http://{}/app.js", z.addr()))
            .output()
            .expect("run curl");
        assert!(
            o.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let said = String::from_utf8_lossy(&o.stdout).into_owned();
        let got = fs::read(&out).expect("read curl output");
        assert!(got == *app, "curl {extra:?}: decoded body differs");
        said
    };
    let said = curl(&[]);
    let fields: Vec<&str> = said.split(' ').collect();
    let wire: usize = fields[1].parse().expect("size");
    assert!(wire < app.len() / 3, "{said}: compressed on the wire");
    eprintln!(
        "700 KB of text to curl --compressed: {wire} bytes on the wire in {} s",
        fields[2]
    );
    if curl_has_brotli() {
        let said = curl(&["-H", "Accept-Encoding: br"]);
        let wire: usize = said
            .split(' ')
            .nth(1)
            .and_then(|w| w.parse().ok())
            .expect("size");
        assert!(wire < app.len() / 3, "{said}: br on the wire");
        eprintln!("  asking for br only: {said}");
    }
}

fn curl_has_brotli() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("brotli"))
}

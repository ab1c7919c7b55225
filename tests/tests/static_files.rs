//! `static-files` routes on real processes: index files, MIME types, the route prefix removed
//! from the path, ranges, conditional requests, traversal refused, SPA fallback and a large
//! file streamed whole.

use std::fs;

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
    _dir: TempDir,
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
    let cfg = format!(
        r#"
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
    Site { _dir: dir, z }
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

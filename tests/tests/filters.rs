//! Upstream Zentinel's route filters (issue 17) on real processes: `headers` in both phases and
//! in route order as the backend and the client see them, `cors` with curl (the proxy answers
//! preflights itself, disallowed origins get nothing), `redirect` and `url-rewrite` with
//! prefixes, regex captures, queries and hosts, the `timeout` filter against the upstream's own
//! timeouts, and the `log` filter's lines in the worker's log, over HTTP/1.1 and HTTP/2 (h2c).

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
use zentinel_tests::curl::{curl, CurlResponse};
use zentinel_tests::*;

const FILTERS: &str = r#"
filters {
    filter "req-first" {
        type "headers"
        rename { X-Old "X-Renamed"; }
        set { X-Order "first"; X-Req-Only "1"; }
        add { X-Chain "a"; }
        remove "X-Secret"
    }
    filter "req-second" {
        type "headers"
        phase "request"
        rename { X-Renamed "X-Renamed-Twice"; }
        set { X-Order "second"; }
        add { X-Chain "b"; }
    }
    filter "resp" {
        type "headers"
        phase "response"
        rename { X-Connection-Id "X-Upstream-Conn"; }
        set { Cache-Control "no-store"; X-Resp-Only "1"; }
        remove "X-Backend"
    }
    filter "both" {
        type "headers"
        phase "both"
        set { X-Both "yes"; }
        add { X-Chain "c"; }
    }
    filter "cors-strict" {
        type "cors"
        allowed-origins "https://app.example.com" "https://*.example.org"
        allowed-methods "GET" "POST"
        allowed-headers "Content-Type" "Authorization"
        exposed-headers "X-Total-Count" "X-Page"
        allow-credentials #true
        max-age-secs 600
    }
    filter "cors-any" {
        type "cors"
        allowed-origins "*"
    }
    filter "to-https" {
        type "redirect"
        status-code 301
        scheme "https"
        hostname "secure.example.com"
        port 8443
        replace-prefix-match "/v2"
    }
    filter "moved" {
        type "redirect"
        status-code 308
        replace-prefix-match "/new"
    }
    filter "by-id" {
        type "redirect"
        status-code 307
        replace-full-path "/v2/posts/$2?user=${id}"
    }
    filter "see-other" {
        type "redirect"
        status-code 303
        scheme "https"
        hostname "other.example"
        replace-full-path "/landing"
    }
    filter "rewrite-full" {
        type "url-rewrite"
        hostname "internal.example"
        replace-full-path "/headers"
    }
    filter "rewrite-prefix" {
        type "url-rewrite"
        replace-prefix-match "/modern"
    }
    filter "rewrite-capture" {
        type "url-rewrite"
        replace-full-path "/headers?item=$1"
    }
    filter "fast-upstream" {
        type "timeout"
        upstream-timeout-secs 1
    }
    filter "fast-connect" {
        type "timeout"
        connect-timeout-secs 1
    }
    filter "log-info" {
        type "log"
    }
    filter "log-warn" {
        type "log"
        level "warn"
        log-request #false
    }
    filter "log-debug" {
        type "log"
        level "debug"
    }
}
"#;

const ROUTES: &str = r#"
    route "headers" {
        matches { path "/headers"; }
        upstream "b"
        filters "req-first" "req-second" "resp" "both"
    }
    route "cors" {
        matches { path-prefix "/api"; }
        upstream "b"
        filters "cors-strict"
    }
    route "cors-any" {
        matches { path-prefix "/open"; }
        upstream "b"
        filters "cors-any"
    }
    route "to-https" {
        matches { path-prefix "/v1"; }
        upstream "b"
        filters "to-https"
    }
    route "moved" {
        matches { path-prefix "/old"; }
        upstream "b"
        filters "moved"
    }
    route "by-id" {
        matches { path-regex "^/users/(?P<id>[0-9]+)/posts/([0-9]+)$"; }
        upstream "b"
        filters "by-id"
    }
    route "see-other" {
        matches { path "/form"; }
        upstream "b"
        filters "see-other"
    }
    route "rewrite-full" {
        matches { path-prefix "/rw"; }
        upstream "b"
        filters "rewrite-full"
    }
    route "rewrite-prefix" {
        matches { path-prefix "/legacy"; }
        upstream "b"
        filters "rewrite-prefix"
    }
    route "rewrite-capture" {
        matches { path-regex "^/items/([0-9]+)$"; }
        upstream "b"
        filters "rewrite-capture"
    }
    route "slow-plain" {
        priority "high"
        matches { host "plain.test"; path-prefix "/delay"; }
        upstream "b"
    }
    route "slow" {
        matches { path-prefix "/delay"; }
        upstream "b"
        filters "fast-upstream"
    }
    route "connect-plain" {
        priority "high"
        matches { host "plain.test"; path-prefix "/connect"; }
        upstream "stuck"
    }
    route "connect" {
        matches { path-prefix "/connect"; }
        upstream "stuck"
        filters "fast-connect"
    }
    route "logged" {
        matches { path-prefix "/logged"; }
        upstream "b"
        filters "log-info" "log-warn" "log-debug"
    }
    route "rest" {
        upstream "b"
    }
"#;

/// A TCP listener that never completes a handshake: its accept queue (backlog 0) is filled,
/// so the kernel drops every further SYN and a connect hangs until its timeout.
struct Unanswering {
    addr: SocketAddr,
    _listener: OwnedFd,
    _queued: Vec<TcpStream>,
}

impl Unanswering {
    fn new() -> Unanswering {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        socket::bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind");
        socket::listen(&fd, Backlog::new(0).expect("backlog 0")).expect("listen");
        let bound: SockaddrIn = socket::getsockname(fd.as_raw_fd()).expect("getsockname");
        let addr = SocketAddr::from(([127, 0, 0, 1], bound.port()));
        let mut queued = Vec::new();
        // Fill the queue: connect until a connect is left unanswered.
        let full = wait_until(
            Duration::from_secs(10),
            || match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => {
                    queued.push(s);
                    false
                }
                Err(_) => true,
            },
        );
        assert!(full, "the accept queue of {addr} never filled");
        Unanswering {
            addr,
            _listener: fd,
            _queued: queued,
        }
    }
}

struct Setup {
    backend: Backend,
    /// The `stuck` upstream's target, held for the test's length.
    _stuck: Unanswering,
    z: Zentinel,
}

impl Setup {
    fn start() -> Setup {
        let backend = Backend::start("filtered");
        let stuck = Unanswering::new();
        let port = free_port();
        let config = format!(
            r#"
system {{
    worker-processes 1
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
        protocol "h2"
        default-route "rest"
    }}
}}
{FILTERS}
routes {{
{ROUTES}
}}
upstreams {{
    upstream "b" {{
        target "{b}"
        timeouts {{ read-secs 5; }}
    }}
    upstream "stuck" {{
        target "{s}"
        timeouts {{ connect-secs 3; }}
    }}
}}
"#,
            b = backend.target(),
            s = stuck.addr,
        );
        let z = Zentinel::start(&config);
        Setup {
            backend,
            _stuck: stuck,
            z,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.z.addr())
    }

    /// Requests the backend served so far.
    fn backend_requests(&self) -> u64 {
        self.backend.stats().0
    }
}

/// The `/headers` echo's request line and fields (lowercased names), from a response body.
fn echoed(body: &str) -> (String, Vec<(String, String)>) {
    parse_echoed_head(body)
}

fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The headers case, on the HTTP version curl is told to use (`--http1.1`, or
/// `--http2-prior-knowledge`).
fn headers_case(s: &Setup, version_flag: &str, version: &str) {
    let r = curl(&[
        version_flag,
        "-H",
        "X-Old: moved",
        "-H",
        "X-Secret: s3cr3t",
        "-H",
        "X-Order: client",
        &s.url("/headers"),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, version), "{r:?}");
    let (_, seen) = echoed(&r.body);
    // Request phase, in route order: the second filter renames what the first renamed, and
    // overrides what it set; the adds keep their order (`both` last).
    assert_eq!(values(&seen, "x-renamed-twice"), ["moved"], "{seen:?}");
    assert!(values(&seen, "x-old").is_empty(), "{seen:?}");
    assert!(values(&seen, "x-renamed").is_empty(), "{seen:?}");
    assert_eq!(values(&seen, "x-order"), ["second"], "{seen:?}");
    assert_eq!(values(&seen, "x-chain"), ["a", "b", "c"], "{seen:?}");
    assert!(values(&seen, "x-secret").is_empty(), "{seen:?}");
    assert_eq!(values(&seen, "x-req-only"), ["1"], "{seen:?}");
    assert_eq!(values(&seen, "x-both"), ["yes"], "{seen:?}");
    // The response phase never reaches the backend.
    assert!(values(&seen, "x-resp-only").is_empty(), "{seen:?}");
    assert!(values(&seen, "cache-control").is_empty(), "{seen:?}");

    // Response phase: `resp` and `both`, and nothing of the request-only filters.
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    assert_eq!(r.header("x-resp-only"), Some("1"), "{r:?}");
    assert_eq!(r.header("x-both"), Some("yes"), "{r:?}");
    assert_eq!(r.header_all("x-chain"), ["c"], "{r:?}");
    assert_eq!(r.header("x-backend"), None, "{r:?}");
    assert_eq!(r.header("x-connection-id"), None, "{r:?}");
    assert!(r.header("x-upstream-conn").is_some(), "{r:?}");
    assert_eq!(r.header("x-req-only"), None, "{r:?}");
    assert_eq!(r.header("x-order"), None, "{r:?}");
}

#[test]
fn headers_filters_apply_in_route_order_on_both_phases() {
    let s = Setup::start();
    headers_case(&s, "--http1.1", "1.1");
    headers_case(&s, "--http2-prior-knowledge", "2");
    // A route without the filters is untouched.
    let r = curl(&["-H", "X-Secret: kept", &s.url("/other")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("filtered"), "{r:?}");
    assert_eq!(r.header("cache-control"), None, "{r:?}");
}

fn preflight(s: &Setup, version_flag: &str, origin: &str, headers: Option<&str>) -> CurlResponse {
    let url = s.url("/api/items");
    let origin = format!("Origin: {origin}");
    let mut args = vec![
        version_flag,
        "-X",
        "OPTIONS",
        "-H",
        &origin,
        "-H",
        "Access-Control-Request-Method: POST",
    ];
    let requested;
    if let Some(h) = headers {
        requested = format!("Access-Control-Request-Headers: {h}");
        args.extend(["-H", &requested]);
    }
    args.push(&url);
    curl(&args)
}

/// No `Access-Control-*` field at all.
fn assert_no_cors(r: &CurlResponse) {
    assert!(
        r.names_starting_with("access-control-").is_empty(),
        "CORS fields for a disallowed origin: {r:?}"
    );
}

fn cors_case(s: &Setup, version_flag: &str, version: &str) {
    // A preflight from an allowed origin: answered by the proxy, never seen by the backend.
    let before = s.backend_requests();
    let r = preflight(s, version_flag, "https://app.example.com", Some("X-Custom"));
    assert_eq!((r.status, r.version.as_str()), (204, version), "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    // The configured list, not the requested header.
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Content-Type, Authorization")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    let vary = r.header_all("vary").join(", ").to_ascii_lowercase();
    assert!(vary.contains("origin"), "{r:?}");
    assert_eq!(r.body, "", "{r:?}");
    assert_eq!(
        s.backend_requests(),
        before,
        "the backend saw the preflight"
    );

    // The actual request from an allowed origin (a wildcard pattern's): proxied, with the
    // origin, Vary and the exposed headers.
    let r = curl(&[
        version_flag,
        "-H",
        "Origin: https://shop.eu.example.org",
        &s.url("/api/items"),
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, version), "{r:?}");
    assert_eq!(r.body, "backend=filtered path=/api/items\n");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.eu.example.org"),
        "{r:?}"
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Total-Count, X-Page")
    );
    assert_eq!(r.header_all("vary"), ["Origin"], "{r:?}");
    assert_eq!(
        s.backend_requests(),
        before + 1,
        "the actual request is proxied"
    );

    // Only preflights are answered by the proxy: an OPTIONS without
    // Access-Control-Request-Method goes to the backend, and gets the CORS fields.
    let r = curl(&[
        version_flag,
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example.com",
        &s.url("/api/items"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "backend=filtered path=/api/items\n");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(s.backend_requests(), before + 2);
}

#[test]
fn cors_preflights_are_answered_by_the_proxy_for_allowed_origins_only() {
    let s = Setup::start();
    cors_case(&s, "--http1.1", "1.1");
    cors_case(&s, "--http2-prior-knowledge", "2");

    // Disallowed origins, including near misses of the pattern: no CORS field at all, and a
    // preflight goes on to the backend (which answers it like any request).
    for origin in [
        "https://evil.example.com",
        "http://app.example.com",
        "https://example.org",
        "https://a.example.org:8443",
    ] {
        let before = s.backend_requests();
        let r = preflight(&s, "--http1.1", origin, Some("X-Custom"));
        assert_eq!(r.status, 200, "{origin}: {r:?}");
        assert_no_cors(&r);
        assert_eq!(s.backend_requests(), before + 1, "{origin}");
        let r = curl(&["-H", &format!("Origin: {origin}"), &s.url("/api/items")]);
        assert_eq!(r.status, 200, "{origin}: {r:?}");
        assert_no_cors(&r);
        // The answer still depends on the origin: a cache must not reuse it for another.
        assert_eq!(r.header_all("vary"), ["Origin"], "{origin}: {r:?}");
    }
    // No Origin at all: not a CORS request.
    let r = curl(&[&s.url("/api/items")]);
    assert_no_cors(&r);
    assert_eq!(r.header_all("vary"), ["Origin"], "{r:?}");

    // `allowed-origins "*"`: any origin, echoed (so that credentials could work), and with no
    // `allowed-headers` list the requested headers are echoed, as upstream.
    let before = s.backend_requests();
    let r = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://anyone.test",
        "-H",
        "Access-Control-Request-Method: PUT",
        "-H",
        "Access-Control-Request-Headers: X-Custom, Content-Type",
        &s.url("/open/thing"),
    ]);
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://anyone.test")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, PUT, DELETE, OPTIONS, HEAD, PATCH"),
        "upstream's default methods"
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("X-Custom, Content-Type")
    );
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(r.header("access-control-max-age"), Some("86400"));
    assert_eq!(s.backend_requests(), before);
    let r = curl(&["-H", "Origin: null", &s.url("/open/thing")]);
    assert_eq!(r.header("access-control-allow-origin"), Some("null"));
    assert_eq!(r.header("access-control-expose-headers"), None);
}

/// A preflight's body is never read: the connection closes after the answer, so the body can
/// never be taken for a second request.
#[test]
fn a_preflight_body_is_not_read_as_the_next_request() {
    let s = Setup::start();
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut c = s.z.client();
    c.send(
        format!(
            "OPTIONS /api/x HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example.com\r\n\
             Access-Control-Request-Method: POST\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    );
    let r = c.read_response();
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.connection_has("close"), "{r:?}");
    assert!(
        c.server_closed_within(Duration::from_secs(5)),
        "the connection stayed open after a preflight with a body"
    );
    assert_eq!(s.backend_requests(), 0, "the body reached the backend");
}

#[test]
fn redirects_build_the_location_from_the_request() {
    let s = Setup::start();
    let port = s.z.addr().port();
    let before = s.backend_requests();
    for (path, host, status, location) in [
        // Scheme, host and port replaced, the prefix too, the query kept.
        (
            "/v1/users/7?expand=1&x=%20",
            None,
            301,
            "https://secure.example.com:8443/v2/users/7?expand=1&x=%20".to_owned(),
        ),
        // Same scheme and host: the client's port is kept (upstream drops it).
        (
            "/old/a/b?q=1",
            Some("www.test"),
            308,
            format!("http://www.test:{port}/new/a/b?q=1"),
        ),
        (
            "/old",
            Some("www.test"),
            308,
            format!("http://www.test:{port}/new/"),
        ),
        // Captures of the route's path-regex; the request's query follows the new one.
        (
            "/users/7/posts/42?ref=mail",
            Some("blog.test"),
            307,
            format!("http://blog.test:{port}/v2/posts/42?user=7&ref=mail"),
        ),
        // Another scheme and host: the scheme's own port.
        (
            "/form",
            Some("www.test"),
            303,
            "https://other.example/landing".to_owned(),
        ),
    ] {
        let mut args = vec!["--http1.1".to_owned()];
        if let Some(h) = host {
            args.extend(["-H".to_owned(), format!("Host: {h}:{port}")]);
        }
        args.push(s.url(path));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&args);
        assert_eq!(r.status, status, "{path}: {r:?}");
        assert_eq!(r.header("location"), Some(location.as_str()), "{path}");
        assert_eq!(r.header("content-length"), Some("0"), "{path}");
    }
    // Over HTTP/2 too.
    let r = curl(&["--http2-prior-knowledge", &s.url("/v1/x")]);
    assert_eq!((r.status, r.version.as_str()), (301, "2"), "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("https://secure.example.com:8443/v2/x")
    );
    assert_eq!(
        s.backend_requests(),
        before,
        "a redirect reached the backend"
    );
}

#[test]
fn url_rewrites_change_what_the_backend_sees() {
    let s = Setup::start();
    // Full path and host; the query kept.
    let r = curl(&["-H", "Host: front.test", &s.url("/rw/anything?k=v&x=1")]);
    assert_eq!(r.status, 200, "{r:?}");
    let (line, seen) = echoed(&r.body);
    assert_eq!(line, "GET /headers?k=v&x=1 HTTP/1.1", "{}", r.body);
    assert_eq!(values(&seen, "host"), ["internal.example"], "{seen:?}");
    // The client's host is still what the forwarding fields report.
    assert_eq!(
        values(&seen, "x-forwarded-host"),
        ["front.test"],
        "{seen:?}"
    );

    // The route's prefix replaced, the rest of the path kept; Host untouched.
    let r = curl(&["-H", "Host: front.test", &s.url("/legacy/a/b?x=1")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "backend=filtered path=/modern/a/b\n");

    // A capture of the route's path-regex, the request's query after the new one.
    let r = curl(&["-H", "Host: front.test", &s.url("/items/42?k=v")]);
    let (line, seen) = echoed(&r.body);
    assert_eq!(line, "GET /headers?item=42&k=v HTTP/1.1", "{}", r.body);
    assert_eq!(values(&seen, "host"), ["front.test"], "{seen:?}");

    // Over HTTP/2 the backend sees the same.
    let r = curl(&["--http2-prior-knowledge", &s.url("/rw/x?h2=1")]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    let (line, seen) = echoed(&r.body);
    assert_eq!(line, "GET /headers?h2=1 HTTP/1.1", "{}", r.body);
    assert_eq!(values(&seen, "host"), ["internal.example"], "{seen:?}");
}

/// Time one curl exchange.
fn timed(args: &[&str]) -> (CurlResponse, Duration) {
    let started = Instant::now();
    let r = curl(args);
    (r, started.elapsed())
}

#[test]
fn timeout_filters_override_the_upstreams_timeouts() {
    let s = Setup::start();
    // The upstream reads for 5 s: a 3 s answer comes through on the route without the filter.
    let (r, took) = timed(&["-H", "Host: plain.test", &s.url("/delay/3000")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    // The filter's 1 s: 504, well before the backend answers.
    let (r, took) = timed(&[&s.url("/delay/3000")]);
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "504 after {took:?}, expected about the filter's 1 s"
    );
    // Within the filter's timeout the backend answers.
    let r = curl(&[&s.url("/delay/10")]);
    assert_eq!(r.status, 200, "{r:?}");

    // A target that never completes the handshake: the upstream's own connect timeout (3 s)
    // without the filter, the filter's 1 s with it.
    let (plain, plain_took) = timed(&["-H", "Host: plain.test", &s.url("/connect")]);
    let (fast, fast_took) = timed(&[&s.url("/connect")]);
    assert!(plain.status >= 500, "{plain:?}");
    assert_eq!(fast.status, plain.status, "{fast:?}");
    assert!(
        plain_took >= Duration::from_millis(2900),
        "the upstream's connect-secs 3 gave up after {plain_took:?}"
    );
    assert!(
        fast_took >= Duration::from_millis(900) && fast_took < Duration::from_millis(2500),
        "the filter's connect-timeout-secs 1 gave up after {fast_took:?}"
    );
}

#[test]
fn log_filters_write_their_lines_at_their_level() {
    let s = Setup::start();
    let r = curl(&["-A", "filter-test-agent", &s.url("/logged/a?q=1")]);
    assert_eq!(r.status, 200, "{r:?}");
    let trace_id = r
        .header("x-correlation-id")
        .unwrap_or_else(|| panic!("no trace id: {r:?}"))
        .to_owned();
    let lines = || -> Vec<String> {
        s.z.log_text()
            .lines()
            .filter(|l| l.contains("log filter:") && l.contains(&trace_id))
            .map(str::to_owned)
            .collect()
    };
    // The info filter's request and response lines, and the warn filter's response line.
    assert!(
        wait_until(Duration::from_secs(5), || lines().len() >= 3),
        "{:?}\n{}",
        lines(),
        s.z.log()
    );
    let lines = lines();
    let find = |filter: &str, what: &str| -> Option<&String> {
        lines
            .iter()
            .find(|l| l.contains(&format!("filter=\"{filter}\"")) && l.contains(what))
    };
    let request = find("log-info", "log filter: request").expect("the info request line");
    assert!(request.contains(" INFO "), "{request}");
    for part in [
        "method=\"GET\"",
        "path=\"/logged/a\"",
        "client=127.0.0.1",
        "user_agent=\"filter-test-agent\"",
    ] {
        assert!(request.contains(part), "{part} missing: {request}");
    }
    let response = find("log-info", "log filter: response").expect("the info response line");
    assert!(response.contains(" INFO "), "{response}");
    assert!(response.contains("status=200"), "{response}");
    assert!(response.contains("path=\"/logged/a\""), "{response}");
    let warn = find("log-warn", "log filter: response").expect("the warn response line");
    assert!(warn.contains(" WARN "), "{warn}");
    // `log-request #false`, and the debug filter under the process's info level: no line.
    assert!(
        find("log-warn", "log filter: request").is_none(),
        "{lines:?}"
    );
    assert!(find("log-debug", "log filter").is_none(), "{lines:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");
}

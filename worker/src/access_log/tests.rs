use std::time::UNIX_EPOCH;

use super::format::write_rfc3339_millis;
use super::*;

fn entry() -> Entry {
    let mut e = Entry::unparsed(Instant::now());
    // 2026-11-27T03:58:35.042Z
    e.wall = UNIX_EPOCH + Duration::from_millis(1_795_751_915_042);
    e.method = "GET".to_owned();
    e.target = "/a b\"\n?x=1".to_owned();
    e.protocol = "HTTP/1.1";
    e.user_agent = b"curl/8".to_vec();
    e.status = 200;
    e.bytes = 123;
    e.head_bytes = 100;
    e.trace_id = "tr4ce".to_owned();
    e
}

fn ctx() -> LineContext<'static> {
    LineContext {
        peer: "10.1.2.3:4567".parse().unwrap(),
        listener: "http",
        worker_id: 1,
        duration: Duration::from_millis(1500),
        instance_id: "abc-123",
    }
}

fn render(format: &str) -> String {
    render_entry(format, true, &AccessLogFields::default(), &entry())
}

fn render_entry(format: &str, trace_id: bool, fields: &AccessLogFields, e: &Entry) -> String {
    let mut out = Vec::new();
    match Format::parse(format, trace_id).unwrap() {
        Format::Json => json::render(e, &ctx(), fields, trace_id, &mut out),
        Format::Template(t) => t.render(e, &ctx(), &mut out),
    }
    String::from_utf8(out).unwrap()
}

fn log_with(sample_per_million: u32, errors_always: bool) -> AccessLog {
    let mut config = AccessLogConfig::with_file("/dev/null".to_owned());
    config.sample_per_million = sample_per_million;
    config.sample_errors_always = errors_always;
    AccessLog::new(&config).unwrap()
}

#[test]
fn combined_is_upstreams_line_with_trace_id_and_duration() {
    let want = "10.1.2.3 - - [27/Nov/2026:03:58:35 +0000] \"GET /a b\\x22\\x0A?x=1 HTTP/1.1\" 200 23 \"-\" \"curl/8\" tr4ce 1500ms\n";
    assert_eq!(render("combined"), want);
    // Upstream's other spellings, any case.
    assert_eq!(render("common"), want);
    assert_eq!(render("CLF"), want);
    assert_eq!(
        render_entry("combined", false, &AccessLogFields::default(), &entry()),
        want.replace("tr4ce", "-")
    );
}

#[test]
fn custom_template_with_braces() {
    assert_eq!(
        render("${status}x $duration_ms $request_time $upstream $worker_id $time_iso8601 $bytes $body_bytes_sent"),
        "200x 1500 1.500 - 1 2026-11-27T03:58:35+00:00 123 23\n"
    );
}

#[test]
fn json_has_upstreams_keys_and_leaves_out_what_is_absent() {
    let line = render("json");
    assert_eq!(
        line,
        "{\"timestamp\":\"2026-11-27T03:58:35.042+00:00\",\"trace_id\":\"tr4ce\",\"method\":\"GET\",\
         \"path\":\"/a b\\\"\\n\",\"query\":\"x=1\",\"status\":200,\"duration_ms\":1500,\
         \"client_ip\":\"10.1.2.3\",\"user_agent\":\"curl/8\",\"body_bytes_sent\":23,\
         \"connection_reused\":false,\"rate_limit_hit\":false,\"instance_id\":\"abc-123\"}\n"
    );
    let mut e = entry();
    e.target = "/p".to_owned();
    e.status = 429;
    e.referer = b"http://r/\xff".to_vec();
    e.upstream = Some("127.0.0.1:9".parse().unwrap());
    e.connection_reused = true;
    e.route = "api".to_owned();
    e.upstream_name = "backend".to_owned();
    let line = render_entry("json", true, &AccessLogFields::default(), &e);
    for part in [
        "\"path\":\"/p\",\"status\":429",
        "\"referer\":\"http://r/\u{fffd}\"",
        "\"upstream_addr\":\"127.0.0.1:9\",\"connection_reused\":true,\"rate_limit_hit\":true",
        "\"route_id\":\"api\",\"upstream\":\"backend\",\"instance_id\":\"abc-123\"}",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    assert!(!line.contains("query"), "{line}");
}

#[test]
fn json_fields_turned_off_are_absent() {
    let fields = AccessLogFields {
        timestamp: false,
        user_agent: false,
        latency_ms: false,
        query: false,
        client_ip: false,
        ..AccessLogFields::default()
    };
    let line = render_entry("json", true, &fields, &entry());
    assert!(line.starts_with("{\"trace_id\":\"tr4ce\","), "{line}");
    for key in [
        "timestamp",
        "user_agent",
        "duration_ms",
        "query",
        "client_ip",
    ] {
        assert!(!line.contains(&format!("\"{key}\"")), "{key} in {line}");
    }
    // include-trace-id #false drops it too.
    let line = render_entry("json", false, &AccessLogFields::default(), &entry());
    assert!(!line.contains("trace_id"), "{line}");
}

#[test]
fn unknown_names_are_json_as_upstream_and_templates_are_ours() {
    assert_eq!(Format::parse("custom", true), Ok(Format::Json));
    assert!(Format::is_unknown_name("custom"));
    assert!(!Format::is_unknown_name("JSON"));
    assert!(!Format::is_unknown_name("Combined"));
    assert!(!Format::is_unknown_name("$status"));
    assert!(matches!(
        Format::parse("$status", true),
        Ok(Format::Template(_))
    ));
}

#[test]
fn refused_heads_show_their_request_line() {
    let e = Entry::from_raw_head(Instant::now(), b"GET /x\"y HTTP/1.1\r\nHost");
    assert_eq!(
        (e.method.as_str(), e.target.as_str(), e.protocol),
        ("GET", "/x\"y", "HTTP/1.1")
    );
    let e = Entry::from_raw_head(Instant::now(), b"\xffgarbage");
    assert_eq!(
        (e.method.as_str(), e.target.as_str(), e.protocol),
        ("\u{fffd}garbage", "-", "-")
    );
    let long = vec![b'a'; 5000];
    let e = Entry::from_raw_head(Instant::now(), &long);
    assert_eq!(e.method.len(), MAX_RAW_LINE);
}

#[test]
fn unknown_variable_is_named() {
    let err = Template::parse("$remote_addr $nope").unwrap_err();
    assert!(err.contains("`$nope`"), "{err}");
    assert!(Template::parse("a $").is_err());
    assert!(Template::parse("${status").is_err());
    assert!(Template::parse("a\nb").is_err());
}

#[test]
fn leap_and_epoch_dates() {
    let mut out = Vec::new();
    write_time(&mut out, UNIX_EPOCH, true);
    write_time(
        &mut out,
        UNIX_EPOCH + Duration::from_secs(951_782_400),
        false,
    ); // 2000-02-29
    write_rfc3339_millis(&mut out, UNIX_EPOCH + Duration::from_millis(7));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "1970-01-01T00:00:00+00:0029/Feb/2000:00:00:00 +00001970-01-01T00:00:00.007+00:00"
    );
}

#[test]
fn sampling_keeps_errors_and_draws_the_rest() {
    let none = log_with(0, true);
    assert!(!none.sampled(200) && !none.sampled(304));
    assert!(none.sampled(404) && none.sampled(499) && none.sampled(503));
    let strict = log_with(0, false);
    assert!(!strict.sampled(500));
    let all = log_with(SAMPLE_ALL, false);
    assert!((0..1000).all(|_| all.sampled(200)));
    // 10% of 20 000 draws: mean 2000, sd 42; 1800..2200 is beyond 4.7 sd either way.
    let tenth = log_with(100_000, true);
    let kept = (0..20_000).filter(|_| tenth.sampled(200)).count();
    assert!((1800..2200).contains(&kept), "{kept}");
}

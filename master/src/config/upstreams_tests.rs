//! The `upstreams` section in upstream Zentinel's vocabulary: target forms, every
//! load-balancing name and alias, sticky sessions, connection-pool and timeouts spellings, and
//! a located error for everything else.

use super::*;
use zentinel_protocol::config::*;

const LISTENER: &str = "listeners {\n    listener \"http\" { address \"127.0.0.1:8080\"; }\n}\n";

/// A document whose upstream "u" has `body` as its block. `body` starts on line 6.
fn doc(body: &str) -> String {
    format!("{LISTENER}upstreams {{\n    upstream \"u\" {{\n{body}\n    }}\n}}\n")
}

fn parse(body: &str) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
    parse_full_config(&doc(body), "test.kdl")
}

fn upstream(body: &str) -> UpstreamConfig {
    match parse(body) {
        Ok(c) => c.proxy.upstreams.into_iter().next().expect("one upstream"),
        Err(d) => panic!("{}", messages(&d)),
    }
}

fn messages(diagnostics: &[ConfigDiagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The single error of `body`, as `line:column message`.
#[track_caller]
fn error(body: &str) -> String {
    match parse(body) {
        Ok(_) => panic!("expected an error for:\n{body}"),
        Err(d) => {
            assert_eq!(d.len(), 1, "{}", messages(&d));
            format!("{}:{} {}", d[0].line, d[0].column, d[0].message)
        }
    }
}

#[track_caller]
fn assert_error(body: &str, at: &str, needle: &str) {
    let e = error(body);
    assert!(
        e.starts_with(&format!("{at} ")) && e.contains(needle),
        "want {at} containing {needle:?}, got {e}"
    );
}

const T: &str = "        target \"127.0.0.1:9001\"\n";

#[test]
fn every_load_balancing_name_and_alias() {
    use LoadBalancing::*;
    let table: &[(&str, LoadBalancing)] = &[
        ("round_robin", RoundRobin),
        ("roundrobin", RoundRobin),
        ("round-robin", RoundRobin),
        ("ROUND_ROBIN", RoundRobin),
        ("weighted", Weighted),
        ("weighted_round_robin", Weighted),
        ("weighted-round-robin", Weighted),
        ("least_connections", LeastConnections),
        ("leastconnections", LeastConnections),
        ("least-connections", LeastConnections),
        ("Least_Connections", LeastConnections),
        ("weighted_least_connections", WeightedLeastConnections),
        ("weighted_least_conn", WeightedLeastConnections),
        ("weighted-least-connections", WeightedLeastConnections),
        ("wlc", WeightedLeastConnections),
        ("random", Random),
        ("power_of_two_choices", PowerOfTwoChoices),
        ("power-of-two-choices", PowerOfTwoChoices),
        ("p2c", PowerOfTwoChoices),
        ("ip_hash", IpHash),
        ("iphash", IpHash),
        ("ip-hash", IpHash),
        ("consistent_hash", ConsistentHash),
        ("consistenthash", ConsistentHash),
        ("consistent-hash", ConsistentHash),
        ("maglev", Maglev),
        ("MAGLEV", Maglev),
        ("peak_ewma", PeakEwma),
        ("peakewma", PeakEwma),
        ("peak-ewma", PeakEwma),
        ("ewma", PeakEwma),
        ("sticky", Sticky),
        ("sticky_session", Sticky),
        ("stickysession", Sticky),
        ("sticky-session", Sticky),
    ];
    for (name, want) in table {
        let u = upstream(&format!("{T}        load-balancing \"{name}\""));
        assert_eq!(u.load_balancing, *want, "{name}");
        assert_eq!(u.sticky.is_some(), *want == Sticky, "{name}");
    }
}

#[test]
fn unknown_and_unsupported_algorithms_are_located_errors() {
    for name in [
        "least_tokens_queued",
        "least_tokens",
        "adaptive",
        "locality_aware",
        "locality",
        "deterministic_subset",
        "subset",
    ] {
        assert_error(
            &format!("{T}        load-balancing \"{name}\""),
            "7:24",
            "is not supported yet (accepted: round_robin",
        );
    }
    assert_error(
        &format!("{T}        load-balancing \"round_robbin\""),
        "7:24",
        "unknown load-balancing \"round_robbin\" (did you mean `round_robin`?): expected one of \
         round_robin, weighted",
    );
    assert_error(
        &format!("{T}        load-balancing \"fastest\""),
        "7:24",
        "sticky; `-` may replace `_`",
    );
    assert_error(
        &format!("{T}        load-balancing 1"),
        "7:24",
        "expected a string",
    );
    assert_error(
        &format!("{T}        load-balancing \"random\" {{ cookie-name \"x\"; }}"),
        "7:35",
        "does not take a `{ ... }` block",
    );
}

#[test]
fn sticky_block_defaults_and_every_key() {
    let u = upstream(&format!("{T}        load-balancing \"sticky\""));
    assert_eq!(u.sticky, Some(StickySession::default()));
    let d = StickySession::default();
    assert_eq!(
        (
            d.cookie_name.as_str(),
            d.cookie_ttl_secs,
            d.cookie_path.as_str()
        ),
        ("SERVERID", 3600, "/")
    );
    assert!(d.cookie_secure);
    let u = upstream(&format!(
        "{T}        load-balancing \"sticky\" {{\n            cookie-name \"ZSESSION\"\n            \
         cookie-ttl \"1.5h\"\n            cookie-path \"/app\"\n            cookie-secure #false\n            \
         cookie-same-site \"Strict\"\n            fallback \"least-connections\"\n        }}"
    ));
    assert_eq!(
        u.sticky,
        Some(StickySession {
            cookie_name: "ZSESSION".into(),
            cookie_ttl_secs: 5400,
            cookie_path: "/app".into(),
            cookie_secure: false,
            same_site: SameSite::Strict,
            fallback: LoadBalancing::LeastConnections,
        })
    );
    for (ttl, secs) in [
        ("600", 600),
        ("\"30m\"", 1800),
        ("\"2 days\"", 172_800),
        ("\"90s\"", 90),
    ] {
        let u = upstream(&format!(
            "{T}        load-balancing \"sticky\" {{ cookie-ttl {ttl}; }}"
        ));
        assert_eq!(u.sticky.map(|s| s.cookie_ttl_secs), Some(secs), "{ttl}");
    }
}

#[test]
fn sticky_block_errors_are_located() {
    let sticky =
        |inner: &str| format!("{T}        load-balancing \"sticky\" {{\n{inner}\n        }}");
    assert_error(
        &sticky("            fallback \"sticky\""),
        "8:22",
        "cannot be sticky itself",
    );
    assert_error(
        &sticky("            fallback \"adaptive\""),
        "8:22",
        "not supported yet",
    );
    assert_error(
        &sticky("            cookie-ttl \"1 fortnight\""),
        "8:24",
        "invalid cookie-ttl",
    );
    assert_error(
        &sticky("            cookie-same-site \"sometimes\""),
        "8:30",
        "expected \"lax\", \"strict\" or \"none\"",
    );
    assert_error(
        &sticky("            cookie-name \"a b\""),
        "8:25",
        "invalid cookie name",
    );
    assert_error(
        &sticky("            cookie-path \"app\""),
        "8:25",
        "must start with `/`",
    );
    assert_error(
        &sticky("            cookie-nam \"x\""),
        "8:13",
        "unknown node `cookie-nam` in `load-balancing \"sticky\"` (did you mean `cookie-name`?)",
    );
    let config = parse(&sticky(
        "            cookie-same-site \"none\"\n            cookie-secure #false",
    ))
    .unwrap_or_else(|d| panic!("{}", messages(&d)));
    assert!(
        messages(&config.warnings).contains("browsers drop such cookies"),
        "{}",
        messages(&config.warnings)
    );
}

#[test]
fn every_target_form() {
    let u = upstream(
        "        target \"10.0.0.1:80\" weight=3\n        target address=\"10.0.0.2:80\" weight=2\n        \
         target weight=4 { address \"backend:8080\"; }\n        target { address \"[::1]:81\"; weight 5; }\n        \
         targets {\n            target \"localhost:9001\"\n            target { address \"api.internal.:443\"; }\n        }",
    );
    let got: Vec<(&str, u32)> = u
        .targets
        .iter()
        .map(|t| (t.address.as_str(), t.weight))
        .collect();
    assert_eq!(
        got,
        vec![
            ("10.0.0.1:80", 3),
            ("10.0.0.2:80", 2),
            ("backend:8080", 4),
            ("[::1]:81", 5),
            ("localhost:9001", 1),
            ("api.internal.:443", 1),
        ]
    );
    // The shorthand: one target, weight 1.
    let u = upstream("        address \"backend:80\"");
    assert_eq!(
        u.targets,
        vec![UpstreamTarget {
            address: "backend:80".into(),
            weight: 1
        }]
    );
}

#[test]
fn target_errors_are_located() {
    assert_error(
        "        target \"backend\"",
        "6:16",
        "invalid target address \"backend\": missing `:port`; expected IP:port, [IPv6]:port or \
         hostname:port",
    );
    assert_error("        target \"backend:0\"", "6:16", "port 0");
    assert_error("        target \"backend:http\"", "6:16", "from 1 to 65535");
    assert_error(
        "        target \"back end:80\"",
        "6:16",
        "invalid host name",
    );
    assert_error(
        "        target \"300.1.1.1:80\"",
        "6:16",
        "invalid IPv4 address",
    );
    assert_error("        target \"::1:80\"", "6:16", "invalid IPv6 address");
    assert_error(
        "        target \"a:80\"\n        target \"A:80\"",
        "7:16",
        "duplicate target \"A:80\" (first at line 6)",
    );
    assert_error(
        "        target \"a:80\" max-requests=5",
        "6:23",
        "unknown property `max-requests`",
    );
    assert_error(
        "        target \"a:80\" address=\"b:80\"",
        "6:16",
        "the address is given twice",
    );
    assert_error("        target { weight 2; }", "6:9", "missing address");
    assert_error(
        "        target { address \"a:80\"; port 80; }",
        "6:34",
        "unknown node `port` in `target`",
    );
    assert_error(
        "        target \"a:80\"\n        address \"b:80\"",
        "7:9",
        "`address` is the shorthand for an upstream with a single target",
    );
    assert_error(
        "        targets { server \"a:80\"; }",
        "6:19",
        "unknown node `server` in `targets`",
    );
    assert_error(
        "        load-balancing \"random\"",
        "5:5",
        "has no `target`",
    );
}

#[test]
fn connection_pool_spellings() {
    let u = upstream(&format!(
        "{T}        connection-pool {{ max-connections 100; max-idle 20; idle-timeout 30; max-lifetime 600; }}"
    ));
    assert_eq!(
        u.pool,
        ConnectionPool {
            max_connections: Some(100),
            max_idle: 20,
            idle_timeout_secs: 30,
            max_lifetime_secs: Some(600),
        }
    );
    let u = upstream(&format!(
        "{T}        connection-pool {{ idle-timeout-secs 45; max-lifetime-secs 60; }}"
    ));
    assert_eq!(
        (u.pool.idle_timeout_secs, u.pool.max_lifetime_secs),
        (45, Some(60))
    );
    assert_eq!(u.pool.max_connections, None, "no cap unless written");
    assert_error(
        &format!("{T}        connection-pool {{\n            idle-timeout 30\n            idle-timeout-secs 30\n        }}"),
        "9:13",
        "duplicate `idle-timeout` (first set at line 8)",
    );
    assert_error(
        &format!("{T}        connection-pool {{ max-connections 0; }}"),
        "7:43",
        "must be at least 1",
    );
    assert_error(
        &format!("{T}        connection-pool {{ max-conections 10; }}"),
        "7:27",
        "did you mean `max-connections`?",
    );
}

#[test]
fn timeout_spellings() {
    let u = upstream(&format!(
        "{T}        timeouts {{ connect 3; request 60; read 20; write 10; }}"
    ));
    assert_eq!(
        u.timeouts,
        UpstreamTimeouts {
            connect_secs: 3,
            read_secs: 20,
            write_secs: Some(10),
            request_secs: Some(60),
        }
    );
    let u = upstream(&format!(
        "{T}        timeouts {{ connect-secs 4; request-secs 50; read-secs 25; write-secs 9; }}"
    ));
    assert_eq!(
        (
            u.timeouts.connect_secs,
            u.timeouts.request_secs,
            u.timeouts.read_secs,
            u.timeouts.write_secs
        ),
        (4, Some(50), 25, Some(9))
    );
    assert_eq!(upstream(T).timeouts, UpstreamTimeouts::default());
    assert_error(
        &format!(
            "{T}        timeouts {{\n            connect 3\n            connect-secs 4\n        }}"
        ),
        "9:13",
        "duplicate `connect` (first set at line 8)",
    );
    assert_error(
        &format!("{T}        timeouts {{ conect 3; }}"),
        "7:20",
        "did you mean `connect`?",
    );
    assert_error(
        &format!("{T}        timeouts {{ request \"60\"; }}"),
        "7:28",
        "expected an integer",
    );
}

#[test]
fn http_version_string_and_block_forms() {
    use UpstreamHttpVersion::*;
    assert_eq!(upstream(T).http, UpstreamHttp::default());
    assert_eq!(upstream(T).http.version, Http1);
    for (text, want) in [("\"1.1\"", Http1), ("\"2\"", Http2), ("\"auto\"", Auto)] {
        let u = upstream(&format!("{T}        http-version {text}"));
        assert_eq!(u.http.version, want, "{text}");
        assert_eq!(u.http.max_h2_streams, DEFAULT_MAX_H2_STREAMS);
    }
    // Upstream's block: min/max map onto the modes, a block naming neither is 1..2 (auto).
    for (block, want) in [
        ("min-version 2; max-version 2", Http2),
        ("min-version 2", Http2),
        ("min-version 1; max-version 2", Auto),
        ("max-version 2", Auto),
        ("max-version 1", Http1),
        ("min-version 1; max-version 1", Http1),
        ("h2-ping-interval 30", Auto),
    ] {
        let u = upstream(&format!("{T}        http-version {{ {block}; }}"));
        assert_eq!(u.http.version, want, "{block}");
    }
    let u = upstream(&format!(
        "{T}        http-version {{ min-version 2; max-version 2; h2-ping-interval 30; \
         max-h2-streams 7; }}"
    ));
    assert_eq!(
        u.http,
        UpstreamHttp {
            version: Http2,
            max_h2_streams: 7,
            h2_ping_interval_secs: 30,
        }
    );
    // The HTTP/2 settings may follow the string form.
    let u = upstream(&format!(
        "{T}        http-version \"2\" {{ max-h2-streams 3; }}"
    ));
    assert_eq!((u.http.version, u.http.max_h2_streams), (Http2, 3));
}

#[test]
fn http_version_errors_are_located_and_name_what_is_accepted() {
    assert_error(
        &format!("{T}        http-version \"3\""),
        "7:22",
        "unknown HTTP version \"3\"; accepted: \"1.1\", \"2\", \"auto\"",
    );
    assert_error(
        &format!("{T}        http-version 2"),
        "7:22",
        "write the version as a string: `http-version \"2\"`",
    );
    assert_error(
        &format!("{T}        http-version"),
        "7:9",
        "missing version",
    );
    assert_error(
        &format!("{T}        http-version {{ min-version 3; }}"),
        "7:36",
        "accepted: 1 (HTTP/1.1), 2 (HTTP/2)",
    );
    assert_error(
        &format!("{T}        http-version {{ min-version 2; max-version 1; }}"),
        "7:36",
        "`min-version` 2 is above `max-version` 1",
    );
    assert_error(
        &format!("{T}        http-version \"2\" {{ min-version 2; }}"),
        "7:28",
        "the version is given twice",
    );
    assert_error(
        &format!("{T}        http-version {{ max-h2-streams 0; }}"),
        "7:39",
        "must be at least 1",
    );
    assert_error(
        &format!("{T}        http-version {{ ping 3; }}"),
        "7:24",
        "unknown node `ping` in `http-version`",
    );
}

#[test]
fn a_tcp_listener_cannot_relay_to_an_http2_upstream() {
    let text = "listeners {\n    listener \"t\" {\n        address \"127.0.0.1:9000\"\n        \
                protocol \"tcp\"\n        upstream \"u\"\n    }\n}\nupstreams {\n    upstream \
                \"u\" {\n        target \"127.0.0.1:9001\"\n        http-version \"2\"\n    }\n}\n";
    let d = parse_full_config(text, "test.kdl").expect_err("refused");
    assert_eq!(d.len(), 1, "{}", messages(&d));
    assert_eq!((d[0].line, d[0].column), (5, 18), "{}", messages(&d));
    assert!(
        d[0].message.contains("HTTP/2 upstreams serve `http`"),
        "{}",
        messages(&d)
    );
}

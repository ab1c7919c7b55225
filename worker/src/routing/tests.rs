//! Route selection on hand-built configs and requests: host patterns, conditions, scopes,
//! defaults, and the errors a bad route is refused with.

use super::*;
use zentinel_protocol::config::*;

fn route(name: &str, matches: Vec<RouteMatch>, upstream: &str) -> RouteConfig {
    RouteConfig {
        scope: None,
        extras: None,
        name: name.into(),
        priority: PRIORITY_NORMAL,
        matches,
        action: RouteAction::Upstream(upstream.into()),
        service_type: ServiceType::Web,
        retry_policy: None,
        policies: Default::default(),
    }
}

#[derive(Default)]
struct Req {
    host: Option<String>,
    path: String,
    method: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
}

impl RouteRequest for Req {
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn method(&self) -> &str {
        &self.method
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn has_header(&self, name: &str, want: &dyn Fn(&[u8]) -> bool) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && want(v.as_bytes()))
    }
}

/// A GET of `target` (path and query) with a raw Host header.
fn req(host: Option<&str>, target: &str) -> Req {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    Req {
        host: host.map(normalize_host),
        path: path.to_owned(),
        method: "GET".to_owned(),
        query,
        headers: Vec::new(),
    }
}

impl Router {
    fn find_at(
        &self,
        default_route: Option<usize>,
        host: Option<&str>,
        target: &str,
    ) -> Option<usize> {
        self.find(0, default_route, &req(host, target))
    }
}

fn upstream(name: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: name.into(),
        targets: vec![UpstreamTarget {
            address: "127.0.0.1:1".into(),
            weight: 1,
        }],
        load_balancing: LoadBalancing::RoundRobin,
        sticky: None,
        pool: ConnectionPool::default(),
        timeouts: UpstreamTimeouts::default(),
        health_check: None,
        passive_health: Default::default(),
        circuit_breaker: None,
        tls: None,
        http: UpstreamHttp::default(),
    }
}

fn config(routes: Vec<RouteConfig>) -> ProxyConfig {
    ProxyConfig {
        system: SystemConfig::default(),
        listeners: vec![ListenerConfig {
            route_scope: None,
            max_concurrent_streams: 100,
            keepalive_max_requests: 0,
            name: "l".into(),
            address: "127.0.0.1:0".into(),
            protocol: ListenerProtocol::Http,
            backlog: DEFAULT_BACKLOG,
            request_timeout_secs: 10,
            keepalive_timeout_secs: 10,
            default_route: None,
            upstream: None,
            access_log: None,
            tls: None,
        }],
        routes,
        upstreams: vec![upstream("a"), upstream("b")],
        limits: Limits::default(),
        filters: Vec::new(),
    }
}

#[test]
fn host_exact_case_and_port() {
    let r = Router::new(&config(vec![route(
        "r",
        vec![RouteMatch::Host("Example.COM".into())],
        "a",
    )]))
    .unwrap();
    assert_eq!(r.find_at(None, Some("example.com"), "/"), Some(0));
    assert_eq!(r.find_at(None, Some("EXAMPLE.com:8080"), "/"), Some(0));
    assert_eq!(r.find_at(None, Some("www.example.com"), "/"), None);
    assert_eq!(r.find_at(None, None, "/"), None);
}

#[test]
fn host_wildcard_any_depth_not_bare() {
    let r = Router::new(&config(vec![route(
        "r",
        vec![RouteMatch::Host("*.example.com".into())],
        "a",
    )]))
    .unwrap();
    assert_eq!(r.find_at(None, Some("a.example.com"), "/"), Some(0));
    assert_eq!(r.find_at(None, Some("a.b.example.com"), "/"), Some(0));
    assert_eq!(r.find_at(None, Some("example.com"), "/"), None);
    assert_eq!(r.find_at(None, Some("badexample.com"), "/"), None);
}

#[test]
fn hosts_or_values_on_one_node_or_conditions_and() {
    let r = Router::new(&config(vec![route(
        "r",
        vec![
            RouteMatch::Host("a.test".into()),
            RouteMatch::Host("b.test".into()),
            RouteMatch::PathPrefix(vec!["/api".into(), "/v2".into()]),
        ],
        "a",
    )]))
    .unwrap();
    assert_eq!(r.find_at(None, Some("a.test"), "/api/x"), Some(0));
    assert_eq!(r.find_at(None, Some("b.test"), "/v2"), Some(0));
    assert_eq!(r.find_at(None, Some("c.test"), "/api"), None);
    assert_eq!(r.find_at(None, Some("a.test"), "/other"), None);
}

#[test]
fn exact_path_first_match_and_default() {
    let r = Router::new(&config(vec![
        route("exact", vec![RouteMatch::Path(vec!["/health".into()])], "a"),
        route(
            "prefix",
            vec![RouteMatch::PathPrefix(vec!["/".into()])],
            "b",
        ),
        route("never", vec![], "a"),
    ]))
    .unwrap();
    assert_eq!(r.find_at(None, None, "/health"), Some(0));
    assert_eq!(r.find_at(None, None, "/health/x"), Some(1));
    assert_eq!(r.find_at(None, None, "/x"), Some(1));
    let r = Router::new(&config(vec![
        route("exact", vec![RouteMatch::Path(vec!["/health".into()])], "a"),
        route("fallback", vec![RouteMatch::Host("zzz".into())], "b"),
    ]))
    .unwrap();
    let d = r.index_of("fallback");
    assert_eq!(r.find_at(d, None, "/nope"), Some(1));
    assert_eq!(r.find_at(None, None, "/nope"), None);
    assert_eq!(r.action(0), Some(&Action::Upstream(0)));
    assert_eq!(r.action(1), Some(&Action::Upstream(1)));
    let mut mapped = r.clone();
    mapped.map_upstreams(&[7, 3]);
    assert_eq!(mapped.action(0), Some(&Action::Upstream(7)));
    assert_eq!(mapped.action(1), Some(&Action::Upstream(3)));
}

#[test]
fn shadow_share_is_counted() {
    let share = |per_10000| {
        let sh = Shadow {
            pool: 0,
            per_10000,
            sample_header: None,
            timeout: std::time::Duration::from_secs(1),
            seen: std::cell::Cell::new(0),
        };
        (0..1000).filter(|_| sh.sample()).count()
    };
    assert_eq!(share(10_000), 1000);
    assert_eq!(share(1000), 100);
    assert_eq!(share(1250), 125);
    assert_eq!(share(5), 0);
    assert_eq!(share(0), 0);
}

#[test]
fn files_path_relative_to_longest_prefix() {
    let files = StaticFiles {
        root: "/srv".into(),
        index: vec!["index.html".into()],
        directory_listing: false,
        cache_control: String::new(),
        compress: false,
        fallback: None,
    };
    let r = FilesRoute {
        files,
        prefixes: vec!["/".into(), "/assets".into(), "/assets/img/".into()],
    };
    assert_eq!(r.relative("/assets/app.js"), "/app.js");
    assert_eq!(r.relative("/assets"), "");
    assert_eq!(r.relative("/assets/img/a.png"), "/a.png");
    assert_eq!(r.relative("/assetsx/a"), "/assetsx/a");
    assert_eq!(r.relative("/other"), "/other");
    let plain = FilesRoute {
        prefixes: Vec::new(),
        ..r
    };
    assert_eq!(plain.relative("/assets/app.js"), "/assets/app.js");
}

#[test]
fn prefix_on_segment_boundary() {
    let r = Router::new(&config(vec![
        route(
            "api",
            vec![RouteMatch::PathPrefix(vec!["/api".into()])],
            "a",
        ),
        route(
            "slash",
            vec![RouteMatch::PathPrefix(vec!["/s/".into()])],
            "a",
        ),
    ]))
    .unwrap();
    assert_eq!(r.find_at(None, None, "/api"), Some(0));
    assert_eq!(r.find_at(None, None, "/api/x"), Some(0));
    assert_eq!(r.find_at(None, None, "/api?x=1"), Some(0));
    assert_eq!(r.find_at(None, None, "/apix"), None);
    assert_eq!(r.find_at(None, None, "/s/x"), Some(1));
    assert_eq!(r.find_at(None, None, "/s"), None);
}

#[test]
fn method_header_query_regex_conditions() {
    let r = Router::new(&config(vec![route(
        "all",
        vec![
            RouteMatch::Method(vec!["GET".into(), "HEAD".into()]),
            RouteMatch::Header {
                name: "x-a".into(),
                value: None,
            },
            RouteMatch::Header {
                name: "X-B".into(),
                value: Some("v".into()),
            },
            RouteMatch::QueryParam {
                name: "q".into(),
                value: None,
            },
            RouteMatch::QueryParam {
                name: "a b".into(),
                value: Some("c&d".into()),
            },
            RouteMatch::PathRegex(vec!["^/v[0-9]+/".into()]),
        ],
        "a",
    )]))
    .unwrap();
    let mut ok = req(None, "/v2/x?q&a+b=c%26d");
    ok.headers = vec![("X-A".into(), "".into()), ("x-b".into(), "v".into())];
    assert_eq!(r.find(0, None, &ok), Some(0));
    ok.method = "HEAD".into();
    assert_eq!(r.find(0, None, &ok), Some(0));
    let m = |f: &dyn Fn(&mut Req)| {
        let mut q = req(None, "/v2/x?q&a+b=c%26d");
        q.headers = vec![("X-A".into(), "".into()), ("x-b".into(), "v".into())];
        f(&mut q);
        r.find(0, None, &q)
    };
    assert_eq!(m(&|q| q.method = "POST".into()), None);
    assert_eq!(m(&|q| q.method = "get".into()), None); // methods are case-sensitive
    assert_eq!(m(&|q| drop(q.headers.remove(0))), None);
    assert_eq!(m(&|q| q.headers[1].1 = "V".into()), None); // values exact
    assert_eq!(m(&|q| q.query = Some("a+b=c%26d".into())), None);
    assert_eq!(m(&|q| q.query = None), None);
    assert_eq!(m(&|q| q.query = Some("q=1&a%20b=c%26d".into())), Some(0));
    assert_eq!(m(&|q| q.path = "/x/v2/".into()), None);
}

#[test]
fn invalid_regex_is_an_error() {
    let err = Router::new(&config(vec![route(
        "r",
        vec![RouteMatch::PathRegex(vec!["(".into()])],
        "a",
    )]))
    .unwrap_err();
    assert!(matches!(err, RoutingError::InvalidRegex { .. }), "{err}");
}

#[test]
fn no_condition_matches_everything() {
    let r = Router::new(&config(vec![route("all", vec![], "b")])).unwrap();
    assert_eq!(r.find_at(None, None, "/anything"), Some(0));
}

#[test]
fn dangling_names_are_errors() {
    let err = Router::new(&config(vec![route("r", vec![], "missing")])).unwrap_err();
    assert!(matches!(err, RoutingError::UnknownUpstream { .. }));
    let mut c = config(vec![route("r", vec![], "a")]);
    c.listeners[0].default_route = Some("nope".into());
    assert!(matches!(
        Router::new(&c).unwrap_err(),
        RoutingError::UnknownDefaultRoute { .. }
    ));
}

#[test]
fn normalize() {
    assert_eq!(normalize_host("[::1]:80"), "[::1]");
    assert_eq!(normalize_host("Host:1"), "host");
    assert_eq!(normalize_host("::1"), "::1");
}

//! Route selection: the first route (in the config's evaluation order) whose conditions all
//! hold wins; otherwise the listener's default route; otherwise no route (404).
//!
//! As upstream Zentinel: the `host` conditions of a route are alternatives, and every other
//! condition must hold as well. The values written on one node are alternatives (see
//! [`RouteMatch`]): `host a, host b, path-prefix /x, method GET HEAD` means
//! `(host a OR host b) AND path-prefix /x AND (GET OR HEAD)`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use regex::Regex;

use crate::http::error_pages::ErrorStyle;
use crate::http::RetryRule;
use zentinel_protocol::config::{
    BuiltinHandler, ProxyConfig, RouteAction, RouteMatch, RoutePolicies, StaticFiles,
    StaticResponse,
};

use crate::rate_limit::Limiter;

/// Same bound as the master applies when it checks the patterns.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What a matched route does, with names already resolved to indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Index into the upstream pools (same order as `ProxyConfig.upstreams`).
    Upstream(usize),
    Static(StaticResponse),
    Builtin(BuiltinHandler),
    /// Files from a directory (shared: the route's config is not copied per request).
    Files(Arc<FilesRoute>),
}

/// A `static-files` route: its config and the `path-prefix` values removed from the request
/// path before it is looked up under the root.
#[derive(Debug, PartialEq, Eq)]
pub struct FilesRoute {
    pub files: StaticFiles,
    pub prefixes: Vec<String>,
}

impl FilesRoute {
    /// The request path relative to the root: the longest matching `path-prefix` removed
    /// (`/assets` serves `/assets/app.js` as `<root>/app.js`). Routes matched another way
    /// (`path`, `path-regex`, host only) serve the full path.
    pub fn relative<'p>(&self, path: &'p str) -> &'p str {
        self.prefixes
            .iter()
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| !p.is_empty() && prefix_matches(p, path))
            .max_by_key(|p| p.len())
            .map_or(path, |p| &path[p.len()..])
    }
}

/// What routing looks at in a request. The host is already normalized (lowercase, no port).
pub trait RouteRequest {
    fn host(&self) -> Option<&str>;
    /// Without the query string.
    fn path(&self) -> &str;
    fn method(&self) -> &str;
    /// The raw query string (after `?`, before any `#`), if any.
    fn query(&self) -> Option<&str>;
    /// Whether a field named `name` (lowercase) is present with a value accepted by `want`.
    fn has_header(&self, name: &str, want: &dyn Fn(&[u8]) -> bool) -> bool;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any subdomain depth, not the bare domain.
    Suffix(String),
}

impl HostPattern {
    /// Hosts are compared case-insensitively (RFC 9110); upstream compares them as sent.
    fn parse(p: &str) -> Self {
        let p = p.trim().to_ascii_lowercase();
        match p.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') => HostPattern::Suffix(rest.to_string()),
            _ => HostPattern::Exact(strip_port(&p).to_string()),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// One non-host condition; the values inside are alternatives.
#[derive(Debug, Clone)]
enum Condition {
    Path(Vec<String>),
    Prefix(Vec<String>),
    Regex(Vec<Regex>),
    Method(Vec<String>),
    Header { name: String, value: Option<String> },
    Query { name: String, value: Option<String> },
}

impl Condition {
    fn holds(&self, req: &dyn RouteRequest) -> bool {
        match self {
            Condition::Path(paths) => paths.iter().any(|p| p == req.path()),
            Condition::Prefix(prefixes) => prefixes.iter().any(|p| prefix_matches(p, req.path())),
            Condition::Regex(res) => res.iter().any(|r| r.is_match(req.path())),
            Condition::Method(methods) => methods.iter().any(|m| m == req.method()),
            Condition::Header { name, value } => req.has_header(name, &|v| {
                value.as_ref().is_none_or(|want| want.as_bytes() == v)
            }),
            Condition::Query { name, value } => req
                .query()
                .is_some_and(|q| query_has(q, name, value.as_deref())),
        }
    }
}

/// Upstream's segment rule: `/api` matches `/api` and `/api/x`, not `/apix`; a prefix ending
/// in `/` (or `/` itself) is a plain prefix.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Whether the query string has parameter `name` (with exactly `value`, if given), both
/// compared after form decoding (`%XX`, `+` as space).
fn query_has(query: &str, name: &str, value: Option<&str>) -> bool {
    query.split('&').filter(|p| !p.is_empty()).any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        form_decode(k) == name.as_bytes()
            && value.is_none_or(|want| form_decode(v) == want.as_bytes())
    })
}

fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: String,
    /// Index into `Router::scopes`: the namespace or service the route belongs to.
    scope: u16,
    hosts: Vec<HostPattern>,
    conditions: Vec<Condition>,
    action: Action,
    /// Shared with the exchanges of the route (one allocation per route, not per request).
    retry: Option<Arc<RetryRule>>,
    policies: RoutePolicies,
    /// The route's buckets. A generation is immutable except for these: the worker is single
    /// threaded and sessions only borrow them for one check. A reload starts with new buckets.
    limiter: Option<RefCell<Limiter>>,
    /// WebSocket upgrades may be tunnelled (see `RouteExtras::websocket`).
    websocket: bool,
    fallback: Option<Arc<Fallback>>,
    /// `Rc`: its counter is a `Cell`, and a router never leaves its worker's thread.
    shadow: Option<Rc<Shadow>>,
    errors: ErrorStyle,
}

/// A route's `shadow`, with the upstream resolved to a pool index.
#[derive(Debug, Clone)]
pub struct Shadow {
    pub pool: usize,
    pub per_10000: u32,
    /// Lowercase name, exact value.
    pub sample_header: Option<(String, String)>,
    pub timeout: std::time::Duration,
    /// Eligible requests seen by this worker: the share is taken by counting, so 10% is
    /// exactly every tenth request rather than a coin toss.
    pub seen: std::cell::Cell<u64>,
}

impl Shadow {
    /// Count one eligible request; whether it is one to mirror.
    pub fn sample(&self) -> bool {
        let n = self.seen.get();
        self.seen.set(n.wrapping_add(1));
        let p = u64::from(self.per_10000.min(10_000));
        (n + 1) * p / 10_000 > n * p / 10_000
    }
}

/// A route's `fallback`, with upstream names resolved to pool indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Pool index and `skip-if-unhealthy`, in the configured order.
    pub pools: Vec<(usize, bool)>,
    pub max_attempts: u32,
    pub on_health_failure: bool,
    pub on_connection_error: bool,
}

impl CompiledRoute {
    fn matches(&self, req: &dyn RouteRequest) -> bool {
        let host_ok = self.hosts.is_empty()
            || req
                .host()
                .is_some_and(|h| self.hosts.iter().any(|p| p.matches(h)));
        host_ok && self.conditions.iter().all(|c| c.holds(req))
    }
}

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    /// Route scopes (`RouteConfig::scope`), the top level (`None`) first.
    scopes: Vec<Option<String>>,
}

/// The scope id of a scope no route has: a listener with it matches nothing but its default
/// route.
const NO_SCOPE: u16 = u16::MAX;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("route `{route}` names unknown upstream `{upstream}`")]
    UnknownUpstream { route: String, upstream: String },
    #[error("listener `{listener}` names unknown default route `{route}`")]
    UnknownDefaultRoute { listener: String, route: String },
    #[error("route `{route}`: invalid path-regex {pattern:?}: {reason}")]
    InvalidRegex {
        route: String,
        pattern: String,
        reason: String,
    },
}

/// Lowercase and strip a `:port` (keeping `[v6]` brackets) so lookups ignore the port.
pub fn normalize_host(host: &str) -> String {
    strip_port(host.trim()).to_ascii_lowercase()
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    match h.rfind(':') {
        // A single colon is a port separator; several mean a bare IPv6 literal.
        Some(i) if h[..i].find(':').is_none() => &h[..i],
        _ => h,
    }
}

impl Router {
    pub fn new(config: &ProxyConfig) -> Result<Self, RoutingError> {
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut scopes: Vec<Option<String>> = vec![None];
        for r in &config.routes {
            let scope = match scopes.iter().position(|s| *s == r.scope) {
                Some(i) => i,
                None => {
                    scopes.push(r.scope.clone());
                    scopes.len() - 1
                }
            };
            let scope = u16::try_from(scope).unwrap_or(NO_SCOPE);
            let action = match &r.action {
                RouteAction::Upstream(name) => Action::Upstream(
                    config
                        .upstreams
                        .iter()
                        .position(|u| &u.name == name)
                        .ok_or_else(|| RoutingError::UnknownUpstream {
                            route: r.name.clone(),
                            upstream: name.clone(),
                        })?,
                ),
                RouteAction::Static(s) => Action::Static(s.clone()),
                RouteAction::Builtin(b) => Action::Builtin(*b),
                RouteAction::Files(f) => Action::Files(Arc::new(FilesRoute {
                    files: (**f).clone(),
                    prefixes: r
                        .matches
                        .iter()
                        .filter_map(|m| match m {
                            RouteMatch::PathPrefix(p) => Some(p.iter().cloned()),
                            _ => None,
                        })
                        .flatten()
                        .collect(),
                })),
            };
            let mut c = CompiledRoute {
                name: r.name.clone(),
                scope,
                hosts: Vec::new(),
                conditions: Vec::new(),
                action,
                errors: ErrorStyle {
                    service: r.service_type,
                    pages: r
                        .extras
                        .as_ref()
                        .and_then(|e| e.error_pages.clone())
                        .map(Arc::new),
                },
                retry: r.retry_policy.as_ref().map(|p| Arc::new(RetryRule::new(p))),
                policies: r.policies.clone(),
                limiter: r
                    .policies
                    .rate_limit
                    .as_ref()
                    .map(|l| RefCell::new(Limiter::new(l))),
                websocket: r.extras.as_ref().is_none_or(|e| e.websocket),
                shadow: match r.extras.as_ref().and_then(|e| e.shadow.as_ref()) {
                    None => None,
                    Some(sh) => Some(Rc::new(Shadow {
                        pool: config
                            .upstreams
                            .iter()
                            .position(|c| c.name == sh.upstream)
                            .ok_or_else(|| RoutingError::UnknownUpstream {
                                route: r.name.clone(),
                                upstream: sh.upstream.clone(),
                            })?,
                        per_10000: sh.per_10000,
                        sample_header: sh.sample_header.clone(),
                        timeout: std::time::Duration::from_millis(sh.timeout_ms),
                        seen: std::cell::Cell::new(0),
                    })),
                },
                fallback: match r.extras.as_ref().and_then(|e| e.fallback.as_ref()) {
                    None => None,
                    Some(f) => Some(Arc::new(Fallback {
                        pools: f
                            .upstreams
                            .iter()
                            .map(|u| {
                                let idx = config
                                    .upstreams
                                    .iter()
                                    .position(|c| c.name == u.name)
                                    .ok_or_else(|| RoutingError::UnknownUpstream {
                                        route: r.name.clone(),
                                        upstream: u.name.clone(),
                                    })?;
                                Ok((idx, u.skip_if_unhealthy))
                            })
                            .collect::<Result<_, RoutingError>>()?,
                        max_attempts: f.max_attempts,
                        on_health_failure: f.on_health_failure,
                        on_connection_error: f.on_connection_error,
                    })),
                },
            };
            for m in &r.matches {
                let condition = match m {
                    RouteMatch::Host(h) => {
                        c.hosts.push(HostPattern::parse(h));
                        continue;
                    }
                    RouteMatch::PathPrefix(p) => Condition::Prefix(p.clone()),
                    RouteMatch::Path(p) => Condition::Path(p.clone()),
                    RouteMatch::PathRegex(patterns) => Condition::Regex(
                        patterns
                            .iter()
                            .map(|p| compile(&r.name, p))
                            .collect::<Result<_, _>>()?,
                    ),
                    RouteMatch::Method(m) => Condition::Method(m.clone()),
                    RouteMatch::Header { name, value } => Condition::Header {
                        name: name.to_ascii_lowercase(),
                        value: value.clone(),
                    },
                    RouteMatch::QueryParam { name, value } => Condition::Query {
                        name: name.clone(),
                        value: value.clone(),
                    },
                };
                c.conditions.push(condition);
            }
            routes.push(c);
        }
        let router = Router { routes, scopes };
        for l in &config.listeners {
            if let Some(d) = &l.default_route {
                if router.index_of(d).is_none() {
                    return Err(RoutingError::UnknownDefaultRoute {
                        listener: l.name.clone(),
                        route: d.clone(),
                    });
                }
            }
        }
        Ok(router)
    }

    /// Replace every upstream action's configuration index `i` with `keys[i]` (the pool keys
    /// the upstreams were installed under). Indices without a key are left as they are.
    pub fn map_upstreams(&mut self, keys: &[usize]) {
        for r in &mut self.routes {
            if let Action::Upstream(i) = &mut r.action {
                if let Some(&k) = keys.get(*i) {
                    *i = k;
                }
            }
            if let Some(sh) = r.shadow.as_mut() {
                let sh = Rc::make_mut(sh);
                if let Some(&k) = keys.get(sh.pool) {
                    sh.pool = k;
                }
            }
            if let Some(f) = r.fallback.as_mut() {
                for (i, _) in &mut Arc::make_mut(f).pools {
                    if let Some(&k) = keys.get(*i) {
                        *i = k;
                    }
                }
            }
        }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.name == name)
    }

    /// The id of a listener's route scope (`ListenerConfig::route_scope`) for [`Router::find`].
    pub fn scope_id(&self, scope: Option<&str>) -> u16 {
        self.scopes
            .iter()
            .position(|s| s.as_deref() == scope)
            .and_then(|i| u16::try_from(i).ok())
            .unwrap_or(NO_SCOPE)
    }

    /// The first route of `scope` matching `req`, else `default_route`.
    pub fn find(
        &self,
        scope: u16,
        default_route: Option<usize>,
        req: &dyn RouteRequest,
    ) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.scope == scope && r.matches(req))
            .or(default_route)
    }

    /// The route's name (`""` for an unknown index, a bug).
    pub fn name(&self, idx: usize) -> &str {
        self.routes.get(idx).map_or("", |r| r.name.as_str())
    }

    pub fn action(&self, idx: usize) -> Option<&Action> {
        self.routes.get(idx).map(|r| &r.action)
    }

    pub fn retry_rule(&self, idx: usize) -> Option<Arc<RetryRule>> {
        self.routes.get(idx).and_then(|r| r.retry.clone())
    }

    /// The route's `policies` (defaults for an unknown index).
    pub fn policies(&self, idx: usize) -> Option<&RoutePolicies> {
        self.routes.get(idx).map(|r| &r.policies)
    }

    /// The route's rate limiter, if it has one.
    pub fn limiter(&self, idx: usize) -> Option<&RefCell<Limiter>> {
        self.routes.get(idx).and_then(|r| r.limiter.as_ref())
    }

    /// The largest request body any route admits: request heads are parsed against it, and
    /// each route's own limit is applied once the request is routed.
    pub fn max_body_override(&self) -> Option<u64> {
        self.routes
            .iter()
            .filter_map(|r| r.policies.max_body_size_bytes)
            .max()
    }

    /// Route `idx`'s shadow, if it has one.
    pub fn shadow(&self, idx: usize) -> Option<&Rc<Shadow>> {
        self.routes.get(idx).and_then(|r| r.shadow.as_ref())
    }

    /// Route `idx`'s fallback upstreams, if it has some.
    pub fn fallback(&self, idx: usize) -> Option<&Arc<Fallback>> {
        self.routes.get(idx).and_then(|r| r.fallback.as_ref())
    }

    /// Whether route `idx` lets WebSocket upgrades through.
    pub fn websocket_allowed(&self, idx: usize) -> bool {
        self.routes.get(idx).is_none_or(|r| r.websocket)
    }

    /// How the proxy's own errors look on route `idx` (no route: plain).
    pub fn error_style(&self, idx: Option<usize>) -> ErrorStyle {
        idx.and_then(|i| self.routes.get(i))
            .map(|r| r.errors.clone())
            .unwrap_or_default()
    }
}

fn compile(route: &str, pattern: &str) -> Result<Regex, RoutingError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| RoutingError::InvalidRegex {
            route: route.to_owned(),
            pattern: pattern.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
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
}

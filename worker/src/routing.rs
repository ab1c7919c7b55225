//! Route selection: the first route (in the config's evaluation order) whose conditions all
//! hold wins; otherwise the listener's default route; otherwise no route (404).
//!
//! Within one route, conditions of different kinds are ANDed and conditions of the same kind
//! are ORed: `host a, host b, path-prefix /x` means `(host a OR host b) AND path-prefix /x`.

use zentinel_protocol::config::{ProxyConfig, RouteAction, RouteMatch, StaticResponse};

/// What a matched route does, with names already resolved to indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Index into the upstream pools (same order as `ProxyConfig.upstreams`).
    Upstream(usize),
    Static(StaticResponse),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any subdomain depth, not the bare domain.
    Suffix(String),
}

impl HostPattern {
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

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: String,
    hosts: Vec<HostPattern>,
    prefixes: Vec<String>,
    paths: Vec<String>,
    action: Action,
}

impl CompiledRoute {
    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok =
            self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h)));
        let prefix_ok =
            self.prefixes.is_empty() || self.prefixes.iter().any(|p| path.starts_with(p.as_str()));
        let path_ok = self.paths.is_empty() || self.paths.iter().any(|p| p == path);
        host_ok && prefix_ok && path_ok
    }
}

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<CompiledRoute>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("route `{route}` names unknown upstream `{upstream}`")]
    UnknownUpstream { route: String, upstream: String },
    #[error("listener `{listener}` names unknown default route `{route}`")]
    UnknownDefaultRoute { listener: String, route: String },
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
        for r in &config.routes {
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
            };
            let mut c = CompiledRoute {
                name: r.name.clone(),
                hosts: Vec::new(),
                prefixes: Vec::new(),
                paths: Vec::new(),
                action,
            };
            for m in &r.matches {
                match m {
                    RouteMatch::Host(h) => c.hosts.push(HostPattern::parse(h)),
                    RouteMatch::PathPrefix(p) => c.prefixes.push(p.clone()),
                    RouteMatch::Path(p) => c.paths.push(p.clone()),
                }
            }
            routes.push(c);
        }
        let router = Router { routes };
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
        }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.name == name)
    }

    /// The matching route index for a raw `host` (normalized here); `path` without the query
    /// string. The proxy path uses [`Router::find_normalized`] with the codec's host.
    #[cfg(test)]
    pub fn find(
        &self,
        default_route: Option<usize>,
        host: Option<&str>,
        path: &str,
    ) -> Option<usize> {
        let host = host.map(normalize_host);
        self.find_normalized(default_route, host.as_deref(), path)
    }

    /// [`Router::find`] for a host already normalized (lowercase, port stripped), as the HTTP
    /// codec hands it over: no copy per request.
    pub fn find_normalized(
        &self,
        default_route: Option<usize>,
        host: Option<&str>,
        path: &str,
    ) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.matches(host, path))
            .or(default_route)
    }

    pub fn action(&self, idx: usize) -> Option<&Action> {
        self.routes.get(idx).map(|r| &r.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zentinel_protocol::config::*;

    fn route(name: &str, matches: Vec<RouteMatch>, upstream: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            priority: RoutePriority::Normal,
            matches,
            action: RouteAction::Upstream(upstream.into()),
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
        }
    }

    fn config(routes: Vec<RouteConfig>) -> ProxyConfig {
        ProxyConfig {
            system: SystemConfig::default(),
            listeners: vec![ListenerConfig {
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
        assert_eq!(r.find(None, Some("example.com"), "/"), Some(0));
        assert_eq!(r.find(None, Some("EXAMPLE.com:8080"), "/"), Some(0));
        assert_eq!(r.find(None, Some("www.example.com"), "/"), None);
        assert_eq!(r.find(None, None, "/"), None);
    }

    #[test]
    fn host_wildcard_any_depth_not_bare() {
        let r = Router::new(&config(vec![route(
            "r",
            vec![RouteMatch::Host("*.example.com".into())],
            "a",
        )]))
        .unwrap();
        assert_eq!(r.find(None, Some("a.example.com"), "/"), Some(0));
        assert_eq!(r.find(None, Some("a.b.example.com"), "/"), Some(0));
        assert_eq!(r.find(None, Some("example.com"), "/"), None);
        assert_eq!(r.find(None, Some("badexample.com"), "/"), None);
    }

    #[test]
    fn and_across_kinds_or_within_kind() {
        let r = Router::new(&config(vec![route(
            "r",
            vec![
                RouteMatch::Host("a.test".into()),
                RouteMatch::Host("b.test".into()),
                RouteMatch::PathPrefix("/api".into()),
                RouteMatch::PathPrefix("/v2".into()),
            ],
            "a",
        )]))
        .unwrap();
        assert_eq!(r.find(None, Some("a.test"), "/api/x"), Some(0));
        assert_eq!(r.find(None, Some("b.test"), "/v2"), Some(0));
        assert_eq!(r.find(None, Some("c.test"), "/api"), None);
        assert_eq!(r.find(None, Some("a.test"), "/other"), None);
    }

    #[test]
    fn exact_path_first_match_and_default() {
        let r = Router::new(&config(vec![
            route("exact", vec![RouteMatch::Path("/health".into())], "a"),
            route("prefix", vec![RouteMatch::PathPrefix("/".into())], "b"),
            route("never", vec![], "a"),
        ]))
        .unwrap();
        assert_eq!(r.find(None, None, "/health"), Some(0));
        assert_eq!(r.find(None, None, "/health/x"), Some(1));
        assert_eq!(r.find(None, None, "/x"), Some(1));
        let r = Router::new(&config(vec![
            route("exact", vec![RouteMatch::Path("/health".into())], "a"),
            route("fallback", vec![RouteMatch::Host("zzz".into())], "b"),
        ]))
        .unwrap();
        let d = r.index_of("fallback");
        assert_eq!(r.find(d, None, "/nope"), Some(1));
        assert_eq!(r.find(None, None, "/nope"), None);
        assert_eq!(r.action(0), Some(&Action::Upstream(0)));
        assert_eq!(r.action(1), Some(&Action::Upstream(1)));
        let mut mapped = r.clone();
        mapped.map_upstreams(&[7, 3]);
        assert_eq!(mapped.action(0), Some(&Action::Upstream(7)));
        assert_eq!(mapped.action(1), Some(&Action::Upstream(3)));
    }

    #[test]
    fn no_condition_matches_everything() {
        let r = Router::new(&config(vec![route("all", vec![], "b")])).unwrap();
        assert_eq!(r.find(None, None, "/anything"), Some(0));
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

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

use crate::filters::{Chain, FilterShm, Filters, Segments};
use crate::rate_limit::Limiter;

mod conditions;
#[cfg(test)]
mod tests;

pub use conditions::RouteRequest;
use conditions::{prefix_matches, Condition, HostPattern};

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
    /// The route's `filters`, compiled (shared with the other routes naming the same ones).
    filters: Option<Rc<Chain>>,
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
    /// The segments of the filters (counters, rate-limit tables) this generation uses.
    filter_segments: Vec<Rc<FilterShm>>,
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
    #[error("{0}")]
    Filter(String),
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
    /// The router of `config`, its filters keeping their state in segments of this worker's
    /// own.
    #[cfg(test)]
    pub fn new(config: &ProxyConfig) -> Result<Self, RoutingError> {
        Router::with_segments(config, &Segments::default())
    }

    /// The router of `config`, its filters keeping their counters and rate-limit tables in
    /// `segments` (the master's, shared with every worker) where handed one.
    pub fn with_segments(config: &ProxyConfig, segments: &Segments) -> Result<Self, RoutingError> {
        let mut routes = Vec::with_capacity(config.routes.len());
        let filters = Filters::new(config, segments).map_err(RoutingError::Filter)?;
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
                filters: filters.chain(r).map_err(RoutingError::Filter)?,
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
        let router = Router {
            routes,
            scopes,
            filter_segments: filters.segments().cloned().collect(),
        };
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

    /// The filters' segments this router uses.
    pub fn filter_segments(&self) -> &[Rc<FilterShm>] {
        &self.filter_segments
    }

    /// The route's filter chain, if it names filters.
    pub fn filters(&self, idx: usize) -> Option<&Rc<Chain>> {
        self.routes.get(idx).and_then(|r| r.filters.as_ref())
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

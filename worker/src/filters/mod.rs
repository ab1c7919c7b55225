//! Upstream Zentinel's route filters (`filters { filter "x" { type "..." } }`, `filters "x"`
//! on a route), compiled once per generation and applied by the HTTP session in upstream's
//! phases and order:
//!
//! | phase | where the session calls | filters, in the route's order |
//! |---|---|---|
//! | request | [`RequestState::on_request`], after routing, before the action | rate-limit, then redirect, url-rewrite, cors (preflight), timeout, log |
//! | upstream head | [`RequestState::rewrite_upstream_head`], on the serialized head | url-rewrite's target and `Host`, headers (request phase) |
//! | response decision | [`RequestState::start_compress`], on the parsed upstream head, before the client head is written | compress (chooses the coding, which changes the body's framing) |
//! | response head | [`RequestState::on_response_head`], on the serialized client head | headers (response phase), cors, compress, log |
//! | response body | [`RequestState::compressing`] on each piece, [`RequestState::end_compress`] at its end | compress |
//!
//! Rate limits run before the other request filters, as upstream checks them first. A
//! filter that answers (a redirect, a preflight, a refusal) ends the chain. A filter that
//! makes the request wait (`on-limit "delay"`, or a `backend "redis"` limit waiting for Redis'
//! answer) returns [`Verdict::Hold`]; the session resumes the chain when the time comes, or
//! when the answer does ([`RequestState::redis_answered`]).
//!
//! Each filter is compiled once per generation and shared (`Rc`) by the routes naming it;
//! request-specific facts live in [`RequestState`], created only for routes with filters. The
//! two heads are each split into fields once for all the filters of their phase
//! (`head_edit`), and not at all on a route none of whose filters changes a field.
//! docs/design/filters.md has the whole chain, key by key.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use zentinel_protocol::config::{
    CompressFilter, FilterKind, HeadersFilter, LogFilter, ProxyConfig, RedirectFilter, RouteConfig,
    RouteMatch, TimeoutFilter, UrlRewriteFilter,
};

use crate::http::codec::{BodyFraming, HttpVersion, RequestHead, ResponseHead};
use crate::sock::Buf;
use head_edit::HeadEdit;

pub(crate) mod compress;
mod cors;
mod counters;
mod head_edit;
mod log;
mod rate_limit;
mod redirect;
mod redis_limit;
pub mod shared;
#[cfg(test)]
mod tests;

pub use cors::Cors;
pub use counters::FilterCounters;
pub use rate_limit::RateLimiter;
pub use redis_limit::wake_answered as wake_redis_answered;
pub use shared::{FilterShm, Segments};

/// One compiled filter definition.
#[derive(Debug)]
pub struct Filter {
    /// Its name in the configuration.
    pub name: String,
    pub kind: Kind,
    pub counters: FilterCounters,
    /// Its segment (counters, rate-limit table); `None` for a filter that keeps no state.
    pub shm: Option<Rc<FilterShm>>,
}

/// What a compiled filter does.
#[derive(Debug)]
pub enum Kind {
    Headers(HeadersFilter),
    Cors(Cors),
    /// The compress filter's settings (the coding itself is chosen per response).
    Compress(CompressFilter),
    Redirect(RedirectFilter),
    UrlRewrite(UrlRewriteFilter),
    Timeout(TimeoutFilter),
    Log(LogFilter),
    RateLimit(RateLimiter),
}

/// The filters of a generation, by definition order.
#[derive(Debug, Default)]
pub struct Filters {
    pub list: Vec<Rc<Filter>>,
}

impl Filters {
    /// Compile every definition of `config`, each with its segment among `segments` (the
    /// master's), or one of this worker's own when the master handed none for it.
    pub fn new(config: &ProxyConfig, segments: &Segments) -> Result<Self, String> {
        let mut list = Vec::with_capacity(config.filters.len());
        for f in &config.filters {
            let shm = match segments.get(f) {
                Some(shm) => Some(shm),
                None => FilterShm::private(f)
                    .map_err(|e| {
                        format!(
                            "filter `{}`: cannot make its counters and table: {e}",
                            f.name
                        )
                    })?
                    .map(Rc::new),
            };
            let counters = shm
                .as_ref()
                .map_or_else(FilterCounters::default, FilterCounters::shared);
            let kind = match &f.kind {
                FilterKind::Headers(h) => Kind::Headers(h.clone()),
                FilterKind::Cors(c) => Kind::Cors(Cors::new(c)),
                FilterKind::Compress(c) => Kind::Compress(c.clone()),
                FilterKind::Redirect(r) => Kind::Redirect(r.clone()),
                FilterKind::UrlRewrite(r) => Kind::UrlRewrite(r.clone()),
                FilterKind::Timeout(t) => Kind::Timeout(t.clone()),
                FilterKind::Log(l) => Kind::Log(l.clone()),
                FilterKind::RateLimit(r) => {
                    let table = shm.clone().ok_or_else(|| {
                        format!("filter `{}`: a rate limit without a table", f.name)
                    })?;
                    Kind::RateLimit(RateLimiter::new(&f.name, r, table))
                }
            };
            list.push(Rc::new(Filter {
                name: f.name.clone(),
                kind,
                counters,
                shm,
            }));
        }
        let private: Vec<&str> = list
            .iter()
            .filter(|f| f.shm.as_ref().is_some_and(|s| s.is_private()))
            .map(|f| f.name.as_str())
            .collect();
        if !private.is_empty() && segments.len() > 0 {
            tracing::warn!(
                filters = ?private,
                "no usable segment from the master for these filters: their counters and rate \
                 limits are this worker's own"
            );
        }
        Ok(Filters { list })
    }

    /// The shared segments this generation's filters use (a later `FilterSegments` handing
    /// one of them again is not mapped twice).
    pub fn segments(&self) -> impl Iterator<Item = &Rc<FilterShm>> {
        self.list.iter().filter_map(|f| f.shm.as_ref())
    }

    /// The chain of `route`, or `None` when it names no filter. A name not defined is an
    /// error (the master checked it; a worker still does not trust it blindly).
    pub fn chain(&self, route: &RouteConfig) -> Result<Option<Rc<Chain>>, String> {
        let names = route.extras.as_ref().map_or(&[][..], |e| &e.filters[..]);
        if names.is_empty() {
            return Ok(None);
        }
        let mut filters = Vec::with_capacity(names.len());
        for n in names {
            let f = self
                .list
                .iter()
                .find(|f| &f.name == n)
                .ok_or_else(|| format!("route `{}` names unknown filter `{n}`", route.name))?;
            filters.push(Rc::clone(f));
        }
        let mut prefixes = Vec::new();
        let mut regexes = Vec::new();
        for m in &route.matches {
            match m {
                RouteMatch::PathPrefix(p) => prefixes.extend(p.iter().cloned()),
                RouteMatch::PathRegex(p) => {
                    for pattern in p {
                        let re = regex::Regex::new(pattern).map_err(|e| {
                            format!(
                                "route `{}`: invalid path-regex {pattern:?}: {e}",
                                route.name
                            )
                        })?;
                        regexes.push(re);
                    }
                }
                _ => {}
            }
        }
        let request_edits = filters.iter().any(|f| match &f.kind {
            Kind::Headers(h) => h.phase.on_request(),
            Kind::UrlRewrite(_) => true,
            _ => false,
        });
        let response_edits = filters.iter().any(|f| match &f.kind {
            Kind::Headers(h) => h.phase.on_response(),
            Kind::Cors(_) => true,
            _ => false,
        });
        Ok(Some(Rc::new(Chain {
            route: route.name.clone(),
            filters,
            request_edits,
            response_edits,
            prefixes,
            regexes,
        })))
    }
}

/// A route's filters in its order, with what path rewrites need of its matches.
#[derive(Debug)]
pub struct Chain {
    /// The route's name (part of rate-limit keys: a filter on two routes limits each apart,
    /// as upstream).
    pub route: String,
    pub filters: Vec<Rc<Filter>>,
    /// Some filter edits the upstream request head (`headers` on the request, `url-rewrite`),
    /// or the response head (`headers` on the response, `cors`): the other chains never split
    /// a head into fields.
    request_edits: bool,
    response_edits: bool,
    /// The route's `path-prefix` matches (`replace-prefix-match` replaces the longest that
    /// matches).
    prefixes: Vec<String>,
    /// The route's `path-regex` matches (`replace-full-path` may use their captures).
    regexes: Vec<regex::Regex>,
}

/// What the session needs to know of the request for the request phase.
pub struct RequestFacts<'a> {
    pub peer: IpAddr,
    pub req: &'a RequestHead,
    /// `http` or `https`, as the client connected.
    pub scheme: &'a str,
    pub trace_id: &'a str,
    pub now: Instant,
    /// The session's key in the event loop (a Redis answer wakes it).
    pub session: usize,
}

/// What the request phase decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on with the route's action.
    Continue,
    /// Answer with these bytes (a complete response) and this status; the chain ends.
    Respond {
        status: u16,
        bytes: Vec<u8>,
        /// Close the connection after it (a refusal whose body the client may still send).
        close: bool,
    },
    /// Wait until then, and call [`Chain::on_request`] again (it resumes where it stopped).
    Hold { until: Instant },
}

/// The request-specific state of a route's filters, from the request phase to the end of the
/// response.
#[derive(Debug)]
pub struct RequestState {
    pub chain: Rc<Chain>,
    /// Index of the next request-phase step to run (resuming after a hold).
    next: usize,
    /// Rate limits are checked in a first pass: true once it is over.
    limits_done: bool,
    /// The allowed CORS origin of this request (response headers are added for it).
    cors_origin: Option<String>,
    /// `url-rewrite`: the target and `Host` sent upstream.
    rewrite_target: Option<String>,
    rewrite_host: Option<String>,
    /// `timeout`: overrides of the upstream's timeouts.
    pub timeouts: TimeoutFilter,
    /// The last rate-limit decision (its `X-RateLimit-*` headers go on the response).
    pub rate: Option<crate::rate_limit::Decision>,
    /// A Redis rate-limit check the request is held for (see `redis_limit`).
    redis_pending: Option<redis_limit::Pending>,
    /// The request's `Accept-Encoding` (all its lines), kept for the compress filter.
    pub accept_encoding: Option<String>,
    /// The request asked for a byte range (compression leaves such responses alone).
    pub range: bool,
    /// The request is HEAD.
    pub head: bool,
    /// A compress filter's decision on the response (and its encoder while the body streams).
    compress: Option<compress::Decision>,
    /// When the request phase started (the log filter's duration).
    pub started: Instant,
    /// What the `log` filter's response line repeats of the request (routes with one only).
    log_line: Option<Box<log::ResponseLine>>,
}

impl RequestState {
    pub fn new(chain: Rc<Chain>, req: &RequestHead, now: Instant) -> Self {
        let accept_encoding = header_values(req, "accept-encoding");
        RequestState {
            chain,
            next: 0,
            limits_done: false,
            cors_origin: None,
            rewrite_target: None,
            rewrite_host: None,
            timeouts: TimeoutFilter::default(),
            rate: None,
            redis_pending: None,
            accept_encoding,
            range: header_value(req, "range").is_some(),
            head: req.is_head(),
            compress: None,
            started: now,
            log_line: None,
        }
    }

    /// The request phase (see the module table). Resumable: after a `Hold`, call again.
    pub fn on_request(&mut self, facts: &RequestFacts<'_>) -> Verdict {
        let chain = Rc::clone(&self.chain);
        if !self.limits_done {
            while let Some(f) = chain.filters.get(self.next) {
                self.next += 1;
                if let Kind::RateLimit(limiter) = &f.kind {
                    let pending = &mut self.redis_pending;
                    match limiter.check(f, &chain.route, facts, &mut self.rate, pending) {
                        Verdict::Continue => {}
                        other => {
                            if self.redis_pending.is_some() {
                                // Waiting for Redis: this filter runs again with the answer.
                                self.next -= 1;
                            }
                            return other;
                        }
                    }
                }
            }
            self.limits_done = true;
            self.next = 0;
        }
        while let Some(f) = chain.filters.get(self.next) {
            self.next += 1;
            let verdict = match &f.kind {
                Kind::Redirect(r) => redirect::redirect(r, &chain, facts, &f.counters),
                Kind::UrlRewrite(r) => {
                    self.rewrite(r, &chain, facts, &f.counters);
                    Verdict::Continue
                }
                Kind::Cors(c) => cors::on_request(c, facts, &mut self.cors_origin, &f.counters),
                Kind::Timeout(t) => {
                    merge_timeouts(&mut self.timeouts, t);
                    Verdict::Continue
                }
                Kind::Log(l) => {
                    if l.log_request {
                        log::request(l, &f.name, facts);
                    }
                    if l.log_response && self.log_line.is_none() {
                        self.log_line = Some(Box::new(log::ResponseLine::new(facts)));
                    }
                    Verdict::Continue
                }
                _ => Verdict::Continue,
            };
            if !matches!(verdict, Verdict::Continue) {
                return verdict;
            }
        }
        Verdict::Continue
    }

    /// The Redis check this request is held for has its answer: resume now, not at the
    /// deadline.
    pub fn redis_answered(&self) -> bool {
        self.redis_pending.as_ref().is_some_and(|p| p.answered())
    }

    fn rewrite(
        &mut self,
        r: &UrlRewriteFilter,
        chain: &Chain,
        facts: &RequestFacts<'_>,
        counters: &FilterCounters,
    ) {
        if let Some(path) = &r.path {
            let current = self
                .rewrite_target
                .as_deref()
                .unwrap_or_else(|| facts.req.target());
            let (cur_path, query) = redirect::split_target(current);
            let new_path = redirect::modify_path(path, cur_path, chain);
            self.rewrite_target = Some(redirect::with_query(new_path, query));
        }
        if let Some(h) = &r.hostname {
            self.rewrite_host = Some(h.clone());
        }
        FilterCounters::add(&counters.rewrites, 1);
    }

    /// Rewrite the serialized upstream request head at `head[..]`: the url-rewrite target
    /// and host, then the request-phase header filters in the route's order (one pass over
    /// the fields for all of them).
    pub fn rewrite_upstream_head(&self, head: &mut Vec<u8>) {
        if !self.chain.request_edits {
            return;
        }
        if let Some(target) = &self.rewrite_target {
            redirect::rewrite_target(head, target);
        }
        let Some(mut edit) = HeadEdit::new(head, 0) else {
            return;
        };
        if let Some(host) = &self.rewrite_host {
            edit.set(head, "Host", host);
        }
        for f in &self.chain.filters {
            if let Kind::Headers(h) = &f.kind {
                if h.phase.on_request() {
                    edit.apply(head, &h.mods);
                }
            }
        }
        edit.finish(head);
    }

    /// Before the client head is written: whether a compress filter compresses the body of
    /// `resp` (then the session sends the body decoded, through [`Self::compressing`], and
    /// ends it with [`Self::end_compress`]). The first compress filter of the chain that the
    /// response qualifies for decides.
    pub fn start_compress(&mut self, resp: &ResponseHead, client: HttpVersion) -> bool {
        let chain = Rc::clone(&self.chain);
        let req = compress::RequestSide {
            accept_encoding: self.accept_encoding.as_deref(),
            range: self.range,
            head: self.head,
        };
        self.compress = chain
            .filters
            .iter()
            .enumerate()
            .find_map(|(i, f)| match &f.kind {
                Kind::Compress(c) => compress::decide(i, f, c, &req, resp, client),
                _ => None,
            });
        self.compressing().is_some()
    }

    /// The encoder of the response body, while it streams.
    pub fn compressing(&mut self) -> Option<&mut compress::Stream> {
        self.compress.as_mut().and_then(|d| d.stream.as_deref_mut())
    }

    /// The response body ended: the encoder's last bytes go to `cout`, and its place is
    /// given back. Nothing when the body was not compressed.
    pub fn end_compress(&mut self, cout: &mut Buf) -> std::io::Result<()> {
        match self.compress.as_mut().and_then(|d| d.stream.take()) {
            Some(stream) => stream.finish(cout),
            None => Ok(()),
        }
    }

    /// The response head the client gets, serialized at `head[start..]`: response-phase
    /// header filters, CORS fields (`Vary: Origin` whatever the origin), the log line (one
    /// pass over the fields for all of them), then compression's fields.
    pub fn on_response_head(&mut self, status: u16, head: &mut Vec<u8>, start: usize) {
        let chain = Rc::clone(&self.chain);
        // `None` when no filter edits it, or (never) for a head the codec did not write: the
        // log line goes out either way.
        let mut edit = if chain.response_edits {
            HeadEdit::new(head, start)
        } else {
            None
        };
        for f in &chain.filters {
            match (&f.kind, edit.as_mut()) {
                (Kind::Headers(h), Some(edit)) if h.phase.on_response() => {
                    edit.apply(head, &h.mods)
                }
                (Kind::Cors(c), Some(edit)) => {
                    cors::on_response(c, self.cors_origin.as_deref(), head, edit);
                }
                (Kind::Log(l), _) if l.log_response => {
                    if let Some(line) = &self.log_line {
                        log::response(l, &f.name, line, status, self.started);
                    }
                }
                _ => {}
            }
        }
        if let Some(edit) = edit {
            edit.finish(head);
        }
        if let Some(d) = self.compress.as_ref() {
            compress::rewrite_head(head, start, d);
        }
    }

    /// The `timeout` filters' upstream read timeout, if any.
    pub fn upstream_timeout(&self) -> Option<Duration> {
        self.timeouts.upstream_timeout_secs.map(Duration::from_secs)
    }

    /// The `timeout` filters' connect timeout, if any.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.timeouts.connect_timeout_secs.map(Duration::from_secs)
    }

    /// The `timeout` filters' whole-request timeout, if any.
    pub fn request_timeout(&self) -> Option<Duration> {
        self.timeouts.request_timeout_secs.map(Duration::from_secs)
    }
}

/// Later `timeout` filters override what earlier ones set.
fn merge_timeouts(into: &mut TimeoutFilter, t: &TimeoutFilter) {
    if t.request_timeout_secs.is_some() {
        into.request_timeout_secs = t.request_timeout_secs;
    }
    if t.upstream_timeout_secs.is_some() {
        into.upstream_timeout_secs = t.upstream_timeout_secs;
    }
    if t.connect_timeout_secs.is_some() {
        into.connect_timeout_secs = t.connect_timeout_secs;
    }
}

/// Every line of header `name`, joined with commas (one list), when there is one.
fn header_values(req: &RequestHead, name: &str) -> Option<String> {
    let mut joined: Option<String> = None;
    for h in req
        .headers()
        .filter(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
    {
        let value = String::from_utf8_lossy(h.value.trim_ascii());
        match joined.as_mut() {
            Some(j) => {
                j.push(',');
                j.push_str(&value);
            }
            None => joined = Some(value.into_owned()),
        }
    }
    joined
}

/// Whether the request announced a body (which a filter answering on its own never reads).
pub(crate) fn unread_body(req: &RequestHead) -> bool {
    !matches!(
        req.framing,
        BodyFraming::Empty | BodyFraming::ContentLength(0)
    )
}

/// The first value of header `name` (trimmed), if it is valid UTF-8.
pub(crate) fn header_value<'r>(req: &'r RequestHead, name: &str) -> Option<&'r str> {
    req.headers()
        .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .and_then(|h| std::str::from_utf8(h.value.trim_ascii()).ok())
}

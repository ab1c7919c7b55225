//! KDL configs the end-to-end tests start Zentinel with, built in one place so every test
//! speaks the same vocabulary.

use crate::Backend;

/// `workers` workers, one HTTP listener on 127.0.0.1:`port` whose default route proxies to
/// `backend` (upstream "b"); `system_extra` and `upstream_extra` are spliced into the `system`
/// and `upstream` blocks.
pub fn proxy(
    workers: u32,
    port: u16,
    backend: &Backend,
    system_extra: &str,
    upstream_extra: &str,
) -> String {
    proxy_with_listener(workers, port, backend, system_extra, "", upstream_extra)
}

/// [`proxy`] with `listener_extra` spliced into the listener block too (timeouts...).
pub fn proxy_with_listener(
    workers: u32,
    port: u16,
    backend: &Backend,
    system_extra: &str,
    listener_extra: &str,
    upstream_extra: &str,
) -> String {
    Proxy::new(workers, port, backend)
        .system(system_extra)
        .listener(listener_extra)
        .upstream(upstream_extra)
        .build()
}

/// [`proxy`] whose workers drain for at most `drain_secs` on stop or upgrade.
pub fn proxy_draining(workers: u32, port: u16, backend: &Backend, drain_secs: u32) -> String {
    Proxy::new(workers, port, backend)
        .drain_secs(drain_secs)
        .build()
}

/// The config of [`proxy`], built up piece by piece for the tests that need more of it: other
/// targets than one backend, a drain timeout, top-level blocks (`limits`...).
#[derive(Debug, Clone)]
pub struct Proxy {
    workers: u32,
    port: u16,
    protocol: &'static str,
    targets: Vec<String>,
    system: String,
    listener: String,
    upstream: String,
    top_level: String,
}

impl Proxy {
    /// `workers` workers, 127.0.0.1:`port` proxying everything to `backend`.
    pub fn new(workers: u32, port: u16, backend: &Backend) -> Self {
        Self::to_targets(workers, port, &[backend.target()])
    }

    /// Like [`Proxy::new`] with upstream "b" holding `targets` (`host:port`), in that order.
    pub fn to_targets(workers: u32, port: u16, targets: &[String]) -> Self {
        Proxy {
            workers,
            port,
            protocol: "http",
            targets: targets.to_vec(),
            system: String::new(),
            listener: String::new(),
            upstream: String::new(),
            top_level: String::new(),
        }
    }

    /// `graceful-shutdown-timeout-secs` in the `system` block.
    pub fn drain_secs(self, secs: u32) -> Self {
        self.system(&format!("graceful-shutdown-timeout-secs {secs}"))
    }

    /// The listener's `protocol` (`"http"` unless set: `"h2"`, `"https"` with a `tls` block
    /// given to [`Proxy::listener`]).
    pub fn protocol(mut self, protocol: &'static str) -> Self {
        self.protocol = protocol;
        self
    }

    /// Lines spliced into the `system` block.
    pub fn system(mut self, extra: &str) -> Self {
        push_line(&mut self.system, extra);
        self
    }

    /// Lines spliced into the listener block.
    pub fn listener(mut self, extra: &str) -> Self {
        push_line(&mut self.listener, extra);
        self
    }

    /// Lines spliced into the `upstream "b"` block.
    pub fn upstream(mut self, extra: &str) -> Self {
        push_line(&mut self.upstream, extra);
        self
    }

    /// Blocks appended at the top level (`limits { ... }`).
    pub fn top_level(mut self, extra: &str) -> Self {
        push_line(&mut self.top_level, extra);
        self
    }

    pub fn build(&self) -> String {
        let Proxy {
            workers,
            port,
            protocol,
            targets,
            system,
            listener,
            upstream,
            top_level,
        } = self;
        let targets: String = targets
            .iter()
            .map(|t| format!("        target \"{t}\"\n"))
            .collect();
        format!(
            r#"
system {{
    worker-processes {workers}
    {system}
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
        protocol "{protocol}"
        default-route "all"
        {listener}
    }}
}}
routes {{
    route "all" {{
        upstream "b"
    }}
}}
upstreams {{
    upstream "b" {{
{targets}        {upstream}
    }}
}}
{top_level}
"#
        )
    }
}

/// `workers` workers, one HTTP listener per port (named `http0`, `http1`...) whose default
/// route (route "r") answers 200 with `body` itself; workers drain for at most `drain_secs`.
pub fn static_response(workers: u32, ports: &[u16], body: &str, drain_secs: u32) -> String {
    let listeners: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "    listener \"http{i}\" {{\n        address \"127.0.0.1:{port}\"\n        \
                 protocol \"http\"\n        default-route \"r\"\n    }}\n"
            )
        })
        .collect();
    format!(
        "system {{\n    worker-processes {workers}\n    graceful-shutdown-timeout-secs {drain_secs}\n}}\n\
         listeners {{\n{listeners}}}\n\
         routes {{\n    route \"r\" {{\n        static-response status=200 body=\"{body}\"\n    }}\n}}\n"
    )
}

fn push_line(to: &mut String, line: &str) {
    if !to.is_empty() {
        to.push_str("\n        ");
    }
    to.push_str(line);
}

/// `workers` workers and one HTTP listener on 127.0.0.1:`port` whose route "all" (with
/// `route_extra` lines) sends everything to upstream "pool", whose block holds `upstream_body`.
pub fn pool(workers: u32, port: u16, route_extra: &str, upstream_body: &str) -> String {
    format!(
        r#"
system {{
    worker-processes {workers}
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
        protocol "http"
        default-route "all"
    }}
}}
routes {{
    route "all" {{
        upstream "pool"
{route_extra}
    }}
}}
upstreams {{
    upstream "pool" {{
{upstream_body}
    }}
}}
"#
    )
}

/// The `target "host:port"` lines of `backends`, for an upstream block.
pub fn target_lines(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("        target \"{}\"\n", b.target()))
        .collect()
}

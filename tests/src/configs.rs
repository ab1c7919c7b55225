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
    format!(
        r#"
system {{
    worker-processes {workers}
    {system_extra}
}}
listeners {{
    listener "http" {{
        address "127.0.0.1:{port}"
        protocol "http"
        default-route "all"
        {listener_extra}
    }}
}}
routes {{
    route "all" {{
        upstream "b"
    }}
}}
upstreams {{
    upstream "b" {{
        target "{target}"
        {upstream_extra}
    }}
}}
"#,
        target = backend.target()
    )
}

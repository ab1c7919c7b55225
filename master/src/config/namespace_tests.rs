//! `namespace` and `service`: qualified names, scoped resolution of references, exports, and
//! which routes a listener serves.

use super::*;
use zentinel_protocol::config::RouteAction;

fn full(source: &str) -> Result<FullConfig, Vec<ConfigDiagnostic>> {
    parse_full_config(source, "test.kdl")
}

fn messages(diagnostics: &[ConfigDiagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

const CONFIG: &str = r#"listeners {
    listener "public" { address "127.0.0.1:8080"; default-route "home"; }
    listener "shop-front" { address "127.0.0.1:8081"; namespace "shop"; }
}
upstreams {
    upstream "auth" { target "127.0.0.1:9000"; }
    upstream "cart" { target "127.0.0.1:9009"; }
}
routes {
    route "home" { upstream "cart"; }
}
namespace "shop" {
    upstreams {
        upstream "cart" { target "127.0.0.1:9001"; }
        upstream "catalog" { target "127.0.0.1:9002"; }
    }
    exports { upstreams "catalog"; }
    routes {
        route "cart" { matches { path-prefix "/cart"; }; upstream "cart"; }
        route "login" { matches { path-prefix "/login"; }; upstream "auth"; }
    }
    service "payments" {
        listener { address "127.0.0.1:8082"; }
        upstreams { upstream "cart" { target "127.0.0.1:9003"; } }
        routes { route "pay" { upstream "cart"; } }
    }
}
namespace "blog" {
    routes { route "posts" { upstream "catalog"; }; route "other" { upstream "shop:cart"; }; }
}
"#;

#[test]
fn names_are_qualified_and_references_resolve_in_scope() {
    let config = full(CONFIG)
        .unwrap_or_else(|d| panic!("{}", messages(&d)))
        .proxy;
    let upstream_of = |route: &str| {
        let r = config
            .routes
            .iter()
            .find(|r| r.name == route)
            .unwrap_or_else(|| panic!("{route}"));
        match &r.action {
            RouteAction::Upstream(u) => (u.clone(), r.scope.clone()),
            other => panic!("{other:?}"),
        }
    };
    // Top level: its own upstream.
    assert_eq!(upstream_of("home"), ("cart".into(), None));
    // Namespace: its own first, then the top level.
    assert_eq!(
        upstream_of("shop:cart"),
        ("shop:cart".into(), Some("shop".into()))
    );
    assert_eq!(
        upstream_of("shop:login"),
        ("auth".into(), Some("shop".into()))
    );
    // Service: its own first.
    assert_eq!(
        upstream_of("shop:payments:pay"),
        ("shop:payments:cart".into(), Some("shop:payments".into()))
    );
    // Another namespace: an exported upstream, and a qualified reference.
    assert_eq!(
        upstream_of("blog:posts"),
        ("shop:catalog".into(), Some("blog".into()))
    );
    assert_eq!(
        upstream_of("blog:other"),
        ("shop:cart".into(), Some("blog".into()))
    );
    let scope_of = |listener: &str| {
        config
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .unwrap_or_else(|| panic!("{listener}"))
            .route_scope
            .clone()
    };
    assert_eq!(scope_of("public"), None);
    assert_eq!(scope_of("shop-front"), Some("shop".into()));
    assert_eq!(
        scope_of("shop:payments:service-listener"),
        Some("shop:payments".into())
    );
}

#[test]
fn namespace_mistakes_are_located() {
    let errs = full(
        "listeners {\n    listener \"a\" { address \"127.0.0.1:8080\"; namespace \"shopp\"; }\n}\n\
         namespace \"shop\" {\n    routes { route \"r\" { upstream \"nowhere\"; } }\n    agents { }\n}\n\
         namespace \"a:b\" { }\n",
    )
    .unwrap_err();
    let text = messages(&errs);
    assert!(text.contains("test.kdl:2:56: `namespace`: listener `a` serves namespace \"shopp\", which is not defined (did you mean `shop`?)"), "{text}");
    assert!(text.contains("test.kdl:5:"), "{text}");
    assert!(text.contains("nowhere"), "{text}");
    assert!(
        text.contains("test.kdl:6:5: `agents`: `agents` is not supported yet"),
        "{text}"
    );
    assert!(
        text.contains("test.kdl:8:11: `namespace`: \"a:b\": a namespace name may not contain `:`"),
        "{text}"
    );
}

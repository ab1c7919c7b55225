//! `namespace` and `service` on real processes: each listener serves the routes of its own
//! scope, and routes reach the upstream their scope resolves to.

use zentinel_tests::*;

#[test]
fn each_listener_serves_its_scope() {
    let global_backend = Backend::start("ns-global");
    let shop_backend = Backend::start("ns-shop");
    let (public, shop, payments) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"system {{
    worker-threads 1
}}
listeners {{
    listener "public" {{
        address "127.0.0.1:{public}"
    }}
    listener "shop-front" {{
        address "127.0.0.1:{shop}"
        namespace "shop"
    }}
}}
upstreams {{
    upstream "backend" {{ target "{global}"; }}
}}
routes {{
    route "home" {{ upstream "backend"; }}
}}
namespace "shop" {{
    upstreams {{
        upstream "backend" {{ target "{shop_target}"; }}
    }}
    routes {{
        route "static" {{ matches {{ path "/hello"; }}; static-response status=200 body="shop"; }}
        route "all" {{ upstream "backend"; }}
    }}
    service "payments" {{
        listener {{
            address "127.0.0.1:{payments}"
        }}
        routes {{ route "pay" {{ static-response status=200 body="payments"; }} }}
    }}
}}
"#,
        global = global_backend.target(),
        shop_target = shop_backend.target(),
    );
    let z = Zentinel::start(&config);
    let get = |port: u16, path: &str| {
        HttpClient::connect(format!("127.0.0.1:{port}").parse().unwrap()).get(path, "ns.test")
    };
    // Top-level listener: top-level routes only (the namespace's /hello is not served here).
    let r = get(public, "/hello");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("ns-global"), "{r:?}");
    // The listener bound to the namespace: its routes, and its own upstream.
    assert_eq!(get(shop, "/hello").body_str(), "shop");
    let r = get(shop, "/other");
    assert_eq!(r.backend(), Some("ns-shop"), "{r:?}");
    // The service's own listener.
    assert_eq!(get(payments, "/anything").body_str(), "payments");
    drop(z);
}

//! Shared test helpers: proptest strategies for every message type and a socketpair pump.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use zentinel_protocol::config::*;
use zentinel_protocol::messages::*;
use zentinel_protocol::session_cache::SessionCacheHandle;
use zentinel_protocol::ticket_keys::{
    TicketKey, TicketKeys, TICKET_KEY_NAME_LEN, TICKET_KEY_SECRET_LEN,
};
use zentinel_protocol::{Channel, ReceivedFrame};

fn name() -> impl Strategy<Value = String> {
    // Include multi-byte UTF-8 so string validation is exercised.
    "[a-z0-9_.\\-é☃]{0,24}"
}

fn system() -> impl Strategy<Value = SystemConfig> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        option::of(name()),
        option::of(name()),
        (
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                worker_processes,
                max_connections,
                graceful_shutdown_timeout_secs,
                control_socket,
                pid_file,
                (upgrade_drain_timeout_secs, close_spread_time_ms, max_draining_generations),
            )| SystemConfig {
                worker_processes,
                max_connections,
                graceful_shutdown_timeout_secs,
                control_socket,
                pid_file,
                user: None,
                group: None,
                trace_id_format: TraceIdFormat::TinyFlake,
                upgrade_drain_timeout_secs,
                close_spread_time_ms,
                max_draining_generations,
            },
        )
}

fn tls_version() -> impl Strategy<Value = TlsVersion> {
    prop_oneof![Just(TlsVersion::Tls12), Just(TlsVersion::Tls13)]
}

fn tls() -> impl Strategy<Value = TlsConfig> {
    (
        name(),
        name(),
        vec(
            (vec(name(), 0..3), name(), name(), option::of(name())),
            0..3,
        ),
        tls_version(),
        option::of(tls_version()),
        (
            prop_oneof![
                Just(ClientAuth::Off),
                Just(ClientAuth::Optional),
                Just(ClientAuth::Required)
            ],
            option::of(name()),
        ),
        (
            vec(name(), 0..3),
            any::<bool>(),
            any::<bool>(),
            option::of(name()),
        ),
    )
        .prop_map(
            |(
                cert_file,
                key_file,
                sni,
                min_version,
                max_version,
                (client_auth, ca_file),
                (cipher_suites, session_resumption, ocsp_stapling, ocsp_response),
            )| {
                TlsConfig {
                    cert_file,
                    key_file,
                    additional_certs: sni
                        .into_iter()
                        .map(
                            |(hostnames, cert_file, key_file, ocsp_response)| SniCertificate {
                                hostnames,
                                cert_file,
                                key_file,
                                ocsp_response,
                            },
                        )
                        .collect(),
                    min_version,
                    max_version,
                    client_auth,
                    ca_file,
                    cipher_suites,
                    session_resumption,
                    ocsp_stapling,
                    ocsp_response,
                }
            },
        )
}

fn listener() -> impl Strategy<Value = ListenerConfig> {
    (
        name(),
        name(),
        prop_oneof![Just(ListenerProtocol::Http), Just(ListenerProtocol::Tcp)],
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        option::of(name()),
        option::of(name()),
        option::of(
            (
                name(),
                name(),
                any::<bool>(),
                any::<u32>(),
                any::<u32>(),
                any::<bool>(),
                any::<u16>(),
            )
                .prop_map(
                    |(file, format, include_trace_id, buffer_size, sample, errors, bits)| {
                        let on = |i: u32| bits & (1 << i) != 0;
                        AccessLogConfig {
                            file,
                            format,
                            include_trace_id,
                            buffer_size,
                            sample_per_million: sample,
                            sample_errors_always: errors,
                            fields: AccessLogFields {
                                timestamp: on(0),
                                trace_id: on(1),
                                method: on(2),
                                path: on(3),
                                query: on(4),
                                status: on(5),
                                latency_ms: on(6),
                                body_bytes_sent: on(7),
                                upstream_addr: on(8),
                                connection_reused: on(9),
                                rate_limit_hit: on(10),
                                geo_country: on(11),
                                user_agent: on(12),
                                referer: on(13),
                                client_ip: on(14),
                            },
                        }
                    },
                ),
        ),
        option::of(tls()),
    )
        .prop_map(
            |(
                name,
                address,
                protocol,
                backlog,
                request_timeout_secs,
                keepalive_timeout_secs,
                default_route,
                upstream,
                access_log,
                tls,
            )| ListenerConfig {
                route_scope: None,
                max_concurrent_streams: 100,
                keepalive_max_requests: 0,
                name,
                address,
                protocol,
                backlog,
                request_timeout_secs,
                keepalive_timeout_secs,
                default_route,
                upstream,
                access_log,
                tls,
            },
        )
}

fn route() -> impl Strategy<Value = RouteConfig> {
    let matcher = prop_oneof![
        name().prop_map(RouteMatch::Host),
        vec(name(), 1..3).prop_map(RouteMatch::PathPrefix),
        vec(name(), 1..3).prop_map(RouteMatch::Path),
        vec(name(), 1..3).prop_map(RouteMatch::PathRegex),
        vec(name(), 1..3).prop_map(RouteMatch::Method),
        (name(), option::of(name())).prop_map(|(name, value)| RouteMatch::Header { name, value }),
        (name(), option::of(name()))
            .prop_map(|(name, value)| RouteMatch::QueryParam { name, value }),
    ];
    let action = prop_oneof![
        name().prop_map(RouteAction::Upstream),
        (any::<u16>(), ".{0,64}", name()).prop_map(|(status, body, content_type)| {
            RouteAction::Static(StaticResponse {
                status,
                body,
                content_type,
            })
        }),
        prop_oneof![
            Just(BuiltinHandler::Status),
            Just(BuiltinHandler::Health),
            Just(BuiltinHandler::Metrics),
            Just(BuiltinHandler::NotFound),
            Just(BuiltinHandler::Upstreams),
            Just(BuiltinHandler::Config),
        ]
        .prop_map(RouteAction::Builtin),
    ];
    let service_type = prop_oneof![
        Just(ServiceType::Web),
        Just(ServiceType::Api),
        Just(ServiceType::Static),
        Just(ServiceType::Builtin),
        Just(ServiceType::Inference),
    ];
    (
        name(),
        any::<i32>(),
        vec(matcher, 0..4),
        action,
        service_type,
    )
        .prop_map(
            |(name, priority, matches, action, service_type)| RouteConfig {
                scope: None,
                extras: None,
                name,
                priority,
                matches,
                action,
                service_type,
                retry_policy: None,
                policies: Default::default(),
            },
        )
}

fn upstream() -> impl Strategy<Value = UpstreamConfig> {
    let target =
        (name(), any::<u32>()).prop_map(|(address, weight)| UpstreamTarget { address, weight });
    (
        name(),
        vec(target, 0..4),
        load_balancing(),
        (
            option::of(any::<u32>()),
            any::<u32>(),
            any::<u64>(),
            option::of(any::<u64>()),
        ),
        (
            any::<u64>(),
            any::<u64>(),
            option::of(any::<u64>()),
            option::of(any::<u64>()),
        ),
        option::of(health_check()),
        (any::<u32>(), any::<u64>()),
        option::of(sticky()),
    )
        .prop_map(
            |(
                name,
                targets,
                load_balancing,
                (max_connections, max_idle, idle_timeout_secs, max_lifetime_secs),
                (connect_secs, read_secs, write_secs, request_secs),
                health_check,
                (max_fails, fail_timeout_secs),
                sticky,
            )| {
                UpstreamConfig {
                    name,
                    targets,
                    load_balancing,
                    sticky,
                    pool: ConnectionPool {
                        max_connections,
                        max_idle,
                        idle_timeout_secs,
                        max_lifetime_secs,
                    },
                    timeouts: UpstreamTimeouts {
                        connect_secs,
                        read_secs,
                        write_secs,
                        request_secs,
                    },
                    health_check,
                    passive_health: PassiveHealth {
                        max_fails,
                        fail_timeout_secs,
                    },
                    circuit_breaker: None,
                    tls: None,
                    http: UpstreamHttp::default(),
                }
            },
        )
}

fn load_balancing() -> impl Strategy<Value = LoadBalancing> {
    prop_oneof![
        Just(LoadBalancing::RoundRobin),
        Just(LoadBalancing::Weighted),
        Just(LoadBalancing::LeastConnections),
        Just(LoadBalancing::WeightedLeastConnections),
        Just(LoadBalancing::Random),
        Just(LoadBalancing::PowerOfTwoChoices),
        Just(LoadBalancing::IpHash),
        Just(LoadBalancing::ConsistentHash),
        Just(LoadBalancing::Maglev),
        Just(LoadBalancing::PeakEwma),
        Just(LoadBalancing::Sticky),
    ]
}

fn sticky() -> impl Strategy<Value = StickySession> {
    (
        name(),
        any::<u64>(),
        name(),
        any::<bool>(),
        prop_oneof![
            Just(SameSite::Lax),
            Just(SameSite::Strict),
            Just(SameSite::None)
        ],
        load_balancing(),
    )
        .prop_map(
            |(cookie_name, cookie_ttl_secs, cookie_path, cookie_secure, same_site, fallback)| {
                StickySession {
                    cookie_name,
                    cookie_ttl_secs,
                    cookie_path,
                    cookie_secure,
                    same_site,
                    fallback,
                }
            },
        )
}

fn health_check() -> impl Strategy<Value = HealthCheck> {
    let kind = prop_oneof![
        Just(HealthCheckKind::Tcp),
        (name(), any::<u16>(), option::of(name())).prop_map(|(path, expected_status, host)| {
            HealthCheckKind::Http {
                path,
                expected_status,
                host,
            }
        }),
    ];
    (kind, any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
        |(kind, interval_secs, timeout_secs, healthy_threshold, unhealthy_threshold)| HealthCheck {
            kind,
            interval_secs,
            timeout_secs,
            healthy_threshold,
            unhealthy_threshold,
        },
    )
}

pub fn proxy_config() -> impl Strategy<Value = ProxyConfig> {
    (
        system(),
        vec(listener(), 0..4),
        vec(route(), 0..5),
        vec(upstream(), 0..4),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                system,
                listeners,
                routes,
                upstreams,
                (
                    max_header_size_bytes,
                    max_header_count,
                    max_body_size_bytes,
                    max_connections_per_client,
                    max_total_connections,
                ),
            )| {
                ProxyConfig {
                    system,
                    listeners,
                    routes,
                    upstreams,
                    limits: Limits {
                        max_header_size_bytes,
                        max_header_count,
                        max_body_size_bytes,
                        max_connections_per_client,
                        max_total_connections,
                    },
                    filters: Vec::new(),
                }
            },
        )
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u32>(), any::<u32>(), name()).prop_map(|(protocol_version, pid, software_version)| {
        Hello {
            protocol_version,
            pid,
            software_version,
        }
    })
}

/// Ticket keys as the master sends them: none to a few, any bytes.
pub fn ticket_keys() -> impl Strategy<Value = TicketKeys> {
    let key = (
        any::<[u8; TICKET_KEY_NAME_LEN]>(),
        any::<[u8; TICKET_KEY_SECRET_LEN]>(),
        any::<u64>(),
    )
        .prop_map(|(name, secret, created_unix_s)| TicketKey {
            name,
            secret,
            created_unix_s,
        });
    (vec(key, 0..3), any::<u32>()).prop_map(|(keys, lifetime_s)| TicketKeys { keys, lifetime_s })
}

fn worker_start() -> impl Strategy<Value = WorkerStart> {
    let handle = (name(), name()).prop_map(|(name, address)| ListenerHandle { name, address });
    (
        any::<u32>(),
        any::<u64>(),
        proxy_config(),
        vec(handle, 0..4),
        ticket_keys(),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(worker_id, generation, config, listeners, keys, cache)| WorkerStart {
                worker_id,
                generation,
                config: Box::new(config),
                listeners,
                ticket_keys: Box::new(keys),
                session_cache: cache
                    .map(|segment_bytes| Box::new(SessionCacheHandle { segment_bytes })),
            },
        )
}

pub fn master_message() -> impl Strategy<Value = MasterMessage> {
    prop_oneof![
        hello().prop_map(MasterMessage::Hello),
        worker_start().prop_map(MasterMessage::Start),
        any::<u64>().prop_map(|timeout_ms| MasterMessage::Drain { timeout_ms }),
        Just(MasterMessage::Stop),
        any::<u64>().prop_map(|request_id| MasterMessage::StatusRequest { request_id }),
        (any::<u64>(), worker_start())
            .prop_map(|(request_id, start)| MasterMessage::Reconfigure { request_id, start }),
        ticket_keys().prop_map(MasterMessage::TicketKeys),
        Just(MasterMessage::FinishDrain),
    ]
}

/// Refusal counts from 12 numbers, in `Http2Refusals::kinds` order.
pub fn refusals(c: [u64; 12]) -> Http2Refusals {
    Http2Refusals {
        rapid_reset: c[0],
        continuation_flood: c[1],
        header_list_too_large: c[2],
        settings_flood: c[3],
        ping_flood: c[4],
        empty_frames: c[5],
        priority_flood: c[6],
        window_update_flood: c[7],
        control_flood: c[8],
        stream_errors: c[9],
        slow_read: c[10],
        protocol_error: c[11],
    }
}

pub fn worker_message() -> impl Strategy<Value = WorkerMessage> {
    let counters = vec(any::<u64>(), 13).prop_map(|c| WorkerCounters {
        active_connections: c[0],
        accepted_total: c[1],
        requests_total: c[2],
        responses_1xx: c[3],
        responses_2xx: c[4],
        responses_3xx: c[5],
        responses_4xx: c[6],
        responses_5xx: c[7],
        upstream_errors: c[8],
        client_errors: c[9],
        accept_errors: c[10],
        bytes_in: c[11],
        bytes_out: c[12],
    });
    prop_oneof![
        hello().prop_map(WorkerMessage::Hello),
        Just(WorkerMessage::Ready),
        (
            any::<u64>(),
            counters,
            proptest::option::of(any::<[u64; 12]>())
        )
            .prop_map(|(request_id, counters, http2)| WorkerMessage::Status {
                http2: http2.map(|c| Box::new(refusals(c))),
                request_id,
                counters
            }),
        any::<u64>().prop_map(|active_connections| WorkerMessage::Draining { active_connections }),
        ".{0,200}".prop_map(|reason| WorkerMessage::Fatal { reason }),
        any::<u64>().prop_map(|request_id| WorkerMessage::Reconfigured { request_id }),
        (any::<u64>(), ".{0,200}").prop_map(|(request_id, reason)| {
            WorkerMessage::ReconfigureFailed { request_id, reason }
        }),
    ]
}

/// A connected pair of channels, both non-blocking.
pub fn nonblocking_pair() -> (Channel, Channel) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("nonblocking");
    b.set_nonblocking(true).expect("nonblocking");
    (Channel::new(a), Channel::new(b))
}

/// Flush `tx` and poll `rx` until a frame arrives, with a deadline (no sleeping: the
/// sockets are non-blocking and both ends are driven from this thread).
pub fn pump(tx: &mut Channel, rx: &mut Channel) -> ReceivedFrame {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tx.has_pending_output() {
            tx.flush().expect("flush");
        }
        if let Some(frame) = rx.recv().expect("recv") {
            return frame;
        }
        assert!(Instant::now() < deadline, "no frame within the deadline");
        std::thread::yield_now();
    }
}

//! Command line of `zentinel-load` (hand-rolled: the contract is small and fixed).

use std::fmt;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use super::tls::{self, TlsVerify};
use super::{Config, Method, Mode, Verify};

/// A usage error (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

pub fn usage() -> &'static str {
    "usage: zentinel-load --addr HOST:PORT [options]
  --addr ADDR              target, e.g. 127.0.0.1:8080 (required)
  --host NAME              Host header (default: the addr)
  -c, --connections N      concurrent connections (default 64)
  -t, --threads N          event-loop threads (default 2)
  -d, --duration DUR       run time (default 10s); DUR like 500ms, 20s, 2m
  -n, --requests N         stop after exactly N requests (with -d: whichever first)
  --rate RPS               open loop at RPS requests/s in total (default: closed loop)
  --mode keepalive|close   reuse connections (default) or a new connection per request
  --method GET|POST        default GET
  --body BYTES             GET /bytes/BYTES or POST /upload of BYTES (default 1024)
  --path PATH              send this path instead (only status/framing verified)
  --verify checksum|status default checksum
  --timeout DUR            per-request timeout including connect (default 10s)
  --timeline               print every 100 ms bucket (default: per second)
  --timeline-csv FILE      write `t_ms,epoch_ms,ok,failed` per 100 ms
  --json FILE              write the report as JSON
  --tls                    TLS to the target (1.2 or 1.3, ALPN http/1.1); needs --ca or --insecure
  --ca FILE                verify the server's certificate against the CA certificates in FILE
  --insecure               do not verify the server's certificate (its handshake signature is)
  --sni NAME               server name to send and verify (default: --host without its port;
                           an IP address sends no SNI)
  --resume                 new connections resume TLS sessions of earlier ones (default: a full
                           handshake per connection)
The last line of the output is `requests=N failed=N rps=N p50_ms=X p99_ms=X max_ms=X`, with
--tls followed by `handshakes=N resumed=N hps=N` (handshakes completed, resumed, per second).
Exit: 0 no failure, 1 failures, 2 usage error, 3 no request made."
}

/// `500ms`, `20s`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, CliError> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| CliError(format!("bad duration {text:?} (e.g. 500ms, 20s, 2m)")))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(CliError(format!(
                "bad duration unit in {text:?} (ms, s, m or h)"
            )))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(CliError(format!("bad duration {text:?}")));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, CliError> {
    value
        .trim()
        .parse()
        .map_err(|_| CliError(format!("{flag}: bad number {value:?}")))
}

/// Parses the arguments (without the program name). `Ok(None)`: `--help` was asked.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Option<Config>, CliError> {
    let mut addr_text = None;
    let mut host = None;
    let mut connections = 64usize;
    let mut threads = 2usize;
    let mut duration = None;
    let mut requests = None;
    let mut rate = None;
    let mut mode = Mode::KeepAlive;
    let mut method = Method::Get;
    let mut body = 1024u64;
    let mut path = None;
    let mut verify = Verify::Checksum;
    let mut timeout = Duration::from_secs(10);
    let mut timeline_full = false;
    let mut timeline_csv = None;
    let mut json = None;
    let mut tls = false;
    let mut ca = None;
    let mut insecure = false;
    let mut sni = None;
    let mut resume = false;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, CliError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args
                    .next()
                    .ok_or_else(|| CliError(format!("{flag} needs a value"))),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => addr_text = Some(value()?),
            "--host" => host = Some(value()?),
            "-c" | "--connections" => connections = number(&flag, &value()?)?,
            "-t" | "--threads" => threads = number(&flag, &value()?)?,
            "-d" | "--duration" => duration = Some(parse_duration(&value()?)?),
            "-n" | "--requests" => requests = Some(number::<u64>(&flag, &value()?)?),
            "--rate" => {
                let r: f64 = number(&flag, &value()?)?;
                if !(r.is_finite() && r > 0.0) {
                    return Err(CliError(format!("--rate must be > 0, got {r}")));
                }
                rate = Some(r);
            }
            "--mode" => {
                mode = match value()?.as_str() {
                    "keepalive" | "keep-alive" => Mode::KeepAlive,
                    "close" => Mode::Close,
                    other => {
                        return Err(CliError(format!(
                            "--mode {other:?}: expected keepalive or close"
                        )))
                    }
                }
            }
            "--method" => {
                method = match value()?.to_ascii_uppercase().as_str() {
                    "GET" => Method::Get,
                    "POST" => Method::Post,
                    other => {
                        return Err(CliError(format!(
                            "--method {other:?}: expected GET or POST"
                        )))
                    }
                }
            }
            "--body" => body = number(&flag, &value()?)?,
            "--path" => {
                let p = value()?;
                if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(CliError(format!(
                        "--path {p:?}: must start with / and contain no spaces or controls"
                    )));
                }
                path = Some(p);
            }
            "--verify" => {
                verify = match value()?.as_str() {
                    "checksum" => Verify::Checksum,
                    "status" => Verify::Status,
                    other => {
                        return Err(CliError(format!(
                            "--verify {other:?}: expected checksum or status"
                        )))
                    }
                }
            }
            "--timeout" => timeout = parse_duration(&value()?)?,
            "--timeline" | "--tls" | "--insecure" | "--resume" => {
                if inline.is_some() {
                    return Err(CliError(format!("{flag} takes no value")));
                }
                match flag.as_str() {
                    "--timeline" => timeline_full = true,
                    "--tls" => tls = true,
                    "--insecure" => insecure = true,
                    _ => resume = true,
                }
            }
            "--ca" => ca = Some(value()?),
            "--sni" => sni = Some(value()?),
            "--timeline-csv" => timeline_csv = Some(PathBuf::from(value()?)),
            "--json" => json = Some(PathBuf::from(value()?)),
            other => return Err(CliError(format!("unknown argument {other:?}"))),
        }
    }

    let addr_text = addr_text.ok_or_else(|| CliError("--addr HOST:PORT is required".into()))?;
    let addr = addr_text
        .to_socket_addrs()
        .map_err(|e| CliError(format!("--addr {addr_text:?}: {e}")))?
        .next()
        .ok_or_else(|| CliError(format!("--addr {addr_text:?} resolves to no address")))?;
    if connections == 0 {
        return Err(CliError("--connections must be at least 1".into()));
    }
    if threads == 0 {
        return Err(CliError("--threads must be at least 1".into()));
    }
    if timeout.is_zero() {
        return Err(CliError("--timeout must be more than 0".into()));
    }
    let host = host.unwrap_or_else(|| addr_text.clone());
    if host.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(CliError(format!("--host {host:?}: no spaces or controls")));
    }
    let tls = if tls {
        let verify = match (ca, insecure) {
            (Some(file), false) => TlsVerify::Ca(file),
            (None, true) => TlsVerify::Insecure,
            (Some(_), true) => {
                return Err(CliError("--ca and --insecure exclude each other".into()))
            }
            (None, false) => {
                return Err(CliError(
                    "--tls needs --ca FILE (verify the server) or --insecure".into(),
                ))
            }
        };
        let sni = sni.unwrap_or_else(|| tls::host_name(&host).to_owned());
        Some(tls::setup(&sni, verify, resume)?)
    } else {
        if let Some(flag) = [
            (ca.is_some(), "--ca"),
            (insecure, "--insecure"),
            (sni.is_some(), "--sni"),
            (resume, "--resume"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
        {
            return Err(CliError(format!("{flag} only goes with --tls")));
        }
        None
    };
    // -n alone runs until N requests are done; neither -n nor -d: 10 s.
    let duration = match (duration, requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    Ok(Some(Config {
        addr,
        addr_text,
        host,
        connections,
        threads: threads.min(connections),
        duration,
        requests,
        rate,
        mode,
        method,
        body,
        path,
        verify,
        timeout,
        timeline_full,
        timeline_csv,
        json,
        tls,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Config>, CliError> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn defaults_and_errors() {
        let c = parse(&["--addr", "127.0.0.1:9"]).unwrap().unwrap();
        assert_eq!(c.connections, 64);
        assert_eq!(c.threads, 2);
        assert_eq!(c.duration, Some(Duration::from_secs(10)));
        assert_eq!(c.host, "127.0.0.1:9");
        assert_eq!(c.request_path(), "/bytes/1024");
        let c = parse(&["--addr=127.0.0.1:9", "-n", "5", "-c", "1"])
            .unwrap()
            .unwrap();
        assert_eq!((c.duration, c.requests, c.threads), (None, Some(5), 1));
        assert!(parse(&["-c", "3"]).is_err());
        assert!(parse(&["--addr", "127.0.0.1:9", "--mode", "x"]).is_err());
        assert!(parse(&["--addr", "127.0.0.1:9", "--bogus"]).is_err());
        assert!(parse(&["--addr", "127.0.0.1:9", "-c"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn tls_options() {
        let c = parse(&["--addr", "127.0.0.1:9"]).unwrap().unwrap();
        assert!(c.tls.is_none());
        let c = parse(&[
            "--addr",
            "127.0.0.1:9",
            "--tls",
            "--insecure",
            "--host",
            "a.test:9",
        ])
        .unwrap()
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!((tls.sni.as_str(), tls.resume), ("a.test", false));
        let c = parse(&[
            "--addr",
            "127.0.0.1:9",
            "--tls",
            "--insecure",
            "--sni=b.test",
            "--resume",
        ])
        .unwrap()
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!((tls.sni.as_str(), tls.resume), ("b.test", true));
        for bad in [
            &["--tls"][..],
            &["--tls", "--ca", "x.pem", "--insecure"],
            &["--tls", "--ca", "/nonexistent/ca.pem"],
            &["--insecure"],
            &["--resume"],
            &["--sni", "a.test"],
            &["--tls=yes", "--insecure"],
        ] {
            let mut args = vec!["--addr", "127.0.0.1:9"];
            args.extend_from_slice(bad);
            assert!(parse(&args).is_err(), "{bad:?} must be refused");
        }
    }
}

//! What an access-log `format` means, and the `$variable` templates.
//!
//! Upstream Zentinel knows two formats: `json` (its default; any name it does not know is
//! written as `json` too) and `combined` (also spelled `common` or `clf`): nginx's combined
//! line with the trace id and the duration appended. A format holding a `$variable` is a
//! template, this build's addition.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Entry, LineContext};

/// Upstream's `combined`: nginx's combined line, then the trace id and `<duration>ms`.
pub const COMBINED: &str = "$remote_addr - - [$time_local] \"$method $path $protocol\" $status $body_bytes_sent \"$referer\" \"$user_agent\" $trace_id ${duration_ms}ms";
/// `combined` with `include-trace-id #false`: `-` keeps the columns where parsers expect them.
pub const COMBINED_NO_TRACE_ID: &str = "$remote_addr - - [$time_local] \"$method $path $protocol\" $status $body_bytes_sent \"$referer\" \"$user_agent\" - ${duration_ms}ms";

/// The names upstream maps to its combined line.
const COMBINED_NAMES: &[&str] = &["combined", "common", "clf"];

/// Every variable a template may use.
pub const VARIABLES: &[&str] = &[
    "remote_addr",
    "remote_port",
    "time_local",
    "time_iso8601",
    "msec",
    "method",
    "path",
    "protocol",
    "status",
    "bytes",
    "body_bytes_sent",
    "duration_ms",
    "request_time",
    "upstream",
    "host",
    "referer",
    "user_agent",
    "listener",
    "worker_id",
    "pid",
    "trace_id",
];

/// How lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Upstream's JSON object, keys chosen by `fields`.
    Json,
    Template(Template),
}

impl Format {
    /// `format` as upstream reads it (names case-insensitively), or a template. The error names
    /// the offending variable and lists the known ones.
    pub fn parse(format: &str, include_trace_id: bool) -> Result<Format, String> {
        let name = format.trim().to_ascii_lowercase();
        if name == "json" {
            return Ok(Format::Json);
        }
        if COMBINED_NAMES.contains(&name.as_str()) {
            let text = if include_trace_id {
                COMBINED
            } else {
                COMBINED_NO_TRACE_ID
            };
            return Template::parse(text).map(Format::Template);
        }
        if format.contains('$') {
            return Template::parse(format).map(Format::Template);
        }
        // Upstream writes JSON for any name it does not know (`custom` included).
        Ok(Format::Json)
    }

    /// A name neither upstream nor this build knows, holding no `$variable`: written as
    /// `json`, as upstream does (the configuration warns).
    pub fn is_unknown_name(format: &str) -> bool {
        let name = format.trim().to_ascii_lowercase();
        name != "json" && !COMBINED_NAMES.contains(&name.as_str()) && !format.contains('$')
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    RemoteAddr,
    RemotePort,
    TimeLocal,
    TimeIso8601,
    Msec,
    Method,
    Path,
    Protocol,
    Status,
    Bytes,
    BodyBytesSent,
    DurationMs,
    RequestTime,
    Upstream,
    Host,
    Referer,
    UserAgent,
    Listener,
    WorkerId,
    Pid,
    TraceId,
    ClientCertSubject,
}

impl Var {
    fn from_name(name: &str) -> Option<Var> {
        Some(match name {
            "remote_addr" => Var::RemoteAddr,
            "remote_port" => Var::RemotePort,
            "time_local" => Var::TimeLocal,
            "time_iso8601" => Var::TimeIso8601,
            "msec" => Var::Msec,
            "method" => Var::Method,
            "path" => Var::Path,
            "protocol" => Var::Protocol,
            "status" => Var::Status,
            "bytes" => Var::Bytes,
            "body_bytes_sent" => Var::BodyBytesSent,
            "duration_ms" => Var::DurationMs,
            "request_time" => Var::RequestTime,
            "upstream" => Var::Upstream,
            "host" => Var::Host,
            "referer" => Var::Referer,
            "user_agent" => Var::UserAgent,
            "listener" => Var::Listener,
            "worker_id" => Var::WorkerId,
            "pid" => Var::Pid,
            "trace_id" => Var::TraceId,
            "client_cert_subject" => Var::ClientCertSubject,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A parsed template: literal text and `$variables` (or `${variable}` when a letter follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.contains(['\n', '\r']) {
            return Err("an access-log format must fit on one line (no newline)".to_owned());
        }
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            lit.push_str(&rest[..pos]);
            rest = &rest[pos + 1..];
            let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| "unterminated `${` in the access-log format".to_owned())?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            if name.is_empty() {
                return Err(
                    "`$` without a variable name in the access-log format (known: $remote_addr, $method, ...)"
                        .to_owned(),
                );
            }
            let var = Var::from_name(name).ok_or_else(|| {
                format!(
                    "unknown access-log variable `${name}`; known: {}",
                    VARIABLES
                        .iter()
                        .map(|v| format!("${v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var(var));
            rest = after;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template { pieces })
    }

    /// Append one line (with its `\n`) for `e`.
    pub fn render(&self, e: &Entry, ctx: &LineContext<'_>, out: &mut Vec<u8>) {
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Var(v) => render_var(*v, e, ctx, out),
            }
        }
        out.push(b'\n');
    }
}

fn render_var(v: Var, e: &Entry, ctx: &LineContext<'_>, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = match v {
        Var::RemoteAddr => write!(out, "{}", ctx.peer.ip()),
        Var::RemotePort => write!(out, "{}", ctx.peer.port()),
        Var::TimeLocal => {
            write_time(out, e.wall, false);
            Ok(())
        }
        Var::TimeIso8601 => {
            write_time(out, e.wall, true);
            Ok(())
        }
        Var::Msec => {
            let d = e.wall.duration_since(UNIX_EPOCH).unwrap_or_default();
            write!(out, "{}.{:03}", d.as_secs(), d.subsec_millis())
        }
        Var::Method => {
            escape(out, e.method.as_bytes());
            Ok(())
        }
        Var::Path => {
            escape(out, e.target.as_bytes());
            Ok(())
        }
        Var::Protocol => out.write_all(e.protocol.as_bytes()),
        Var::Status => write!(out, "{}", e.status),
        Var::Bytes => write!(out, "{}", e.bytes),
        Var::BodyBytesSent => write!(out, "{}", e.body_bytes_sent()),
        Var::DurationMs => write!(out, "{}", ctx.duration.as_millis()),
        Var::RequestTime => write!(
            out,
            "{}.{:03}",
            ctx.duration.as_secs(),
            ctx.duration.subsec_millis()
        ),
        Var::Upstream => match e.upstream {
            Some(a) => write!(out, "{a}"),
            None => out.write_all(b"-"),
        },
        Var::Host => {
            escape_or_dash(out, &e.host);
            Ok(())
        }
        Var::Referer => {
            escape_or_dash(out, &e.referer);
            Ok(())
        }
        Var::UserAgent => {
            escape_or_dash(out, &e.user_agent);
            Ok(())
        }
        Var::Listener => {
            escape(out, ctx.listener.as_bytes());
            Ok(())
        }
        Var::WorkerId => write!(out, "{}", ctx.worker_id),
        Var::Pid => write!(out, "{}", std::process::id()),
        Var::TraceId => {
            escape_or_dash(out, e.trace_id.as_bytes());
            Ok(())
        }
        Var::ClientCertSubject => {
            escape_or_dash(out, e.client_cert_subject.as_bytes());
            Ok(())
        }
    };
}

fn escape_or_dash(out: &mut Vec<u8>, s: &[u8]) {
    if s.is_empty() {
        out.push(b'-');
    } else {
        escape(out, s);
    }
}

/// Printable ASCII as is, except `"` and `\`; everything else as `\xHH` (nginx's escaping).
fn escape(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
}

/// `27/Nov/2026:03:58:35 +0000` (nginx `$time_local`, always UTC) or `2026-11-27T03:58:35+00:00`.
pub(crate) fn write_time(out: &mut Vec<u8>, t: SystemTime, iso: bool) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, h, m, s) = civil(t);
    let _ = if iso {
        write!(
            out,
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}+00:00"
        )
    } else {
        let name = MONTHS[(month - 1).clamp(0, 11) as usize];
        write!(out, "{day:02}/{name}/{year:04}:{h:02}:{m:02}:{s:02} +0000")
    };
}

/// RFC 3339 with milliseconds, `2026-11-27T03:58:35.042+00:00` (the `json` timestamp; upstream
/// writes the same shape).
pub(crate) fn write_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    let (year, month, day, h, m, s) = civil(t);
    let ms = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_millis();
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}+00:00"
    );
}

/// UTC year, month, day, hour, minute, second.
fn civil(t: SystemTime) -> (i64, i64, i64, u64, u64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = crate::http::files::civil_from_days(days);
    (year, month, day, rem / 3600, (rem % 3600) / 60, rem % 60)
}

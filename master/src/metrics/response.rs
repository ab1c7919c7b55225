//! What a scrape request gets: the exposition for `GET` or `HEAD` of the configured path, a
//! short error otherwise.

pub(super) fn head_end(input: &[u8]) -> Option<usize> {
    if let Some(i) = input.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(i + 4);
    }
    input.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

pub(super) fn answer(head: &[u8], path: &str, render: impl FnOnce() -> String) -> Vec<u8> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return simple(400, "bad request\n");
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return simple(400, "bad request\n");
    }
    let target_path = target.split('?').next().unwrap_or("");
    if target_path != path {
        return simple(404, "not found\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return simple(405, "method not allowed\n"),
    };
    let body = render();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

pub(super) fn simple(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n{allow}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let ok = String::from_utf8(answer(
            b"GET /metrics?x HTTP/1.1\r\n\r\n",
            "/metrics",
            || "a 1\n".into(),
        ))
        .unwrap();
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\na 1\n"),
            "{ok}"
        );
        assert!(ok.contains("Connection: close\r\n"));
        let head = String::from_utf8(answer(
            b"HEAD /metrics HTTP/1.1\r\n\r\n",
            "/metrics",
            || "a 1\n".into(),
        ))
        .unwrap();
        assert!(
            head.ends_with(
                "Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            ),
            "{head}"
        );
        let nf = String::from_utf8(answer(
            b"GET / HTTP/1.1\r\n\r\n",
            "/metrics",
            || unreachable!(),
        ))
        .unwrap();
        assert!(nf.starts_with("HTTP/1.1 404 "));
        let na = String::from_utf8(answer(
            b"POST /metrics HTTP/1.1\r\n\r\n",
            "/metrics",
            || unreachable!(),
        ))
        .unwrap();
        assert!(na.starts_with("HTTP/1.1 405 "));
        let bad =
            String::from_utf8(answer(b"garbage\r\n\r\n", "/metrics", || unreachable!())).unwrap();
        assert!(bad.starts_with("HTTP/1.1 400 "));
    }
}

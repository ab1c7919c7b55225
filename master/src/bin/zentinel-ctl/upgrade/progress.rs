//! The upgrade's progress: one line (or JSON object) per step as the master reports it,
//! until the final answer.

use std::time::{Duration, Instant};

use serde_json::json;
use zentinel_master::upgrade::error_rate::ErrorRate;
use zentinel_master::upgrade::format_duration;
use zentinel_protocol::control::{ControlRequest, ControlResponse};

use crate::client::Connection;
use crate::{print_line, CtlResult};

impl Connection {
    /// Send an upgrade and print each step as it comes, until `Done` or `Failed`. The
    /// connection survives the master's replacement (the new master inherits it), so `wait`
    /// bounds the silence between two steps, not the whole upgrade.
    pub(super) fn upgrade(
        &mut self,
        request: &ControlRequest,
        wait: Duration,
        json: bool,
    ) -> CtlResult<()> {
        self.submit(request)?;
        loop {
            let response = match self.recv_before(Instant::now() + wait) {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return Err(format!(
                        "no progress from the master at {} for {wait:?}; the upgrade may still \
                         be in progress (check `zentinel-ctl status`)",
                        self.socket.display()
                    ))
                }
                Err(e) if e.is_closed() => {
                    return Err(format!(
                        "the master at {} closed the connection before the upgrade finished \
                         (check its log and `zentinel-ctl status`); the outcome is unknown",
                        self.socket.display()
                    ))
                }
                Err(e) => return Err(self.io_error("the upgrade request", &e)),
            };
            let (line, outcome) = upgrade_line(&response, json);
            if let Some(line) = line {
                print_line(&line);
            }
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }
}

/// The printed line of one upgrade response, and the outcome if it is the last one.
fn upgrade_line(response: &ControlResponse, json: bool) -> (Option<String>, Option<CtlResult<()>>) {
    let Some(step) = step(response) else {
        let reason = format!("the master answered the upgrade with {}", response.kind());
        return (None, Some(Err(reason)));
    };
    let line = if json {
        Some(step.object.to_string())
    } else {
        step.text
    };
    (line, step.outcome)
}

/// One upgrade response in both forms: the `--json` object and the text line (`None`: it
/// prints none, the error says it all), with the outcome if it is the last one.
struct Step {
    object: serde_json::Value,
    text: Option<String>,
    outcome: Option<CtlResult<()>>,
}

/// `None`: not an answer to an upgrade.
fn step(response: &ControlResponse) -> Option<Step> {
    let progress = |object, text| Step {
        object,
        text: Some(text),
        outcome: None,
    };
    Some(match response {
        ControlResponse::Progress { message } => progress(
            json!({"event": "progress", "message": message}),
            message.clone(),
        ),
        ControlResponse::MasterReplaced {
            old_pid,
            new_pid,
            ready_ms,
            generation,
            binary,
        } => progress(
            json!({
                "event": "master_replaced", "old_pid": old_pid, "new_pid": new_pid,
                "ready_ms": ready_ms, "generation": generation, "binary": binary,
            }),
            format!(
                "master: pid {old_pid} -> pid {new_pid} ready in {ready_ms} ms (generation \
                 {generation}, binary {binary})"
            ),
        ),
        ControlResponse::WorkerReplaced {
            index,
            total,
            worker_id,
            old_pid,
            new_pid,
            ready_ms,
            old_active_connections,
        } => {
            progress(
                json!({
                    "event": "worker_replaced", "index": index, "total": total,
                    "worker_id": worker_id, "old_pid": old_pid, "new_pid": new_pid,
                    "ready_ms": ready_ms, "old_active_connections": old_active_connections,
                }),
                format!(
                "worker {index}/{total}: pid {old_pid} -> pid {new_pid} ready in {ready_ms} ms, \
                 old draining ({old_active_connections} connection{})",
                if *old_active_connections == 1 { "" } else { "s" }
            ),
            )
        }
        ControlResponse::WorkerRolledBack {
            worker_id,
            failed_pid,
            restored_pid,
        } => progress(
            json!({
                "event": "worker_rolled_back", "worker_id": worker_id,
                "failed_pid": failed_pid, "restored_pid": restored_pid,
            }),
            format!(
                "rollback: worker {worker_id}: pid {failed_pid} (new binary) -> pid \
                 {restored_pid} (previous binary)"
            ),
        ),
        ControlResponse::CanaryComparison {
            worker_id,
            elapsed_ms,
            window_ms,
            new_errors,
            new_requests,
            old_errors,
            old_requests,
        } => {
            let rate = |errors: u64, requests: u64| ErrorRate { errors, requests };
            progress(
                json!({
                    "event": "canary", "worker_id": worker_id, "elapsed_ms": elapsed_ms,
                    "window_ms": window_ms,
                    "new": {"errors": new_errors, "requests": new_requests},
                    "old": {"errors": old_errors, "requests": old_requests},
                }),
                format!(
                    "canary: {:.1}s/{}: new {}, old {}",
                    Duration::from_millis(*elapsed_ms).as_secs_f64(),
                    format_duration(Duration::from_millis(*window_ms)),
                    rate(*new_errors, *new_requests),
                    rate(*old_errors, *old_requests)
                ),
            )
        }
        ControlResponse::Done { message } => Step {
            object: json!({"event": "done", "message": message}),
            text: Some(message.clone()),
            outcome: Some(Ok(())),
        },
        ControlResponse::Failed { message } => Step {
            object: json!({"event": "failed", "message": message}),
            text: None,
            outcome: Some(Err(format!("upgrade failed: {message}"))),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_lines() {
        let (line, outcome) = upgrade_line(
            &ControlResponse::MasterReplaced {
                old_pid: 1,
                new_pid: 2,
                ready_ms: 30,
                generation: 2,
                binary: "/opt/z".into(),
            },
            false,
        );
        assert_eq!(
            line.unwrap(),
            "master: pid 1 -> pid 2 ready in 30 ms (generation 2, binary /opt/z)"
        );
        assert!(outcome.is_none());
        let replaced = ControlResponse::WorkerReplaced {
            index: 1,
            total: 4,
            worker_id: 0,
            old_pid: 123,
            new_pid: 456,
            ready_ms: 38,
            old_active_connections: 12,
        };
        assert_eq!(
            upgrade_line(&replaced, false).0.unwrap(),
            "worker 1/4: pid 123 -> pid 456 ready in 38 ms, old draining (12 connections)"
        );
        let json: serde_json::Value =
            serde_json::from_str(&upgrade_line(&replaced, true).0.unwrap()).unwrap();
        assert_eq!(json["event"], "worker_replaced");
        assert_eq!(json["new_pid"], 456);
        let comparison = ControlResponse::CanaryComparison {
            worker_id: 0,
            elapsed_ms: 2_000,
            window_ms: 10_000,
            new_errors: 3,
            new_requests: 400,
            old_errors: 1,
            old_requests: 1_000,
        };
        let (line, outcome) = upgrade_line(&comparison, false);
        assert_eq!(
            line.unwrap(),
            "canary: 2.0s/10s: new 0.75% errors (3 of 400 requests), old 0.10% errors (1 of 1000 \
             requests)"
        );
        assert!(outcome.is_none());
        let json: serde_json::Value =
            serde_json::from_str(&upgrade_line(&comparison, true).0.unwrap()).unwrap();
        assert_eq!(json["event"], "canary");
        assert_eq!(json["new"]["requests"], 400);
        assert_eq!(json["old"]["errors"], 1);
        let (line, outcome) = upgrade_line(
            &ControlResponse::Failed {
                message: "x".into(),
            },
            false,
        );
        assert!(line.is_none());
        assert_eq!(outcome.unwrap().unwrap_err(), "upgrade failed: x");
        let (_, outcome) = upgrade_line(
            &ControlResponse::Done {
                message: "ok".into(),
            },
            true,
        );
        assert!(outcome.unwrap().is_ok());
    }
}

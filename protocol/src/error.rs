use std::io;

/// Every way a frame or message can be bad. Never a panic, never UB.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error on channel: {0}")]
    Io(#[source] io::Error),
    #[error("peer closed the channel")]
    Closed,
    #[error("peer closed the channel in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame announces {announced} fds but {received} arrived")]
    FdCountMismatch { announced: usize, received: usize },
    #[error("control message truncated (MSG_CTRUNC): file descriptors were lost")]
    ControlTruncated,
    #[error("message failed validation: {0}")]
    Invalid(String),
    #[error("protocol version mismatch: we speak {ours}, peer speaks {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("unexpected message: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
}

impl From<io::Error> for ProtocolError {
    /// `fd_passing` returns `io::Result` but reports `MSG_CTRUNC` as an `io::Error` wrapping
    /// [`ProtocolError::ControlTruncated`]; unwrap it so callers can match on the variant.
    fn from(err: io::Error) -> Self {
        let wraps_protocol_error = err
            .get_ref()
            .is_some_and(|inner| inner.is::<ProtocolError>());
        if wraps_protocol_error {
            if let Some(inner) = err.into_inner() {
                if let Ok(protocol) = inner.downcast::<ProtocolError>() {
                    return *protocol;
                }
            }
            // Unreachable in practice: `get_ref` just saw a ProtocolError.
            return ProtocolError::Invalid("malformed wrapped protocol error".into());
        }
        ProtocolError::Io(err)
    }
}

impl ProtocolError {
    /// True for the errors that mean the peer is gone (as opposed to a bad message).
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            ProtocolError::Closed | ProtocolError::Truncated { .. }
        ) || matches!(self, ProtocolError::Io(e) if matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ))
    }
}

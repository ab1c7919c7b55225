use std::io;

/// Every way a frame or message can be bad. Never a panic, never UB.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed (other than `EINTR` and `WouldBlock`, which are handled).
    #[error("i/o error on channel: {0}")]
    Io(#[source] io::Error),
    /// The peer closed the channel between frames.
    #[error("peer closed the channel")]
    Closed,
    /// The peer closed the channel in the middle of a frame.
    #[error("peer closed the channel in the middle of a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes of the frame received.
        got: usize,
        /// Bytes the frame's header announced (header included).
        expected: usize,
    },
    /// A frame's header announced a payload larger than the receiver accepts (or a sender
    /// was asked to send one).
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload allowed.
        max: usize,
    },
    /// A frame arrived with another number of fds than its header announced.
    #[error("frame announces {announced} fds but {received} arrived")]
    FdCountMismatch {
        /// Fds the header announced.
        announced: usize,
        /// Fds that came with the frame's bytes.
        received: usize,
    },
    /// More fds were sent than the receive buffer holds: the kernel dropped some (the ones
    /// that did arrive were closed).
    #[error("control message truncated (MSG_CTRUNC): file descriptors were lost")]
    ControlTruncated,
    /// A frame's payload is not a valid archive of the expected message, or breaks a rule
    /// of the protocol (the text says which).
    #[error("message failed validation: {0}")]
    Invalid(String),
    /// The peer's `Hello` carries another protocol version.
    #[error("protocol version mismatch: we speak {ours}, peer speaks {theirs}")]
    VersionMismatch {
        /// The version this side speaks.
        ours: u32,
        /// The version the peer announced.
        theirs: u32,
    },
    /// A valid message, but not one this side can take at this point of the exchange.
    #[error("unexpected message: expected {expected}, got {got}")]
    Unexpected {
        /// What was expected (e.g. `Hello`).
        expected: &'static str,
        /// What arrived instead.
        got: String,
    },
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

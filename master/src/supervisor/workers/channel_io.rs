//! A worker's channel as the loop drives it: registered for readability, writable interest
//! only while output waits, and each message written in the layout the worker's protocol reads.

use super::*;

pub(in crate::supervisor) fn register_channel(
    registry: &Registry,
    process: &mut WorkerProcess,
) -> Result<(), ProtocolError> {
    let Some(channel) = process.channel.as_ref() else {
        return Err(ProtocolError::Closed);
    };
    channel.stream().set_nonblocking(true)?;
    registry.register(
        &mut SourceFd(&channel.as_raw_fd()),
        process.token,
        Interest::READABLE,
    )?;
    process.wants_write = false;
    Ok(())
}

/// Stop polling its channel without closing it (another master reads it during a
/// hand-over); `register_channel` resumes.
pub(in crate::supervisor) fn deregister_channel(registry: &Registry, process: &mut WorkerProcess) {
    if let Some(channel) = process.channel.as_ref() {
        let _ = registry.deregister(&mut SourceFd(&channel.as_raw_fd()));
    }
    process.wants_write = false;
}

pub(in crate::supervisor) fn close_channel(registry: &Registry, process: &mut WorkerProcess) {
    if let Some(channel) = process.channel.take() {
        // Closing the fd would drop it from the epoll set as well; deregistering first keeps
        // the registry's view exact.
        let _ = registry.deregister(&mut SourceFd(&channel.as_raw_fd()));
    }
    process.wants_write = false;
}

pub(in crate::supervisor) fn send(
    registry: &Registry,
    process: &mut WorkerProcess,
    message: &MasterMessage,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ProtocolError> {
    let channel = process.channel.as_mut().ok_or(ProtocolError::Closed)?;
    // An adopted worker of an older protocol reads only its own layout (protocol 1's
    // `Drain`, `Stop` and `StatusRequest` are protocol 2's). Callers do not send a message an
    // older worker cannot read; if one did, it is refused here rather than sent.
    match process.protocol_version {
        0..=2 => {
            let legacy = MasterMessageV2::try_from(message)
                .map_err(|err| ProtocolError::Invalid(err.to_string()))?;
            channel.send(&legacy, fds)?;
        }
        3 => {
            let legacy = MasterMessageV3::try_from(message)
                .map_err(|err| ProtocolError::Invalid(err.to_string()))?;
            channel.send(&legacy, fds)?;
        }
        zentinel_protocol::messages::v4::VERSION => {
            // Protocol 4's layout is today's without the variants added since.
            let same = zentinel_protocol::messages::v4::for_protocol_4(message)
                .map_err(|err| ProtocolError::Invalid(err.to_string()))?;
            channel.send(same, fds)?;
        }
        zentinel_protocol::messages::v5::VERSION => {
            // Protocol 5's layout is today's without `FilterSegments`.
            let same = zentinel_protocol::messages::v5::for_protocol_5(message)
                .map_err(|err| ProtocolError::Invalid(err.to_string()))?;
            channel.send(same, fds)?;
        }
        _ => {
            channel.send(message, fds)?;
        }
    }
    update_interest(registry, process)
}

pub(in crate::supervisor) fn flush(
    registry: &Registry,
    process: &mut WorkerProcess,
) -> Result<(), ProtocolError> {
    let channel = process.channel.as_mut().ok_or(ProtocolError::Closed)?;
    channel.flush()?;
    update_interest(registry, process)
}

pub(in crate::supervisor) fn update_interest(
    registry: &Registry,
    process: &mut WorkerProcess,
) -> Result<(), ProtocolError> {
    let Some(channel) = process.channel.as_ref() else {
        return Ok(());
    };
    let wants_write = channel.has_pending_output();
    if wants_write != process.wants_write {
        let interest = if wants_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(&mut SourceFd(&channel.as_raw_fd()), process.token, interest)?;
        process.wants_write = wants_write;
    }
    Ok(())
}

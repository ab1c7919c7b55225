//! Channel behaviour over real socketpairs: fd passing, partial I/O, EOF and limits.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use zentinel_protocol::fd_passing::{recv_with_fds, send_with_fds};
use zentinel_protocol::frame::{self, FrameHeader, HEADER_LEN, MAX_FDS_PER_FRAME};
use zentinel_protocol::messages::*;
use zentinel_protocol::{Channel, ProtocolError};

fn pipe() -> (File, File) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (File::from(r), File::from(w))
}

fn has_cloexec(fd: BorrowedFd<'_>) -> bool {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
}

#[test]
fn passes_a_pipe_fd_that_works_and_is_cloexec() {
    let (mut tx, mut rx) = common::nonblocking_pair();
    let (read_end, mut write_end) = pipe();
    tx.send(&WorkerMessage::Ready, &[read_end.as_fd()]).unwrap();
    // The channel owns a duplicate: our copy can go right away.
    drop(read_end);

    let mut frame = common::pump(&mut tx, &mut rx);
    assert!(matches!(
        frame.access::<WorkerMessage>().unwrap(),
        ArchivedWorkerMessage::Ready
    ));
    let mut fds = frame.take_fds();
    assert_eq!(fds.len(), 1);
    let received = fds.pop().unwrap();
    assert!(has_cloexec(received.as_fd()));

    write_end.write_all(b"through the socket").unwrap();
    drop(write_end);
    let mut got = String::new();
    File::from(received).read_to_string(&mut got).unwrap();
    assert_eq!(got, "through the socket");
}

#[test]
fn passes_a_batch_of_socket_fds_in_order() {
    let (mut tx, mut rx) = common::nonblocking_pair();
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..5).map(|_| UnixStream::pair().unwrap()).collect();
    let fds: Vec<BorrowedFd<'_>> = pairs.iter().map(|(a, _)| a.as_fd()).collect();
    tx.send(&MasterMessage::StatusRequest { request_id: 1 }, &fds)
        .unwrap();

    let frame = common::pump(&mut tx, &mut rx);
    assert_eq!(frame.fds.len(), 5);
    for (i, (fd, (_, peer))) in frame.fds.iter().zip(&pairs).enumerate() {
        assert!(has_cloexec(fd.as_fd()));
        let mut sock = UnixStream::from(fd.try_clone().unwrap());
        sock.write_all(&[i as u8]).unwrap();
        let mut byte = [0u8; 1];
        (&*peer).read_exact(&mut byte).unwrap();
        assert_eq!(byte[0], i as u8, "fd {i} arrived out of order");
    }
}

#[test]
fn maximum_fd_batch_passes_and_one_more_is_refused() {
    let (mut tx, mut rx) = common::nonblocking_pair();
    let (read_end, _write_end) = pipe();
    let fds = vec![read_end.as_fd(); MAX_FDS_PER_FRAME];
    tx.send(&WorkerMessage::Ready, &fds).unwrap();
    assert_eq!(common::pump(&mut tx, &mut rx).fds.len(), MAX_FDS_PER_FRAME);

    let too_many = vec![read_end.as_fd(); MAX_FDS_PER_FRAME + 1];
    assert!(matches!(
        tx.send(&WorkerMessage::Ready, &too_many),
        Err(ProtocolError::Invalid(_))
    ));
    assert!(!tx.has_pending_output());
}

#[test]
fn fds_stay_with_their_frames_among_many() {
    let (mut tx, mut rx) = common::nonblocking_pair();
    let (read_end, _write_end) = pipe();
    // Frames with 0..3 fds interleaved; the receiver must attach each batch to its frame.
    for i in 0..40u64 {
        let n = (i % 4) as usize;
        let fds = vec![read_end.as_fd(); n];
        tx.send(&MasterMessage::Drain { timeout_ms: i }, &fds)
            .unwrap();
    }
    for i in 0..40u64 {
        let frame = common::pump(&mut tx, &mut rx);
        match frame.access::<MasterMessage>().unwrap() {
            ArchivedMasterMessage::Drain { timeout_ms } => assert_eq!(timeout_ms.to_native(), i),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(frame.fds.len(), (i % 4) as usize, "frame {i}");
    }
}

#[test]
fn many_frames_arrive_across_partial_reads() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut rx = Channel::new(b);
    // Write the frames by hand a few bytes at a time so that reads split headers and payloads.
    let mut stream = Vec::new();
    let msgs: Vec<WorkerMessage> = (0..200)
        .map(|i| WorkerMessage::Fatal {
            reason: format!("reason number {i} {}", "x".repeat(i % 37)),
        })
        .collect();
    for msg in &msgs {
        stream.extend(frame::encode(msg, 0, 1 << 20).unwrap());
    }
    let writer = std::thread::spawn(move || {
        let mut a = a;
        for chunk in stream.chunks(7) {
            a.write_all(chunk).unwrap();
        }
    });
    for msg in &msgs {
        let frame = rx.recv().unwrap().expect("blocking recv");
        assert_eq!(&frame.deserialize::<WorkerMessage>().unwrap(), msg);
    }
    writer.join().unwrap();
    assert!(matches!(rx.recv(), Err(ProtocolError::Closed)));
}

#[test]
fn nonblocking_send_queues_when_the_socket_is_full_then_flushes() {
    let (mut tx, mut rx) = common::nonblocking_pair();
    let big = WorkerMessage::Fatal {
        reason: "z".repeat(256 * 1024),
    };
    let (read_end, _write_end) = pipe();
    // Keep sending until the socket buffer is full; some frames carry fds so that queued
    // fds are exercised too.
    let mut sent = 0usize;
    loop {
        // Even-numbered frames carry an fd (`& 1`: `is_multiple_of` is newer than our MSRV).
        let fds = if sent & 1 == 0 {
            vec![read_end.as_fd()]
        } else {
            vec![]
        };
        let flushed = tx.send(&big, &fds).unwrap();
        sent += 1;
        if !flushed {
            break;
        }
        assert!(sent < 1000, "socket buffer never filled");
    }
    assert!(tx.has_pending_output());
    // A second send while full only queues.
    assert!(!tx.send(&WorkerMessage::Ready, &[]).unwrap());

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = 0usize;
    while received < sent {
        if tx.has_pending_output() {
            tx.flush().unwrap();
        }
        while let Some(frame) = rx.recv().unwrap() {
            assert_eq!(frame.deserialize::<WorkerMessage>().unwrap(), big);
            assert_eq!(
                frame.fds.len(),
                usize::from(received & 1 == 0),
                "frame {received}"
            );
            received += 1;
            if received == sent {
                break;
            }
        }
        assert!(Instant::now() < deadline, "stuck at {received}/{sent}");
    }
    let last = common::pump(&mut tx, &mut rx);
    assert_eq!(
        last.deserialize::<WorkerMessage>().unwrap(),
        WorkerMessage::Ready
    );
    assert!(tx.flush().unwrap());
    assert!(!tx.has_pending_output());
}

#[test]
fn oversize_frame_is_refused_from_its_header() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut rx = Channel::with_max_frame(b, 1024);
    let header = FrameHeader {
        payload_len: 1025,
        fd_count: 0,
    };
    // Only the header is sent: the error must not wait for (or buffer) the payload.
    a.write_all(&header.to_bytes()).unwrap();
    match rx.recv() {
        Err(ProtocolError::FrameTooLarge {
            len: 1025,
            max: 1024,
        }) => {}
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // The stream cannot be resynchronized: the error sticks.
    assert!(matches!(
        rx.recv(),
        Err(ProtocolError::FrameTooLarge { .. })
    ));

    let (c, _d) = UnixStream::pair().unwrap();
    let mut tx = Channel::with_max_frame(c, 16);
    let err = tx
        .send(
            &WorkerMessage::Fatal {
                reason: "x".repeat(100),
            },
            &[],
        )
        .unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { max: 16, .. }),
        "{err}"
    );
}

#[test]
fn eof_inside_a_frame_is_truncated() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut rx = Channel::new(b);
    let bytes = frame::encode(&WorkerMessage::Ready, 0, 1024).unwrap();
    a.write_all(&bytes[..bytes.len() - 1]).unwrap();
    drop(a);
    match rx.recv() {
        Err(ProtocolError::Truncated { got, expected }) => {
            assert_eq!(got, bytes.len() - 1);
            assert_eq!(expected, bytes.len());
        }
        other => panic!("expected Truncated, got {other:?}"),
    }

    // EOF inside the header.
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut rx = Channel::new(b);
    a.write_all(&bytes[..3]).unwrap();
    drop(a);
    assert!(matches!(
        rx.recv(),
        Err(ProtocolError::Truncated {
            got: 3,
            expected: HEADER_LEN
        })
    ));
}

#[test]
fn eof_between_frames_is_closed_after_buffered_frames() {
    let (a, b) = UnixStream::pair().unwrap();
    let (mut tx, mut rx) = (Channel::new(a), Channel::new(b));
    tx.send(&WorkerMessage::Ready, &[]).unwrap();
    tx.send(
        &WorkerMessage::Draining {
            active_connections: 3,
        },
        &[],
    )
    .unwrap();
    drop(tx);
    assert_eq!(
        rx.recv()
            .unwrap()
            .unwrap()
            .deserialize::<WorkerMessage>()
            .unwrap(),
        WorkerMessage::Ready
    );
    assert_eq!(
        rx.recv()
            .unwrap()
            .unwrap()
            .deserialize::<WorkerMessage>()
            .unwrap(),
        WorkerMessage::Draining {
            active_connections: 3
        }
    );
    let err = rx.recv().unwrap_err();
    assert!(matches!(err, ProtocolError::Closed));
    assert!(err.is_closed());
}

#[test]
fn send_to_a_closed_peer_is_closed_not_sigpipe() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    let mut tx = Channel::new(a);
    assert!(matches!(
        tx.send(&WorkerMessage::Ready, &[]),
        Err(ProtocolError::Closed)
    ));
}

#[test]
fn missing_fds_are_a_count_mismatch() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let mut rx = Channel::new(b);
    // Announce two fds, send none.
    a.write_all(&frame::encode(&WorkerMessage::Ready, 2, 1024).unwrap())
        .unwrap();
    assert!(matches!(
        rx.recv(),
        Err(ProtocolError::FdCountMismatch {
            announced: 2,
            received: 0
        })
    ));

    // Announce one, send two.
    let (read_end, _w) = pipe();
    let bytes = frame::encode(&WorkerMessage::Ready, 1, 1024).unwrap();
    send_with_fds(a.as_fd(), &bytes, &[read_end.as_fd(), read_end.as_fd()]).unwrap();
    assert!(matches!(
        rx.recv(),
        Err(ProtocolError::FdCountMismatch {
            announced: 1,
            received: 2
        })
    ));
}

#[test]
fn unannounced_fds_are_never_handed_to_a_later_frame() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut rx = Channel::new(b);
    let (read_end, _w) = pipe();
    // Frame 1 announces no fds but carries one; frame 2 announces one but carries none.
    let f1 = frame::encode(&WorkerMessage::Ready, 0, 1024).unwrap();
    let f2 = frame::encode(&WorkerMessage::Ready, 1, 1024).unwrap();
    send_with_fds(a.as_fd(), &f1, &[read_end.as_fd()]).unwrap();
    send_with_fds(a.as_fd(), &f2, &[]).unwrap();
    assert!(rx.recv().unwrap().unwrap().fds.is_empty());
    assert!(matches!(rx.recv(), Err(ProtocolError::Invalid(_))));
}

#[test]
fn too_many_fds_is_control_truncated() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut rx = Channel::new(b);
    let (read_end, _w) = pipe();
    let raw = vec![read_end.as_raw_fd(); MAX_FDS_PER_FRAME + 10];
    let bytes = frame::encode_payload(b"junk", 0, 1024).unwrap();
    nix::sys::socket::sendmsg::<()>(
        a.as_raw_fd(),
        &[std::io::IoSlice::new(&bytes)],
        &[nix::sys::socket::ControlMessage::ScmRights(&raw)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert!(matches!(rx.recv(), Err(ProtocolError::ControlTruncated)));
    // The channel stays failed rather than misattributing later fds.
    assert!(matches!(rx.recv(), Err(ProtocolError::ControlTruncated)));
}

#[test]
fn raw_fd_passing_round_trip() {
    let (a, b) = UnixStream::pair().unwrap();
    let (read_end, mut write_end) = pipe();
    assert_eq!(
        send_with_fds(a.as_fd(), b"hi", &[read_end.as_fd()]).unwrap(),
        2
    );
    let mut buf = [0u8; 16];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
    assert_eq!(&buf[..n], b"hi");
    assert_eq!(fds.len(), 1);
    assert!(has_cloexec(fds[0].as_fd()));
    write_end.write_all(b"!").unwrap();
    let mut byte = [0u8; 1];
    File::from(fds.pop().unwrap())
        .read_exact(&mut byte)
        .unwrap();
    assert_eq!(&byte, b"!");
}

#[test]
fn recv_timeout_times_out_then_receives() {
    let (a, b) = UnixStream::pair().unwrap();
    let (mut tx, mut rx) = (Channel::new(a), Channel::new(b));
    let started = Instant::now();
    let err = rx.recv_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(
        matches!(&err, ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "{err}"
    );

    tx.send(
        &MasterMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            pid: 1,
            software_version: "0.1.0".into(),
        }),
        &[],
    )
    .unwrap();
    let frame = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    match frame.access::<MasterMessage>().unwrap() {
        ArchivedMasterMessage::Hello(hello) => {
            zentinel_protocol::channel::check_version(hello.protocol_version.to_native()).unwrap()
        }
        other => panic!("unexpected {other:?}"),
    }
    drop(tx);
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(10)),
        Err(ProtocolError::Closed)
    ));
}

#[test]
fn from_owned_fd_wraps_an_inherited_socket() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut tx = Channel::from_owned_fd(OwnedFd::from(a));
    let mut rx = Channel::from_owned_fd(OwnedFd::from(b));
    tx.send(&WorkerMessage::Ready, &[]).unwrap();
    assert_eq!(
        rx.recv()
            .unwrap()
            .unwrap()
            .deserialize::<WorkerMessage>()
            .unwrap(),
        WorkerMessage::Ready
    );
}

/// A `status` answer for `n` workers, with realistic strings and non-zero counters.
fn status_report(n: u32) -> zentinel_protocol::control::ControlResponse {
    use zentinel_protocol::control::*;
    let workers = (0..n)
        .map(|id| WorkerStatus {
            id,
            pid: 100_000 + id,
            generation: 3,
            version: "0.1.0".to_owned(),
            binary: "/usr/local/lib/zentinel/releases/2026-12-01/bin/zentinel".to_owned(),
            state: if id % 7 == 0 {
                WorkerState::Draining
            } else {
                WorkerState::Running
            },
            uptime_s: 86_400 + u64::from(id),
            counters: WorkerCounters {
                active_connections: u64::from(id),
                requests_total: 1_000_000 + u64::from(id),
                ..WorkerCounters::default()
            },
            stale: id % 11 == 0,
            restarts: id % 3,
            next_restart_delay_ms: 100,
            last_exit: if id % 3 == 0 {
                String::new()
            } else {
                "killed by signal SIGKILL".to_owned()
            },
        })
        .collect();
    ControlResponse::Status(StatusReport {
        master: MasterStatus {
            pid: 99_999,
            version: "0.1.0".to_owned(),
            generation: 3,
            binary: "/usr/local/lib/zentinel/releases/2026-12-01/bin/zentinel".to_owned(),
            uptime_s: 86_400,
            config: "/etc/zentinel/zentinel.kdl".to_owned(),
        },
        workers,
    })
}

/// The control channel limits differ by direction: a `status` answer for 512 workers (well
/// over the 64 KiB a request may have) goes from the master to the client, while the master
/// still refuses a request that large.
#[test]
fn control_limits_carry_a_status_answer_for_512_workers_but_refuse_a_large_request() {
    use zentinel_protocol::control::*;
    let answer = status_report(512);
    let size = frame::encode(&answer, 0, usize::MAX).unwrap().len();
    assert!(
        size > MAX_CONTROL_REQUEST_FRAME,
        "a 512-worker status is only {size} bytes: the test would not need the larger limit"
    );
    assert!(size < MAX_CONTROL_RESPONSE_FRAME, "{size} bytes");

    let (master_end, client_end) = UnixStream::pair().unwrap();
    let mut master = Channel::with_limits(master_end, CONTROL_SERVER_LIMITS);
    let mut client = Channel::with_limits(client_end, CONTROL_CLIENT_LIMITS);
    assert_eq!(master.limits().recv, MAX_CONTROL_REQUEST_FRAME);
    assert_eq!(client.limits().recv, MAX_CONTROL_RESPONSE_FRAME);
    // Blocking sockets: the answer is larger than the socket buffer, so the client reads on
    // its own thread while the master writes.
    let expected = answer.clone();
    let reader = std::thread::spawn(move || {
        let frame = client.recv_timeout(Duration::from_secs(10)).unwrap();
        let got = frame.deserialize::<ControlResponse>().unwrap();
        (client, got)
    });
    master.send(&answer, &[]).unwrap();
    let (mut client, got) = reader.join().unwrap();
    assert_eq!(got, expected);
    if let ControlResponse::Status(report) = &got {
        assert_eq!(report.workers.len(), 512);
    }

    // The other way the small limit holds: the client cannot send a request that large, and
    // the master refuses one from the frame header alone.
    let huge = ControlRequest::Reload {
        config_path: Some("x".repeat(MAX_CONTROL_REQUEST_FRAME)),
    };
    let err = client.send(&huge, &[]).unwrap_err();
    assert!(
        matches!(err, ProtocolError::FrameTooLarge { max, .. } if max == MAX_CONTROL_REQUEST_FRAME),
        "{err}"
    );
    let header = FrameHeader {
        payload_len: (MAX_CONTROL_REQUEST_FRAME + 1) as u32,
        fd_count: 0,
    };
    let mut raw: &UnixStream = client.stream();
    raw.write_all(&header.to_bytes()).unwrap();
    assert!(matches!(
        master.recv_timeout(Duration::from_secs(10)),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

//! A connection's byte stream: the non-blocking socket itself, or rustls over it. Both read and
//! write like a non-blocking socket (`WouldBlock` when the socket has nothing more to give or
//! take), so the connection state machine is the same for both; TLS adds a handshake step and
//! a `flush` of ciphertext rustls still holds.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

pub(super) struct Stream {
    pub sock: TcpStream,
    /// Boxed: a `ClientConnection` is large, and most runs are plain.
    tls: Option<Box<ClientConnection>>,
}

/// How a finished handshake went, for the report.
pub(super) struct Handshake {
    pub resumed: bool,
    /// `TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519`: version, cipher suite, key exchange group.
    pub negotiated: String,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Stream {
    pub fn plain(sock: TcpStream) -> Stream {
        Stream { sock, tls: None }
    }

    /// A TLS client over `sock`, its handshake not started.
    pub fn tls(
        sock: TcpStream,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
    ) -> Result<Stream, rustls::Error> {
        let conn = ClientConnection::new(Arc::clone(config), name.clone())?;
        Ok(Stream {
            sock,
            tls: Some(Box::new(conn)),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Drives the handshake as far as the socket allows. `Ok(None)`: waiting for the socket;
    /// `Ok(Some(_))`: done (plain streams have none: done at once). `Err`: why it failed.
    pub fn handshake(&mut self) -> Result<Option<Handshake>, String> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(Some(Handshake {
                resumed: false,
                negotiated: String::new(),
            }));
        };
        loop {
            match flush_tls(tls, &mut self.sock) {
                Ok(()) => {}
                // The rest goes out on the next writable event; there may be records to read.
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(format!("sending: {e}")),
            }
            if !tls.is_handshaking() {
                let version = tls
                    .protocol_version()
                    .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
                let suite = tls
                    .negotiated_cipher_suite()
                    .map_or_else(|| "?".to_owned(), |s| format!("{:?}", s.suite()));
                // None only for a resumed TLS 1.2 session (no key exchange).
                let group = tls
                    .negotiated_key_exchange_group()
                    .map_or_else(|| "no-kx".to_owned(), |g| format!("{:?}", g.name()));
                return Ok(Some(Handshake {
                    resumed: tls.handshake_kind() == Some(HandshakeKind::Resumed),
                    negotiated: format!("{version} {suite} {group}"),
                }));
            }
            match tls.read_tls(&mut self.sock) {
                Ok(0) => return Err("the server closed the connection".to_owned()),
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("receiving: {e}")),
            }
            if let Err(e) = tls.process_new_packets() {
                // The alert rustls queued tells the server why.
                let _ = flush_tls(tls, &mut self.sock);
                return Err(e.to_string());
            }
        }
    }

    /// Like a socket read: `Ok(0)` is the end of the stream (for TLS a close_notify, or a TCP
    /// end without one: the response framing tells whether anything was cut short).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.sock.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if would_block(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // No plaintext left: more records from the socket (`WouldBlock` when it is empty,
            // which is what the edge-triggered loop waits for).
            let eof = tls.read_tls(&mut self.sock)? == 0;
            if let Err(e) = tls.process_new_packets() {
                let _ = flush_tls(tls, &mut self.sock);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS: {e}"),
                ));
            }
            // Post-handshake messages may want an answer (a key update).
            match flush_tls(tls, &mut self.sock) {
                Err(e) if !would_block(&e) => return Err(e),
                _ => {}
            }
            if eof && tls.reader().read(buf).is_err() {
                return Ok(0);
            }
        }
    }

    /// Like a socket write: how much of `data` was taken (for TLS, encrypted; its ciphertext
    /// may still wait in rustls: see [`Stream::flush`]).
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.sock.write(data);
        };
        // What rustls holds goes first, so that it never holds more than one buffer's worth.
        flush_tls(tls, &mut self.sock)?;
        let n = tls.writer().write(data)?;
        match flush_tls(tls, &mut self.sock) {
            Err(e) if !would_block(&e) => Err(e),
            _ => Ok(n),
        }
    }

    /// Sends what rustls still holds; `WouldBlock` when the socket cannot take all of it.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_mut() {
            Some(tls) => flush_tls(tls, &mut self.sock),
            None => Ok(()),
        }
    }

    /// The client ends the session: TLS sends close_notify first (best effort: the socket is
    /// closed right after, whatever happens).
    pub fn close(mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = flush_tls(tls, &mut self.sock);
        }
    }
}

fn flush_tls(tls: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

//! TLS for the TCRP and web listeners (PROTOCOL.md §6, last bullet): rustls, driven without
//! a thread of its own inside the event loop.
//!
//! A [`TlsLayer`] sits between a connection's socket and its [`Conn`](super::conn::Conn):
//! the loop reads TLS records from the socket into it ([`TlsLayer::read_from`]), takes the
//! decrypted bytes out into the `Conn`'s read buffer ([`TlsLayer::take_plaintext`]), hands
//! the `Conn`'s answers to it ([`TlsLayer::encrypt`]) and writes the records it owes
//! ([`TlsLayer::write_to`]), the shape of rustls's own `tlsserver-mio` example. Every
//! timeout and cap stays the `Conn`'s: a handshake is timed like a request (the request
//! clock starts at accept), and the layer's own buffers are bounded by rustls (its
//! record deframer, [`UNSENT_LIMIT`] for what it owes, 16 KiB of undelivered plaintext),
//! so a peer that stalls, sends garbage or never reads costs what a plain one costs.
//!
//! The layer has no parsing of its own: every byte goes to rustls, so there is no fuzz
//! target for it beyond rustls's.
//!
//! Crates: `rustls` with the `ring` provider (no OpenSSL; `aws-lc-rs`, rustls's default,
//! needs cmake and a C toolchain we do not want to require for a chat server), and
//! `rustls-pki-types` for reading PEM (the maintained successor of `rustls-pemfile`).

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// Encrypted bytes the layer may hold for a peer before it stops taking the `Conn`'s
/// answers; the rest waits in the `Conn`, whose output cap then closes a peer that does
/// not read, as for a plain connection.
pub const UNSENT_LIMIT: usize = 64 * 1024;

/// Why the TLS settings could not be loaded: each says which file and what to do.
#[derive(Debug)]
pub enum SetupError {
    /// `--tls-cert` without `--tls-key`, or the reverse.
    OneFlagAlone(&'static str),
    /// A file could not be read or held no PEM of the right kind.
    File {
        /// Which flag named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The key does not match the certificate, or rustls refused them.
    Rejected(rustls::Error),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::OneFlagAlone(missing) => write!(
                f,
                "TLS needs both --tls-cert FILE and --tls-key FILE; {missing} is missing"
            ),
            SetupError::File { flag, path, why } => {
                write!(f, "{flag} {}: {why}", path.display())
            }
            SetupError::Rejected(rustls::Error::InconsistentKeys(_)) => f.write_str(
                "the --tls-key does not match the --tls-cert certificate (its public key differs)",
            ),
            SetupError::Rejected(e) => {
                write!(f, "the TLS certificate and key were refused: {e}")
            }
        }
    }
}

impl std::error::Error for SetupError {}

/// Reads `--tls-cert` (a PEM certificate chain, leaf first) and `--tls-key` (a PEM
/// PKCS#8, PKCS#1 or SEC1 key) into a server configuration; `None` when neither is given.
/// The key is checked against the certificate here, so that a mismatch is an error at
/// start rather than a failed handshake later.
pub fn load(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Arc<ServerConfig>>, SetupError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(SetupError::OneFlagAlone("--tls-key")),
        (None, Some(_)) => return Err(SetupError::OneFlagAlone("--tls-cert")),
        (Some(c), Some(k)) => (c, k),
    };
    let file_error = |flag, path: &Path, why: String| SetupError::File {
        flag,
        path: path.to_path_buf(),
        why,
    };
    // Read first, so that a missing file says so rather than "no certificate".
    let cert_pem =
        std::fs::read(cert).map_err(|e| file_error("--tls-cert", cert, format!("{e}")))?;
    let key_pem = std::fs::read(key).map_err(|e| file_error("--tls-key", key, format!("{e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("--tls-cert", cert, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(
            "--tls-cert",
            cert,
            "no CERTIFICATE in it (a PEM certificate chain is expected)".into(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        file_error(
            "--tls-key",
            key,
            format!("no usable private key in it (PEM PKCS#8, RSA or EC is expected): {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Rejected)?
        .with_no_client_auth()
        // Checks that the key's public half is the certificate's.
        .with_single_cert(chain, key_der)
        .map_err(SetupError::Rejected)?;
    Ok(Some(Arc::new(config)))
}

/// What [`TlsLayer::read_from`] found on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTls {
    /// Records were read and processed (plaintext may now be waiting).
    Read,
    /// The socket had nothing more for now.
    WouldBlock,
    /// End of stream on the socket.
    Eof,
}

/// What [`TlsLayer::take_plaintext`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// This many bytes were copied out.
    Bytes(usize),
    /// None waiting.
    Empty,
    /// The peer ended its side (close_notify, or end of stream without one): as a plain
    /// connection's end of stream.
    End,
}

/// Why a TLS connection failed; it is closed and counted.
#[derive(Debug)]
pub enum TlsFailure {
    /// The socket failed.
    Io(io::Error),
    /// The peer broke TLS (not a ClientHello, a bad record, a failed handshake).
    Protocol(rustls::Error),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::Io(e) => write!(f, "{e}"),
            TlsFailure::Protocol(e) => write!(f, "TLS: {e}"),
        }
    }
}

/// One connection's TLS state: rustls's connection, and what the loop needs to know
/// around it.
pub struct TlsLayer {
    tls: ServerConnection,
    /// Bytes of the `Conn`'s output handed to rustls but not yet reported written to the
    /// `Conn` (that happens once they are on the socket, so that a `Conn` that closes after
    /// its last answer does not drop it unsent).
    pub handed: usize,
    /// The handshake completion has been reported by [`TlsLayer::handshake_just_done`].
    handshake_reported: bool,
    /// The `Conn` wants the write side shut once everything owed is out.
    shut_wanted: bool,
    /// close_notify has been queued.
    notified: bool,
    /// The write side has been shut.
    shut: bool,
}

impl fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.tls.is_handshaking())
            .field("shut_wanted", &self.shut_wanted)
            .finish_non_exhaustive()
    }
}

impl TlsLayer {
    /// A new server side of a handshake.
    pub fn new(config: &Arc<ServerConfig>) -> Result<TlsLayer, rustls::Error> {
        let mut tls = ServerConnection::new(Arc::clone(config))?;
        tls.set_buffer_limit(Some(UNSENT_LIMIT));
        Ok(TlsLayer {
            tls,
            handed: 0,
            handshake_reported: false,
            shut_wanted: false,
            notified: false,
            shut: false,
        })
    }

    /// Reads what the socket has (one `read`), and processes it.
    pub fn read_from(&mut self, socket: &mut impl Read) -> Result<ReadTls, TlsFailure> {
        let n = match self.tls.read_tls(socket) {
            Ok(0) => return Ok(ReadTls::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadTls::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(ReadTls::Read),
            Err(e) => return Err(TlsFailure::Io(e)),
        };
        debug_assert!(n > 0);
        self.tls
            .process_new_packets()
            .map_err(TlsFailure::Protocol)?;
        Ok(ReadTls::Read)
    }

    /// Copies decrypted bytes into `buf` (never empty).
    pub fn take_plaintext(&mut self, buf: &mut [u8]) -> Plaintext {
        match self.tls.reader().read(buf) {
            Ok(0) => Plaintext::End,
            Ok(n) => Plaintext::Bytes(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Plaintext::Empty,
            // UnexpectedEof: the stream ended without close_notify. For us, as for a plain
            // connection, that is just the end.
            Err(_) => Plaintext::End,
        }
    }

    /// Whether the handshake completed since the last call (true once per connection).
    pub fn handshake_just_done(&mut self) -> bool {
        if self.handshake_reported || self.tls.is_handshaking() {
            return false;
        }
        self.handshake_reported = true;
        true
    }

    /// Takes as much of `plain` as the layer's [`UNSENT_LIMIT`] allows; returns how much.
    pub fn encrypt(&mut self, plain: &[u8]) -> usize {
        // Writing to rustls's in-memory buffer: only the limit makes it short.
        self.tls.writer().write(plain).unwrap_or(0)
    }

    /// The `Conn` has said its last: send close_notify after it (once the handshake is
    /// done: an alert in the middle of it would break it), and shut the write side once it
    /// is all out.
    pub fn close_after_flush(&mut self) {
        self.shut_wanted = true;
        self.send_close_notify_if_due();
    }

    fn send_close_notify_if_due(&mut self) {
        if self.shut_wanted && !self.notified && !self.tls.is_handshaking() {
            self.notified = true;
            self.tls.send_close_notify();
        }
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Whether records wait to be written.
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Writes records owed (one `write`); `Ok(0)` when nothing was owed.
    pub fn write_to(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        self.send_close_notify_if_due();
        if !self.tls.wants_write() {
            return Ok(0);
        }
        self.tls.write_tls(socket)
    }

    /// Whether the write side should be shut now (once): the last answer and the
    /// close_notify are out. A handshake still under way waits (the `Conn`'s linger bounds
    /// it), as its answer has not gone out yet.
    pub fn should_shut(&mut self) -> bool {
        self.send_close_notify_if_due();
        if self.shut || !self.shut_wanted || self.tls.wants_write() || self.tls.is_handshaking() {
            return false;
        }
        self.shut = true;
        true
    }
}

//! TLS for the control plane: the client's trust settings ([`Tls`]: the system's roots
//! plus a private CA), the process-wide choice ([`use_tls`]), and the blocking stream that
//! is plain TCP or rustls over it.

use super::*;

/// Why TLS settings for the client could not be made.
#[derive(Debug)]
pub enum TlsSetupError {
    /// `--ca FILE` could not be read or held no certificate.
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// No trusted certificate at all: the system has none and no `--ca` was given.
    NoRoots,
    /// The server name cannot be checked against a certificate.
    BadName(String),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::CaFile { path, why } => write!(f, "--ca {}: {why}", path.display()),
            TlsSetupError::NoRoots => {
                f.write_str("no trusted certificates: the system has none; pass --ca FILE")
            }
            TlsSetupError::BadName(name) => {
                write!(f, "'{name}' is not a host name or IP address for TLS")
            }
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// TLS settings for control connections: whom to trust, and (optionally) the name the
/// server's certificate must carry whatever address is dialled.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

impl Tls {
    /// Trusts the system's certificate store (`rustls-native-certs`: the same roots the
    /// rest of the system uses, read from disk, so it works offline) and, if given, the
    /// CA certificates in the PEM file `extra_ca`.
    pub fn new(extra_ca: Option<&Path>) -> Result<Tls, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        // Unreadable entries of the system store are skipped: the rest still count.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = extra_ca {
            let ca_error = |why: String| TlsSetupError::CaFile {
                path: path.to_path_buf(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            add_pem(&mut roots, &pem).map_err(ca_error)?;
        }
        if roots.is_empty() {
            return Err(TlsSetupError::NoRoots);
        }
        Ok(Tls::with_roots(roots))
    }

    /// Trusts only the CA certificates in `pem` (for tests and private deployments).
    pub fn from_ca_pem(pem: &[u8]) -> Result<Tls, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        add_pem(&mut roots, pem).map_err(|why| TlsSetupError::CaFile {
            path: PathBuf::from("(in memory)"),
            why,
        })?;
        Ok(Tls::with_roots(roots))
    }

    fn with_roots(roots: RootCertStore) -> Tls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            // The ring provider supports the default versions; this cannot fail.
            .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"));
        Tls {
            config: Arc::new(config),
            name: None,
        }
    }

    /// Checks the server's certificate against `host` (a name or an IP address) for every
    /// connection, whatever address is dialled: the name given in `--server`, kept for
    /// LEAVE, which dials the address the first connection reached.
    pub fn for_host(mut self, host: &str) -> Result<Tls, TlsSetupError> {
        self.name = Some(server_name(host)?);
        Ok(self)
    }

    /// The name to check for a connection to `addr` (host:port).
    fn name_for(&self, addr: &str) -> Result<ServerName<'static>, TlsSetupError> {
        match &self.name {
            Some(name) => Ok(name.clone()),
            None => server_name(host_of(addr)),
        }
    }
}

/// Adds every certificate in `pem`; an error if there is none.
pub(super) fn add_pem(roots: &mut RootCertStore, pem: &[u8]) -> Result<(), String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE in it".into());
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(())
}

pub(super) fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsSetupError::BadName(host.to_string()))
}

/// The host of `host:port`, `[v6]:port` or a bare host.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

/// TLS for every [`ControlClient::connect`] of this process (and so for the free
/// functions below), set once by a program that talks to one server (`ocm-client --tls`,
/// `bench-client --tls`), so that every control call, wherever it is made, speaks TLS.
pub(super) static PROCESS_TLS: OnceLock<Tls> = OnceLock::new();

/// Makes every [`ControlClient::connect`] of this process speak TLS with `tls`. False if
/// it was already set (the first setting stays).
pub fn use_tls(tls: Tls) -> bool {
    PROCESS_TLS.set(tls).is_ok()
}

/// A control connection: plain TCP, or TLS over it.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Plain(s) => f.debug_tuple("Plain").field(s).finish(),
            Stream::Tls(s) => f.debug_tuple("Tls").field(s.get_ref()).finish(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Drop for Stream {
    /// Says close_notify (one bounded write), so the server sees a clean end.
    fn drop(&mut self) {
        if let Stream::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.conn.write_tls(&mut s.sock);
        }
    }
}

/// Does the handshake now (bounded by the stream's timeouts), so that a certificate that
/// does not verify is reported as such before any request.
pub(super) fn handshake(
    tcp: TcpStream,
    tls: &Tls,
    addr: &str,
) -> Result<StreamOwned<ClientConnection, TcpStream>, ControlError> {
    let name = tls.name_for(addr).map_err(|e| ControlError::Connect {
        addr: addr.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
    })?;
    let shown = name.to_str().into_owned();
    let mut conn =
        ClientConnection::new(Arc::clone(&tls.config), name).map_err(ControlError::Tls)?;
    let mut tcp = tcp;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return Err(match ControlError::from(e) {
                ControlError::Tls(rustls::Error::InvalidCertificate(why)) => {
                    ControlError::Untrusted { name: shown, why }
                }
                other => other,
            });
        }
    }
    Ok(StreamOwned::new(conn, tcp))
}

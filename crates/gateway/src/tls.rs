//! TLS on both sides of the gateway, with rustls.
//!
//! Owns loading certificates and keys from PEM files into rustls configurations, and the stream
//! type that lets a connection be plain TCP or TLS over TCP behind one interface. Keys are read
//! once into memory and never logged; errors name the file, never its content.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config_error::ConfigError;

/// Whether clients must, may or must not use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP only.
    #[default]
    Disabled,
    /// TLS or plain TCP, told apart by the first bytes the client sends.
    Allowed,
    /// TLS only; plaintext clients are refused.
    Required,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disabled" => Ok(TlsMode::Disabled),
            "allowed" => Ok(TlsMode::Allowed),
            "required" => Ok(TlsMode::Required),
            other => Err(format!(
                "unknown TLS mode {other:?}: use disabled, allowed or required"
            )),
        }
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("{}: {why}", path.display()));
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|_| bad("cannot read PEM certificates"))?
        .collect::<Result<_, _>>()
        .map_err(|_| bad("invalid PEM certificate"))?;
    if certs.is_empty() {
        return Err(bad("no certificate found"));
    }
    Ok(certs)
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).map_err(|_| {
            ConfigError::Invalid(format!("{}: unusable CA certificate", path.display()))
        })?;
    }
    Ok(roots)
}

/// The listener's TLS settings, from PEM files. With `client_ca`, clients must present a
/// certificate signed by it.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
        ConfigError::Invalid(format!("{}: cannot read a PEM private key", key.display()))
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(format!("TLS: {e}")))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| ConfigError::Invalid(format!("TLS client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| ConfigError::Invalid(format!("TLS certificate and key: {e}")))?;
    Ok(Arc::new(cfg))
}

/// TLS settings for upstream connections: the given CA file, or the public web PKI roots.
pub fn client_config(ca: Option<&PathBuf>) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    upstream_client_config(ca, None, false)
}

/// The upstream's TLS settings: trusted roots (`tlsCAFile`, else the web PKI), a client
/// certificate (`tlsCertificateKeyFile`: chain and key in one PEM file, MongoDB's convention),
/// and whether a certificate whose names do not match the member's host is accepted
/// (`tlsAllowInvalidHostnames`: the chain is still verified; only the name check is skipped).
pub fn upstream_client_config(
    ca: Option<&PathBuf>,
    cert_key: Option<&Path>,
    allow_invalid_hostnames: bool,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let roots = match ca {
        Some(path) => roots(path)?,
        None => rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    let invalid = |e: String| ConfigError::Invalid(format!("TLS: {e}"));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?;
    let builder = if allow_invalid_hostnames {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| invalid(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyHostname(inner)))
    } else {
        builder.with_root_certificates(roots)
    };
    let cfg = match cert_key {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let chain = certs(path)?;
            let key = PrivateKeyDer::from_pem_file(path).map_err(|_| {
                ConfigError::Invalid(format!("{}: cannot read a PEM private key", path.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(e.to_string()))?
        }
    };
    Ok(Arc::new(cfg))
}

/// Verifies the chain as the web PKI verifier does, but accepts a certificate whose names do
/// not include the host (`tlsAllowInvalidHostnames`).
#[derive(Debug)]
struct AnyHostname(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyHostname {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether the first bytes a client sent open a TLS handshake record (content type 22,
/// protocol major version 3). A MongoDB message would need a length over 200 KB to look
/// like that, which no first message is.
pub fn looks_like_tls(first: &[u8]) -> bool {
    first.len() >= 2 && first[0] == 0x16 && first[1] == 0x03
}

/// A connection that is plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum MaybeTls<T> {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<T>),
}

/// Access to the TCP socket under a TLS stream.
pub trait TcpBacked {
    /// The socket.
    fn tcp(&self) -> &TcpStream;
}

impl TcpBacked for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl TcpBacked for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Client-side connection type.
pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;
/// Upstream-side connection type.
pub type UpstreamStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// What a non-blocking look at a socket's receive queue shows.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// Nothing to read; the peer is still there.
    Quiet,
    /// Bytes are waiting.
    Data,
    /// The peer closed the connection, or it failed.
    Closed,
}

impl<T: TcpBacked> MaybeTls<T> {
    /// The TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.tcp(),
        }
    }

    /// Looks at the socket's receive queue without consuming anything (so TLS records stay
    /// intact) and without blocking.
    pub fn peek_now(&self) -> Peek {
        let sock = socket2::SockRef::from(self.tcp());
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match sock.peek(&mut buf) {
            Ok(0) => Peek::Closed,
            Ok(_) => Peek::Data,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Peek::Quiet,
            Err(_) => Peek::Closed,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

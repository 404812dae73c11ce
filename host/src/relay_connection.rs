//! Opening the relay's WebSocket: the TCP connection, TLS for `wss://`, and the HTTP upgrade,
//! after which the reader reads raw frames itself (see `websocket`). Also writes the few frames
//! the host sends: pongs and close frames.
//!
//! Guarantees: tungstenite performs and checks the upgrade. The connection is read only up to the
//! read that completes the HTTP response, and bytes the relay sent right after the response are
//! returned with the stream, so no frame is lost between the upgrade and the reader. TLS uses the webpki root certificates.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::MaybeTlsStream;

/// The connection to the relay, TLS or not.
pub type RelayStream = MaybeTlsStream<TcpStream>;

/// The longest HTTP response to the upgrade request the host accepts.
const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;

const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PONG: u8 = 0xa;

/// Status code of a close frame for a normal closure (RFC 6455, section 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;

/// The crypto provider for TLS and for the masking keys of the frames the host sends.
// TODO: ring has no post-quantum key exchange, which is why rustls deprecates its provider.
// aws-lc-rs has one but needs cmake to build, so relay connections use classical key exchange.
#[allow(deprecated)]
static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// Builds the TLS settings for wss:// relays: the webpki roots, and the root certificates in the
/// PEM file `extra_roots` when given.
pub fn tls_config(extra_roots: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = extra_roots {
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|error| TlsConfigError::CaFile { path: path.to_owned(), error: error.to_string() })?;
        if certificates.is_empty() {
            return Err(TlsConfigError::CaFile { path: path.to_owned(), error: "no PEM certificate in it".to_owned() });
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|error| TlsConfigError::CaFile { path: path.to_owned(), error: error.to_string() })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Provider)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An error building the TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("invalid --relay-ca-file {path}: {error}")]
    CaFile { path: PathBuf, error: String },
    #[error("TLS setup failed: {0}")]
    Provider(rustls::Error),
}

/// An error opening the connection to the relay.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid relay URL `{0}`")]
    Url(String),
    #[error("TCP connection to {address} failed: {error}")]
    Tcp { address: String, error: io::Error },
    #[error("TLS handshake with {host} failed: {error}")]
    Tls { host: String, error: io::Error },
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(#[from] tokio_tungstenite::tungstenite::Error),
}

/// Connects to the `ws://` or `wss://` URL and upgrades the connection to a WebSocket. Returns the
/// stream and the bytes already read past the HTTP response, which start the first frame.
pub async fn connect(url: &str, tls_config: &Arc<rustls::ClientConfig>) -> Result<(RelayStream, Vec<u8>), ConnectError> {
    let uri: Uri = url.parse().map_err(|_| ConnectError::Url(url.to_owned()))?;
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(ConnectError::Url(url.to_owned())),
    };
    let host = uri.host().ok_or_else(|| ConnectError::Url(url.to_owned()))?;
    // An IPv6 address comes in brackets, which neither the resolver nor TLS take.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = match uri.port() {
        Some(port) => port.as_str().parse::<u16>().map_err(|_| ConnectError::Url(url.to_owned()))?,
        None if tls => 443,
        None => 80,
    };

    let address = format!("{host}:{port}");
    let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|error| ConnectError::Tcp { address, error })?;
    // Pongs and close frames are small, so they go out at once instead of waiting to be merged.
    let _ = tcp.set_nodelay(true);
    let stream = if tls {
        let name = ServerName::try_from(host.clone()).map_err(|_| ConnectError::Url(url.to_owned()))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config.clone())
            .connect(name, tcp)
            .await
            .map_err(|error| ConnectError::Tls { host, error })?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };

    let (socket, _response) = tokio_tungstenite::client_async_with_config(url, UpgradeStream::new(stream), None).await?;
    Ok(socket.into_inner().into_parts())
}

/// A stream that reads the connection until the HTTP response header is complete and keeps every
/// byte it read, so that what followed the header goes to the frame reader. tungstenite's
/// handshake reads in chunks, and the frames it may have read too are dropped with it.
struct UpgradeStream {
    inner: RelayStream,
    buffered: Vec<u8>,
    /// How much of `buffered` was handed to tungstenite.
    served: usize,
    /// The end of the response header in `buffered`, once it arrived.
    header_end: Option<usize>,
}

impl UpgradeStream {
    fn new(inner: RelayStream) -> UpgradeStream {
        UpgradeStream { inner, buffered: Vec::new(), served: 0, header_end: None }
    }

    /// Returns the stream and the bytes read past the response header.
    fn into_parts(mut self) -> (RelayStream, Vec<u8>) {
        let after = self.buffered.split_off(self.header_end.unwrap_or(self.buffered.len()));
        (self.inner, after)
    }
}

impl AsyncRead for UpgradeStream {
    fn poll_read(mut self: Pin<&mut Self>, context: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.header_end.is_none() {
            if this.buffered.len() > MAX_RESPONSE_HEADER_BYTES {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "the relay's HTTP response header is too long")));
            }
            let mut chunk = [0u8; 4096];
            let mut chunk = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(context, &mut chunk))?;
            if chunk.filled().is_empty() {
                // The end of the stream: tungstenite reports the incomplete response.
                break;
            }
            let searched_from = this.buffered.len().saturating_sub(3);
            this.buffered.extend_from_slice(chunk.filled());
            this.header_end = this.buffered[searched_from..]
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
                .map(|offset| searched_from + offset + 4);
        }
        let count = out.remaining().min(this.buffered.len() - this.served);
        out.put_slice(&this.buffered[this.served..this.served + count]);
        this.served += count;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for UpgradeStream {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(context, bytes)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

/// Encodes a control frame as a client sends it: final, masked with a random key (RFC 6455,
/// section 5.3), with at most 125 bytes of payload.
fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(125)];
    let mut key = [0u8; 4];
    if PROVIDER.secure_random.fill(&mut key).is_err() {
        // Without the system's random source the key is a fixed one: the frame stays valid, and
        // it carries only a ping's own payload or a close code.
        key = [0x5a, 0xa5, 0x3c, 0xc3];
    }
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | opcode);
    frame.push(0x80 | payload.len() as u8);
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().zip(key.iter().cycle()).map(|(byte, mask)| byte ^ mask));
    frame
}

/// Replies to a ping with a pong that carries the same payload.
pub async fn send_pong(stream: &mut RelayStream, payload: &[u8]) -> io::Result<()> {
    stream.write_all(&control_frame(OPCODE_PONG, payload)).await?;
    stream.flush().await
}

/// Sends a close frame with `code`.
pub async fn send_close(stream: &mut RelayStream, code: u16) -> io::Result<()> {
    stream.write_all(&control_frame(OPCODE_CLOSE, &code.to_be_bytes())).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_are_masked_and_decode_back() {
        let frame = control_frame(OPCODE_PONG, b"ping payload");
        assert_eq!(frame[0], 0x80 | OPCODE_PONG);
        assert_eq!(frame[1], 0x80 | 12, "the mask bit and the length");
        let key = &frame[2..6];
        let payload: Vec<u8> = frame[6..].iter().zip(key.iter().cycle()).map(|(byte, mask)| byte ^ mask).collect();
        assert_eq!(payload, b"ping payload");
    }

    #[test]
    fn masking_keys_differ_between_frames() {
        let keys: std::collections::HashSet<Vec<u8>> =
            (0..8).map(|_| control_frame(OPCODE_CLOSE, &CLOSE_NORMAL.to_be_bytes())[2..6].to_vec()).collect();
        assert!(keys.len() > 1, "every frame had the same masking key");
    }

    /// The first frames arrive in the same read as the end of the HTTP response.
    #[tokio::test]
    async fn frames_sent_with_the_upgrade_response_are_kept() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                socket.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: ").or_else(|| line.strip_prefix("sec-websocket-key: ")))
                .expect("a Sec-WebSocket-Key header")
                .trim()
                .to_owned();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            reply.extend_from_slice(&[0x82, 3, b'o', b'n', b'e', 0x82, 3, b't', b'w', b'o']);
            socket.write_all(&reply).await.unwrap();
            socket
        });
        let url = format!("ws://{address}/xrpc/com.atproto.sync.subscribeRepos");
        let (_stream, after) = connect(&url, &tls_config(None).unwrap()).await.unwrap();
        assert_eq!(after, [0x82, 3, b'o', b'n', b'e', 0x82, 3, b't', b'w', b'o']);
        drop(server.await.unwrap());
    }
}

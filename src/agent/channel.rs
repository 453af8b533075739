//! The agent's gRPC channels to the server: one per session attempt, so a
//! connection that died with its stream is never reused.
//!
//! Keepalive is set for peers we did not write: grpc-core servers (the
//! seed's Python server) answer HTTP/2 pings sent more often than every
//! 5 minutes while they send nothing with GOAWAY "too_many_pings", which
//! would turn a paused run into a reconnect loop. So HTTP/2 pings go every
//! 5 minutes, TCP keepalive finds a vanished host within about a minute,
//! and the stream's own liveness rules (see `link`) do the rest.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::config::AgentSettings;
use crate::proto::MetricsServiceClient;
use crate::tls::{self, TlsError};

/// HTTP/2 ping interval: grpc-core's default minimum between pings it
/// accepts without data (`GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS`).
pub const H2_KEEPALIVE: Duration = Duration::from_secs(300);
/// TCP keepalive idle time; the kernel then probes and drops a dead peer.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Longest a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("server URL {url}: {source}")]
    Endpoint {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Builds the channel; it connects lazily and reconnects by itself on the
/// next call after a failure.
pub fn connect_lazy(settings: &AgentSettings) -> Result<Channel, ChannelError> {
    let url = settings.server.url.clone();
    let err = |source| ChannelError::Endpoint {
        url: url.clone(),
        source,
    };
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(err)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if settings.server.tls {
        ep = ep
            .tls_config(tls::client_config(&settings.tls, &settings.tls_domain)?)
            .map_err(err)?;
    }
    Ok(ep.connect_lazy())
}

pub fn client(channel: &Channel, max_message_bytes: usize) -> MetricsServiceClient<Channel> {
    MetricsServiceClient::new(channel.clone())
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

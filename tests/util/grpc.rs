//! gRPC clients for tests: plaintext or TLS channels to a server under test,
//! and builders for valid messages (with real JPEG images).

use std::net::SocketAddr;
use std::path::Path;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;
use trainwatch::proto::{
    self, metrics_request::Payload, BatchData, ImageData, MetricsRequest, MetricsResponse,
    MetricsServiceClient, Prediction, SessionInfo, SessionResponse, TrainingConfig,
};
use trainwatch::tls::{self, ClientTlsFiles, EphemeralPki};

use super::TEST_TIMEOUT;

pub type Client = MetricsServiceClient<Channel>;

pub async fn connect_plain(addr: SocketAddr) -> Result<Client, tonic::transport::Error> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(TEST_TIMEOUT)
        .connect()
        .await?;
    Ok(MetricsServiceClient::new(ch))
}

/// A plaintext client whose HTTP/2 windows are 1 KiB: the server can get
/// only that far ahead of a reader that stops reading.
pub async fn connect_plain_small_window(addr: SocketAddr) -> Client {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(TEST_TIMEOUT)
        .initial_stream_window_size(1024)
        .initial_connection_window_size(1024)
        .connect()
        .await
        .expect("connect");
    MetricsServiceClient::new(ch)
}

pub async fn connect_tls(
    addr: SocketAddr,
    files: &ClientTlsFiles,
) -> Result<Client, tonic::transport::Error> {
    let cfg = tls::client_config(files, "localhost").expect("client TLS files");
    let ch = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(cfg)?
        .connect_timeout(TEST_TIMEOUT)
        .connect()
        .await?;
    Ok(MetricsServiceClient::new(ch))
}

/// A PKI written to `dir`: ca.pem, server.pem, server.key, and for each name
/// in `clients` NAME.pem / NAME.key.
pub fn write_pki(dir: &Path, clients: &[&str]) -> EphemeralPki {
    let pki = EphemeralPki::new("trainwatch test CA").unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.join("server.pem"), &pki.server_cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &pki.server_key_pem).unwrap();
    for name in clients {
        let id = pki.client(name).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), id.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), id.key_pem).unwrap();
    }
    pki
}

pub fn config(classes: usize) -> TrainingConfig {
    TrainingConfig {
        total_epochs: 3,
        batches_per_epoch: 100,
        batch_size: 64,
        model_name: "resnet18".into(),
        dataset_name: "cifar10".into(),
        class_names: (0..classes).map(|i| format!("class{i}")).collect(),
        // As a seed peer: no run name (the id's prefix is shown).
        run_name: String::new(),
    }
}

pub async fn register(client: &mut Client, id: &str) -> SessionResponse {
    client
        .register_training_session(SessionInfo {
            session_id: id.into(),
            client_name: "trainwatch-tests".into(),
            client_version: "0".into(),
            config: Some(config(10)),
            timestamp_ms: proto::now_ms(),
        })
        .await
        .expect("register RPC")
        .into_inner()
}

/// A real JPEG of `w`x`h` RGB pixels (a gradient).
pub fn jpeg(w: u16, h: u16) -> bytes::Bytes {
    let mut px = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h {
        for x in 0..w {
            px.extend([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]);
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85)
        .encode(&px, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out.into()
}

/// A valid batch of `n` 32x32 images.
pub fn batch(epoch: u32, batch_idx: u32, n: usize) -> BatchData {
    batch_of(vec![jpeg(32, 32); n], epoch, batch_idx)
}

/// A valid batch of these JPEGs, with predictions and labels for 10
/// classes.
pub fn batch_of(images: Vec<bytes::Bytes>, epoch: u32, batch_idx: u32) -> BatchData {
    let n = images.len();
    BatchData {
        epoch,
        batch_idx,
        images: images
            .into_iter()
            .map(|image_bytes| ImageData { image_bytes })
            .collect(),
        predictions: (0..n)
            .map(|i| Prediction {
                predicted_class: (i % 10) as i32,
                confidence: 0.5,
            })
            .collect(),
        ground_truth: (0..n).map(|i| (i % 10) as i32).collect(),
        batch_loss: 1.0 / (1.0 + batch_idx as f32),
    }
}

pub fn request(session_id: &str, payload: Payload) -> MetricsRequest {
    MetricsRequest {
        session_id: session_id.into(),
        timestamp_ms: proto::now_ms(),
        payload: Some(payload),
        event_seq: 0,
        events_missed_before: 0,
    }
}

/// An open StreamMetrics call: send requests, read responses, each bounded
/// by [`TEST_TIMEOUT`].
pub struct Stream {
    tx: mpsc::Sender<MetricsRequest>,
    rx: Streaming<MetricsResponse>,
}

impl Stream {
    pub async fn open(client: &mut Client) -> Stream {
        let (tx, rx) = mpsc::channel(1024);
        let resp =
            tokio::time::timeout(TEST_TIMEOUT, client.stream_metrics(ReceiverStream::new(rx)))
                .await
                .expect("stream_metrics timed out")
                .expect("stream_metrics");
        Stream {
            tx,
            rx: resp.into_inner(),
        }
    }

    /// The responses alone: the request half is closed once every
    /// [`Stream::sender`] handle is dropped too.
    pub fn into_responses(self) -> Streaming<MetricsResponse> {
        self.rx
    }

    /// A handle to send from another task while this one reads.
    pub fn sender(&self) -> mpsc::Sender<MetricsRequest> {
        self.tx.clone()
    }

    pub async fn send(&self, req: MetricsRequest) {
        self.tx.send(req).await.expect("request stream closed");
    }

    pub async fn recv(&mut self) -> MetricsResponse {
        tokio::time::timeout(TEST_TIMEOUT, self.rx.message())
            .await
            .expect("no response within the test timeout")
            .expect("stream error")
            .expect("stream ended")
    }

    /// The next response within `wait`; `None` when none came or the
    /// stream ended.
    pub async fn next_within(&mut self, wait: std::time::Duration) -> Option<MetricsResponse> {
        tokio::time::timeout(wait, self.rx.message())
            .await
            .ok()
            .and_then(|r| r.ok().flatten())
    }

    /// Reads (and drops) responses until the stream ends, for at most
    /// `wait`: `Some(Ok(()))` when it ended cleanly, `Some(Err(status))`
    /// when it ended with an error, `None` when it is still open.
    pub async fn end_within(
        &mut self,
        wait: std::time::Duration,
    ) -> Option<Result<(), tonic::Status>> {
        tokio::time::timeout(wait, async {
            loop {
                match self.rx.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(status),
                }
            }
        })
        .await
        .ok()
    }

    /// Sends and waits for the one answer the request gets.
    pub async fn call(&mut self, req: MetricsRequest) -> MetricsResponse {
        self.send(req).await;
        self.recv().await
    }
}

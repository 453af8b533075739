//! A minimal HTTP/1.1 client for the server's JSON API (GET only).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TEST_TIMEOUT;

/// `GET path` → (status code, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.expect("connect HTTP");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP header end");
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        (status, buf[split + 4..].to_vec())
    })
    .await
    .expect("HTTP GET timed out")
}

/// `GET path` that must answer 200 with JSON.
pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("JSON body")
}

//! A loopback TCP proxy that can turn into a black hole: it stops forwarding
//! in both directions without closing anything, as a dead network path does.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    hole: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hole, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, rx.clone()));
                tokio::spawn(pump(sr, cw, rx.clone()));
            }
        });
        Proxy { addr, hole }
    }

    /// While on, nothing is forwarded and nothing is closed.
    pub fn black_hole(&self, on: bool) {
        self.hole.send_replace(on);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hole: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Not reading while the hole is open: the sender's data piles up in
        // socket buffers, as on a path that silently drops everything.
        if hole.wait_for(|on| !on).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = hole.wait_for(|on| *on) => continue,
        };
        // Data read just before the hole opened is held back until it closes.
        if hole.wait_for(|on| !on).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

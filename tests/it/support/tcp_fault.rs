//! A TCP proxy that can refuse, swallow or slow the traffic to one
//! dependency, for outage tests against the real binary.
//!
//! [`TcpFault`] listens on a loopback port and forwards each connection to
//! the upstream byte for byte while its mode is [`Mode::Pass`]. The mode
//! applies at once to new and open connections alike: [`Mode::Refuse`]
//! closes every connection (new ones as soon as they are accepted),
//! [`Mode::Blackhole`] keeps connections open and forwards nothing, as a
//! network partition does, and [`Mode::Slow`] forwards each chunk after a
//! delay. Nothing is recorded: the bytes carry tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    Refuse = 1,
    Blackhole = 2,
    /// Each chunk waits [`SLOW_CHUNK`] before it is forwarded.
    Slow = 3,
}

/// How long each chunk waits in [`Mode::Slow`].
pub const SLOW_CHUNK: Duration = Duration::from_millis(500);

pub struct TcpFault {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpFault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mode_of(m: &AtomicU8) -> Mode {
    match m.load(Ordering::SeqCst) {
        0 => Mode::Pass,
        1 => Mode::Refuse,
        2 => Mode::Blackhole,
        _ => Mode::Slow,
    }
}

impl TcpFault {
    /// A proxy in front of `upstream` (`host:port`), passing traffic.
    pub async fn start(upstream: &str) -> TcpFault {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let upstream = upstream.to_owned();
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if mode_of(&m) == Mode::Refuse {
                    drop(client);
                    continue;
                }
                let (m, upstream) = (m.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = pump(cr, sw, m.clone()) => {}
                        () = pump(sr, cw, m) => {}
                    }
                });
            }
        });
        TcpFault { url, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` chunk by chunk under the current mode; returns
/// when either side closes or the mode refuses.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A refusal closes open connections too.
            () = async {
                while mode_of(&mode) != Mode::Refuse {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } => return,
        };
        loop {
            match mode_of(&mode) {
                Mode::Pass => break,
                Mode::Refuse => return,
                Mode::Slow => {
                    tokio::time::sleep(SLOW_CHUNK).await;
                    break;
                }
                // Held until the partition ends.
                Mode::Blackhole => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

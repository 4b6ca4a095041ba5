//! A partner that writes its answers byte by byte over raw TCP on 127.0.0.1, so it can
//! break HTTP in ways a well-behaved server never would: a body that never ends, headers
//! that never end, a length it never sends, a drip, a reset halfway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the partner does once it has read a request. Every answer it writes by hand.
#[derive(Clone, Debug)]
pub enum RawAnswer {
    /// Writes these bytes, then closes the connection (a FIN, not a reset).
    Close(Vec<u8>),
    /// Writes `head`, then `fill` again and again, as fast as the dispatcher reads, until
    /// `up_to` bytes of fill are written or the dispatcher hangs up.
    Stream {
        head: Vec<u8>,
        fill: Vec<u8>,
        up_to: u64,
    },
    /// Writes `head`, then one byte of `drip` (over and over) every `every`, forever.
    Drip {
        head: Vec<u8>,
        drip: Vec<u8>,
        every: Duration,
    },
    /// Writes these bytes, then says nothing more and keeps the connection open until the
    /// dispatcher hangs up.
    Hold(Vec<u8>),
    /// Writes these bytes, then resets the connection (SO_LINGER 0, then close: a RST).
    Reset(Vec<u8>),
}

/// One request the raw partner read in full.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub webhook_id: String,
}

/// A partner CRM played by hand-written bytes on a TCP socket at 127.0.0.1.
pub struct RawPartner {
    pub name: String,
    pub base_url: String,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    /// Bytes written in the largest single answer.
    largest_answer: Arc<AtomicU64>,
}

impl RawPartner {
    /// Answers every request with `answer`.
    pub async fn start(name: &str, answer: RawAnswer) -> RawPartner {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw partner");
        let address = listener.local_addr().expect("raw partner address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let largest_answer = Arc::new(AtomicU64::new(0));
        let (log, largest) = (requests.clone(), largest_answer.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, log, largest) = (answer.clone(), log.clone(), largest.clone());
                tokio::spawn(async move {
                    let written = serve(stream, &answer, &log).await;
                    largest.fetch_max(written, Ordering::SeqCst);
                });
            }
        });
        RawPartner {
            name: name.to_string(),
            base_url: format!("http://{address}"),
            requests,
            largest_answer,
        }
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().expect("raw partner log").clone()
    }

    /// How many bytes the partner managed to write in its largest answer before the
    /// dispatcher stopped reading (or the answer ended).
    pub fn largest_answer(&self) -> u64 {
        self.largest_answer.load(Ordering::SeqCst)
    }
}

/// Reads one request, then answers it as told. Returns the bytes written.
async fn serve(mut stream: TcpStream, answer: &RawAnswer, log: &Mutex<Vec<RawRequest>>) -> u64 {
    let Some(request) = read_request(&mut stream).await else {
        return 0;
    };
    log.lock().expect("raw partner log").push(request);
    // Counted as written once handed to the socket.
    let mut written = 0u64;
    match answer {
        RawAnswer::Close(bytes) => {
            if stream.write_all(bytes).await.is_ok() {
                written += bytes.len() as u64;
            }
            let _ = stream.shutdown().await;
        }
        RawAnswer::Stream { head, fill, up_to } => {
            if stream.write_all(head).await.is_err() {
                return written;
            }
            written += head.len() as u64;
            let mut sent = 0u64;
            while sent < *up_to {
                let room = usize::try_from(*up_to - sent).unwrap_or(usize::MAX);
                let chunk = &fill[..fill.len().min(room)];
                if stream.write_all(chunk).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
                written += chunk.len() as u64;
            }
        }
        RawAnswer::Drip { head, drip, every } => {
            if stream.write_all(head).await.is_err() {
                return written;
            }
            written += head.len() as u64;
            for byte in drip.iter().cycle() {
                tokio::time::sleep(*every).await;
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                written += 1;
            }
        }
        RawAnswer::Hold(bytes) => {
            if stream.write_all(bytes).await.is_ok() {
                written += bytes.len() as u64;
            }
            // Until the dispatcher gives up and closes its end.
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        RawAnswer::Reset(bytes) => {
            if stream.write_all(bytes).await.is_ok() {
                written += bytes.len() as u64;
            }
            stream.set_zero_linger().expect("SO_LINGER 0");
            drop(stream);
        }
    }
    written
}

/// Reads a request head and its Content-Length body; `None` if the client hung up first.
async fn read_request(stream: &mut TcpStream) -> Option<RawRequest> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_string())
    };
    let length: usize = header("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Some(RawRequest {
        webhook_id: header("webhook-id").unwrap_or_default(),
    })
}

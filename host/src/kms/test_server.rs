//! A scripted HTTP/1.1 server for the cloud back ends' unit tests: it records every request and
//! answers each with what the test's script returns (recorded or hand-written API answers).

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request the server saw.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// Request line, e.g. `POST /keys/k/wrapkey?api-version=7.4 HTTP/1.1`.
    pub line: String,
    /// Header lines (`name: value`), names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Seen {
    /// The value of header `name` (lower-case), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The request target (path and query).
    pub fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or_default()
    }

    /// The body parsed as JSON (Null if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    /// The AWS operation (`X-Amz-Target` suffix).
    pub fn operation(&self) -> &str {
        self.header("x-amz-target")
            .rsplit('.')
            .next()
            .unwrap_or_default()
    }
}

/// What the server answers to request `n` (0-based): status and JSON body.
pub(crate) type Script = Box<dyn Fn(usize, &Seen) -> (u16, String) + Send + Sync>;

/// Starts the server on a free loopback port; returns `http://127.0.0.1:PORT` and the log of
/// requests. The server lives as long as the test's runtime.
pub(crate) async fn scripted_server(script: Script) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (script, log) = (Arc::new(script), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (script, log) = (script.clone(), log.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.lines();
                    let line = lines.next().unwrap_or_default().to_owned();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        })
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
                    buf.drain(..head_end + len);
                    let request = Seen {
                        line,
                        headers,
                        body,
                    };
                    let n = {
                        let mut log = log.lock();
                        log.push(request.clone());
                        log.len() - 1
                    };
                    let (status, answer) = script(n, &request);
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

//! The metrics endpoint: a minimal HTTP/1.1 responder for `GET /metrics`.
//!
//! Prometheus scrapes with one GET per interval, so this answers exactly that and
//! nothing else: it reads the request head (at most [`MAX_HEAD`] bytes, within
//! [`HEAD_TIMEOUT`]), answers `200` with the Prometheus text format for `GET /metrics`,
//! `404` for any other path, `405` for any other method and `400` for anything that is
//! not an HTTP/1.x request head, then closes the connection. At most
//! `MAX_CONNECTIONS` (16) are served at once; more are closed unanswered. A request body
//! is never read.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request head read; a scraper's GET is ~200 bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest wait for a whole request head (and for the answer to be written).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once: scrapers are few, so more means something is wrong.
const MAX_CONNECTIONS: usize = 16;
/// Content type of the Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// A GET of another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP/1.x request head (or too long, or not UTF-8).
    BadRequest,
}

/// Routes a complete request head (the bytes before the blank line).
pub fn route(head: &[u8]) -> Route {
    let Ok(head) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let request_line = head.split("\r\n").next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// Serves `registry` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: CancellationToken, tracker: TaskTracker) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("metrics: accept failed: {e}");
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("metrics: {MAX_CONNECTIONS} connections already open; closing one from {peer}");
            continue;
        };
        let registry = registry.clone();
        tracker.spawn(async move {
            if tokio::time::timeout(HEAD_TIMEOUT, answer(stream, registry.clone()))
                .await
                .is_err()
            {
                tracing::debug!("metrics: {peer} sent no complete request within {HEAD_TIMEOUT:?}");
            }
            drop(permit);
        });
    }
}

/// The registry in the Prometheus text format.
fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
    Ok(body)
}

/// Reads one request head from `stream` and answers it.
async fn answer(mut stream: TcpStream, registry: Arc<Registry>) {
    let route = match read_head(&mut stream).await {
        Ok(Some(head)) => route(&head),
        Ok(None) => Route::BadRequest,
        Err(e) => {
            tracing::debug!("metrics: reading a request failed: {e}");
            return;
        }
    };
    let (status, body) = match route {
        // Off the node's runtime: collecting reads the store's files (disk bytes).
        Route::Metrics => match tokio::task::spawn_blocking(move || encode(&registry)).await {
            Ok(Ok(body)) => ("200 OK", body),
            Ok(Err(e)) => ("500 Internal Server Error", format!("cannot encode metrics: {e}\n")),
            Err(e) => ("500 Internal Server Error", format!("collecting metrics failed: {e}\n")),
        },
        Route::NotFound => ("404 Not Found", "only /metrics is served here\n".to_string()),
        Route::MethodNotAllowed => ("405 Method Not Allowed", "only GET is served here\n".to_string()),
        Route::BadRequest => ("400 Bad Request", "not an HTTP/1.x request\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let written = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    if let Err(e) = written.await {
        tracing::debug!("metrics: writing an answer failed: {e}");
    }
}

/// The request head, up to its blank line; `None` if the connection ended first or the
/// head exceeds [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() >= MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let cases: [(&[u8], Route); 8] = [
            (b"GET /metrics HTTP/1.1\r\nHost: x", Route::Metrics),
            (b"GET /metrics?x=1 HTTP/1.0", Route::Metrics),
            (b"GET / HTTP/1.1", Route::NotFound),
            (b"POST /metrics HTTP/1.1", Route::MethodNotAllowed),
            (b"GET /metrics", Route::BadRequest),
            (b"GET metrics HTTP/1.1", Route::BadRequest),
            (b"\xff\xfe HTTP/1.1", Route::BadRequest),
            (b"GET /metrics SPDY/3", Route::BadRequest),
        ];
        for (head, expected) in cases {
            assert_eq!(route(head), expected, "{:?}", String::from_utf8_lossy(head));
        }
    }
}

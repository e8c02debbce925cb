//! The `http` provider: POSTs the command as JSON to a configured URL,
//! with an optional bearer token (by secret reference, resolved by the
//! caller) and a timeout. 5xx answers and connection errors are retryable;
//! any other non-2xx answer is not. A JSON answer with
//! `observed_replicas` reports them.

use serde::Deserialize;

use crate::secret::{Secret, Token};
use std::time::Duration;

use super::{Provider, ProviderError, ProviderFuture, ScaleCommand};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub url: String,
    #[serde(flatten)]
    pub token: Secret<Token>,
}

impl HttpConfig {
    /// Checks the target's `http` table; `key` makes a key of a field.
    pub fn check(&self, key: &dyn Fn(&str) -> String, out: &mut Vec<crate::settings::Problem>) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            out.push(crate::settings::problem(
                key("http.url"),
                format!(
                    "{:?} must start with http:// or https://",
                    crate::broker::amqp::redact(&self.url)
                ),
            ));
        }
        self.token.check(&key("http.token"), out);
    }
}

/// Why an http provider cannot be built; names the URL (password hidden).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("url {0}: must start with http:// or https://")]
    Scheme(String),
    #[error("url {url}: {source}")]
    Client { url: String, source: reqwest::Error },
}

pub struct HttpProvider {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl HttpProvider {
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<Self, HttpError> {
        let shown = || crate::broker::amqp::redact(url);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(HttpError::Scheme(shown()));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|source| HttpError::Client {
                url: shown(),
                source,
            })?;
        Ok(Self {
            client,
            url: url.to_owned(),
            token,
        })
    }
}

impl Provider for HttpProvider {
    fn name(&self) -> &'static str {
        "http"
    }

    fn scale<'a>(&'a self, c: &'a ScaleCommand) -> ProviderFuture<'a> {
        Box::pin(async move {
            let shown = crate::broker::amqp::redact(&self.url);
            let mut req = self
                .client
                .post(self.url.as_str())
                .header("content-type", "application/json")
                .body(c.to_json());
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| ProviderError {
                message: format!(
                    "http {shown}: {}",
                    crate::broker::amqp::redact(&e.to_string())
                ),
                retryable: true,
            })?;
            let status = resp.status();
            let body = read_bounded(resp).await.map_err(|e| ProviderError {
                retryable: matches!(e, BodyError::Read(_)),
                message: format!("http {shown}: {status}: {e}"),
            })?;
            if !status.is_success() {
                let text: String = String::from_utf8_lossy(&body).chars().take(500).collect();
                return Err(ProviderError {
                    message: format!("http {shown}: {status}: {text}"),
                    retryable: status.is_server_error(),
                });
            }
            let observed = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("observed_replicas")?.as_u64())
                .map(|n| n.min(u32::MAX as u64) as u32);
            Ok(observed)
        })
    }
}

/// The most of an answer's body the worker reads: an `observed_replicas`
/// or an error text fits many times over.
pub const MAX_BODY: usize = 64 << 10;

/// The body, or an error when it is longer than [`MAX_BODY`] or breaks
/// off: a stream without end must not fill the worker's memory, and a
/// body that cannot be read is not an answer.
async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(BodyError::TooLong);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::Read(crate::broker::amqp::redact(&e.to_string()))),
        }
    }
}

/// Why an answer's body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer's body is longer than {MAX_BODY} bytes; tidewatch reads no more")]
    TooLong,
    #[error("reading the answer: {0}")]
    Read(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn posts_the_command_with_the_token_and_sorts_failures() {
        type Seen = Vec<(Option<String>, serde_json::Value)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let answers = Arc::new(Mutex::new(vec![
            (StatusCode::OK, r#"{"observed_replicas": 6}"#),
            (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            (StatusCode::BAD_REQUEST, "no such target"),
        ]));
        let app = {
            let seen = seen.clone();
            axum::Router::new().route(
                "/scale",
                axum::routing::post(move |headers: HeaderMap, body: String| {
                    let seen = seen.clone();
                    let answers = answers.clone();
                    async move {
                        let auth = headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned());
                        seen.lock()
                            .unwrap()
                            .push((auth, serde_json::from_str(&body).unwrap()));
                        let (status, text) = answers.lock().unwrap().remove(0);
                        (status, text)
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let url = format!("http://{addr}/scale");
        let p = HttpProvider::new(&url, Some("s3cret".into()), Duration::from_secs(5)).unwrap();
        let c = crate::provider::tests::command("web", 6);
        assert_eq!(p.scale(&c).await.unwrap(), Some(6));
        let (auth, body) = seen.lock().unwrap()[0].clone();
        assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
        assert_eq!(body["desired_replicas"], 6);
        assert_eq!(body["target"], "web");
        let e = p.scale(&c).await.unwrap_err();
        assert!(e.retryable && e.message.contains("503"), "{e:?}");
        let e = p.scale(&c).await.unwrap_err();
        assert!(
            !e.retryable && e.message.contains("no such target"),
            "{e:?}"
        );
        // Nothing listening: a connection error, retryable.
        drop(seen);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gone = HttpProvider::new(
            &format!("http://127.0.0.1:{port}/scale"),
            None,
            Duration::from_secs(2),
        )
        .unwrap();
        assert!(gone.scale(&c).await.unwrap_err().retryable);
        assert!(HttpProvider::new("ftp://x", None, Duration::from_secs(1)).is_err());
    }

    /// Issue 16, finding 5: an endpoint that answers 200 and streams a body
    /// without end drove the worker to 3.3 GB and then reported `applied`.
    #[tokio::test]
    async fn an_endless_body_is_a_failure_not_an_out_of_memory() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = sock.read(&mut req).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
            while sock.write_all(chunk.as_bytes()).await.is_ok() {
                counter.fetch_add(0x4000, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let p = HttpProvider::new(
            &format!("http://{addr}/scale"),
            None,
            Duration::from_secs(30),
        )
        .unwrap();
        let e = p
            .scale(&crate::provider::tests::command("web", 2))
            .await
            .unwrap_err();
        assert!(e.message.contains("longer than 65536 bytes"), "{e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The worker stopped reading: the server could send little more
        // than the socket buffers hold.
        assert!(
            sent.load(std::sync::atomic::Ordering::Relaxed) < 64 << 20,
            "{} bytes sent",
            sent.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

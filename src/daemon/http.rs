//! HTTP plumbing of the API: docker-style errors (`{"message": …}` with docker's status
//! codes), JSON responses, streamed bodies (JSON message streams, archives), query strings
//! with docker's boolean and `filters` conventions, and request bodies read under a limit.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::engine::EngineError;

/// The body of every response.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// How large a JSON request body may be.
pub const MAX_JSON_BODY: usize = 16 << 20;

/// A failed request: docker's status code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// `{"message": "…"}` with the status.
    pub fn response(&self) -> Response<Body> {
        json_status(self.status, &serde_json::json!({ "message": self.message }))
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let status = match &e {
            EngineError::NotFound(_) => StatusCode::NOT_FOUND,
            EngineError::Conflict(_) => StatusCode::CONFLICT,
            EngineError::InvalidArgument(_) | EngineError::Import(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// `Result` of a handler.
pub type ApiResult<T = Response<Body>> = Result<T, ApiError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response with a status.
pub fn json_status<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A 200 JSON response.
pub fn json<T: Serialize>(value: &T) -> ApiResult {
    Ok(json_status(StatusCode::OK, value))
}

/// An empty response with a status (204 No Content, 201 Created, …).
pub fn no_content(status: StatusCode) -> ApiResult {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    Ok(r)
}

/// What feeds a streamed body: data, or an error that aborts the response (the client
/// sees a broken transfer, never a truncated body that looks complete).
pub type Chunk = Result<Bytes, std::io::Error>;

/// A body fed by a channel: what a blocking or long-running task writes is sent as it comes.
pub struct ChannelBody {
    rx: mpsc::Receiver<Chunk>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }
}

/// A streamed response and the sender that feeds it; the response ends when the sender is
/// dropped.
pub fn stream(content_type: &'static str) -> (mpsc::Sender<Chunk>, Response<Body>) {
    let (tx, rx) = mpsc::channel(64);
    let mut r = Response::new(ChannelBody { rx }.boxed_unsync());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    (tx, r)
}

/// A line of a JSON message stream (`{"stream": …}\r\n` and friends).
pub fn json_line<T: Serialize>(value: &T) -> Chunk {
    let mut v = serde_json::to_vec(value).unwrap_or_default();
    v.extend_from_slice(b"\r\n");
    Ok(Bytes::from(v))
}

/// An `std::io::Write` that sends what is written into a streamed body (for blocking code
/// that writes archives or a container's output). Fails with BrokenPipe once the client is
/// gone. With `frame`, each write becomes one frame of docker's multiplexed stream format:
/// `[stream, 0, 0, 0, len (u32 BE)] + bytes` (stream 1 = stdout, 2 = stderr).
pub struct ChannelWriter {
    pub tx: mpsc::Sender<Chunk>,
    pub frame: Option<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let chunk = match self.frame {
            Some(stream) => {
                let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                let mut framed = Vec::with_capacity(buf.len() + 8);
                framed.extend_from_slice(&[stream, 0, 0, 0]);
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(buf);
                Bytes::from(framed)
            }
            None => Bytes::copy_from_slice(buf),
        };
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A request body as a blocking `Read` (archives, build contexts): an async task pulls the
/// body and hands the chunks over. A transfer error reaches the reader as an I/O error.
pub struct BodyReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
}

impl BodyReader {
    pub fn new(body: Incoming) -> BodyReader {
        let (tx, rx) = mpsc::channel::<Chunk>(16);
        tokio::spawn(async move {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let chunk = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => Ok(d),
                        Err(_) => continue, // trailers
                    },
                    Err(e) => Err(std::io::Error::other(format!(
                        "reading the request body: {e}"
                    ))),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        BodyReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Reads a whole request body of at most `limit` bytes.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> ApiResult<Bytes> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "error reading the request body: {e}"
        ))),
    }
}

/// Reads and parses a JSON request body (an empty body is `null`, for optional bodies).
pub async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> ApiResult<T> {
    let bytes = read_body(req, MAX_JSON_BODY).await?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in the request body: {e}")))
}

/// A request's query string.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        Query {
            pairs: form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    /// The last value of `key` (docker reads the first; they only differ for malformed URLs).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated key (`t=a&t=b`).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Docker's boolean: absent, empty, `0`, `no`, `false`, `none` are false.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| {
            !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "" | "0" | "no" | "false" | "none"
            )
        })
    }

    /// A JSON-valued parameter (`buildargs`, `labels`): absent or empty is None.
    pub fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> ApiResult<Option<T>> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => serde_json::from_str(v)
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON in {key}: {e}"))),
        }
    }

    /// `filters`: `{"key": {"value": true}}` or the older `{"key": ["value"]}`.
    pub fn filters(&self) -> ApiResult<Filters> {
        let Some(raw) = self.get("filters").filter(|v| !v.is_empty()) else {
            return Ok(Filters::default());
        };
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| ApiError::bad_request("invalid filter: expected a JSON object"))?;
        let mut map = BTreeMap::new();
        for (k, v) in obj {
            let values: Vec<String> = match v {
                serde_json::Value::Object(m) => m
                    .iter()
                    .filter(|(_, on)| on.as_bool().unwrap_or(false))
                    .map(|(k, _)| k.clone())
                    .collect(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid filter {k:?}: expected an object or a list of values"
                    )))
                }
            };
            map.insert(k.clone(), values);
        }
        Ok(Filters(map))
    }
}

/// Parsed `filters`: key → accepted values.
#[derive(Debug, Default, Clone)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn values(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Refuses keys the endpoint does not know (docker: `invalid filter 'x'`).
    pub fn only(&self, known: &[&str]) -> ApiResult<()> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::bad_request(format!("invalid filter '{k}'"))),
            None => Ok(()),
        }
    }

    /// `label=key` or `label=key=value` against a label map: every given label must match.
    pub fn labels_match(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        self.values(key)
            .iter()
            .all(|want| match want.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
                None => labels.contains_key(want.as_str()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_flags_and_filters() {
        let q = Query::parse(Some(
            "force=1&noprune=false&t=a&t=b%3A1&filters=%7B%22dangling%22%3A%7B%22true%22%3Atrue%7D%2C%22label%22%3A%5B%22a%3Db%22%5D%7D",
        ));
        assert!(q.flag("force"));
        assert!(!q.flag("noprune"));
        assert!(!q.flag("missing"));
        assert_eq!(q.all("t"), vec!["a", "b:1"]);
        let f = q.filters().unwrap();
        assert_eq!(f.values("dangling"), ["true"]);
        let mut labels = BTreeMap::new();
        assert!(!f.labels_match("label", &labels));
        labels.insert("a".to_string(), "b".to_string());
        assert!(f.labels_match("label", &labels));
        assert!(f.only(&["dangling", "label"]).is_ok());
        assert_eq!(
            f.only(&["label"]).unwrap_err().message,
            "invalid filter 'dangling'"
        );
    }

    #[test]
    fn bad_filters_are_bad_requests() {
        let q = Query::parse(Some("filters=%7Bnope"));
        assert_eq!(q.filters().unwrap_err().status, StatusCode::BAD_REQUEST);
        let q = Query::parse(Some("filters=%5B1%5D"));
        assert_eq!(q.filters().unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}

//! A small threaded HTTP/1.1 server on loopback for the http source's tests and
//! benchmark: the real peer of the plugin, configurable per path, counting what it
//! receives and sends.
//!
//! Each path can send an ETag, Last-Modified and Content-Disposition, gzip its body
//! (when the client accepts it), honour `Range`/`If-Range` (or answer ranges short,
//! or with 206 always), answer `If-None-Match` with 304 (optionally without an ETag,
//! or with a wrong one), redirect (also to another server, i.e. another host), demand
//! an `Authorization` value (401 otherwise), answer a fixed status, cut the
//! connection after N body bytes, or send slowly. Every request is recorded with its
//! method, path and headers, and the body bytes written are counted. A request in
//! absolute form (`GET http://host/path`) is answered too, the server acting as an
//! HTTP proxy.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Where a route's body comes from.
#[derive(Clone, Debug)]
pub enum Body {
    /// Bytes in memory.
    Bytes(Arc<Vec<u8>>),
    /// A file on disk (sent with the kernel's copy; for large benchmark bodies).
    File(PathBuf),
}

impl Default for Body {
    fn default() -> Self {
        Body::Bytes(Arc::new(Vec::new()))
    }
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        }
    }
}

/// How one path answers.
#[derive(Clone, Debug, Default)]
pub struct Route {
    /// The body.
    pub body: Body,
    /// `ETag` header value, quotes included (e.g. `"v1"`).
    pub etag: Option<String>,
    /// `Last-Modified` header value.
    pub last_modified: Option<String>,
    /// `Content-Disposition` header value.
    pub content_disposition: Option<String>,
    /// gzip the body when the request accepts gzip (and asks for no range).
    pub gzip: bool,
    /// Honour `Range` (and `If-Range`).
    pub ranges: bool,
    /// Answer a `Range` request with at most this many bytes (a short 206 whose
    /// `Content-Range` says so), as a broken server or proxy might.
    pub short_ranges: Option<u64>,
    /// Answer requests without a usable `Range` with a 206 too (`bytes 0-…`; with
    /// `short_ranges`, a short one), as some odd servers do.
    pub always_partial: bool,
    /// Answer 304 when `If-None-Match` lists the ETag.
    pub honour_if_none_match: bool,
    /// Leave the ETag out of 304 answers.
    pub not_modified_without_etag: bool,
    /// Answer every conditional request (`If-None-Match` present) with a 304 that
    /// carries this ETag, whatever was asked.
    pub odd_not_modified_etag: Option<String>,
    /// Redirect (302) to this URL.
    pub redirect: Option<String>,
    /// Answer this status with an empty body.
    pub status: Option<u16>,
    /// 401 unless `Authorization` equals this.
    pub require_authorization: Option<String>,
    /// Close the connection after this many body bytes…
    pub cut_after: Option<u64>,
    /// …for this many responses (then send whole bodies).
    pub cuts: usize,
    /// Send the body at most this many bytes per second.
    pub rate: Option<u64>,
}

impl Route {
    /// A route serving `body` with ETag revalidation and ranges honoured.
    pub fn bytes(body: impl Into<Vec<u8>>) -> Self {
        Route {
            body: Body::Bytes(Arc::new(body.into())),
            ranges: true,
            honour_if_none_match: true,
            ..Route::default()
        }
    }
    /// Sets the ETag.
    pub fn etag(mut self, v: &str) -> Self {
        self.etag = Some(v.to_string());
        self
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The `scheme://authority` of a request in absolute form (`GET http://host/path`),
    /// as a client sends it to an HTTP proxy; the server then acts as that proxy
    /// and answers from its routes.
    pub proxied_to: Option<String>,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Status answered.
    pub status: u16,
    /// Body bytes written for this request.
    pub body_bytes: u64,
}

impl Seen {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    cuts_done: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<Seen>>,
    body_bytes: AtomicU64,
    stop: AtomicBool,
}

/// A running server; stops when dropped.
pub struct HttpServer {
    port: u16,
    state: Arc<State>,
}

impl HttpServer {
    /// Starts a server on `127.0.0.1` with a free port.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    /// Starts a server on `addr` (`IP:PORT`, port 0 for a free one).
    pub fn start_on(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(State::default());
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let st = st.clone();
                    thread::spawn(move || {
                        let _ = serve_connection(stream, &st);
                    });
                }
            }
        });
        HttpServer { port, state }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The same server under another host name (e.g. `localhost`): another host for
    /// the client, so redirects between the two cross hosts.
    pub fn url_with_host(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// Sets (or replaces) the route of `path`.
    pub fn route(&self, path: &str, route: Route) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), route);
        self.state.cuts_done.lock().unwrap().remove(path);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests with `method` for `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    /// All requests for `path`.
    pub fn count_path(&self, path: &str) -> usize {
        self.requests().iter().filter(|s| s.path == path).count()
    }

    /// Body bytes written so far, all requests together.
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// Forgets the recorded requests and the byte count.
    pub fn reset_counters(&self) {
        self.state.seen.lock().unwrap().clear();
        self.state.body_bytes.store(0, Ordering::SeqCst);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_connection(stream: TcpStream, st: &State) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return Ok(());
        };
        let (method, mut path) = (method.to_string(), path.to_string());
        let mut proxied_to = None;
        if let Some(rest) = path.strip_prefix("http://") {
            let cut = rest.find('/').unwrap_or(rest.len());
            proxied_to = Some(format!("http://{}", &rest[..cut]));
            path = match &rest[cut..] {
                "" => "/".to_string(),
                p => p.to_string(),
            };
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let mut seen = Seen {
            method,
            path,
            proxied_to,
            headers,
            status: 0,
            body_bytes: 0,
        };
        if let Some(len) = seen
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
        }
        let keep = answer(&mut out, st, &mut seen);
        st.seen.lock().unwrap().push(seen);
        match keep {
            Ok(true) => continue,
            Ok(false) => {
                let _ = out.shutdown(Shutdown::Both);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

fn etag_list_contains(list: &str, etag: &str) -> bool {
    let strip = |s: &str| s.trim().trim_start_matches("W/").to_string();
    list.split(',')
        .any(|t| t.trim() == "*" || strip(t) == strip(etag))
}

/// Writes the answer; `Ok(false)` closes the connection.
fn answer(out: &mut TcpStream, st: &State, seen: &mut Seen) -> std::io::Result<bool> {
    let route_key = seen.path.clone();
    let route = st.routes.lock().unwrap().get(&route_key).cloned();
    let head = seen.method == "HEAD";
    let Some(route) = route else {
        seen.status = 404;
        write_head(out, 404, &[("Content-Length", "0".into())])?;
        return Ok(true);
    };
    if let Some(want) = &route.require_authorization {
        if seen.header("authorization") != Some(want.as_str()) {
            seen.status = 401;
            write_head(
                out,
                401,
                &[
                    ("Content-Length", "0".into()),
                    ("WWW-Authenticate", "Bearer".into()),
                ],
            )?;
            return Ok(true);
        }
    }
    if let Some(code) = route.status {
        seen.status = code;
        write_head(out, code, &[("Content-Length", "0".into())])?;
        return Ok(true);
    }
    if let Some(loc) = &route.redirect {
        seen.status = 302;
        write_head(
            out,
            302,
            &[("Location", loc.clone()), ("Content-Length", "0".into())],
        )?;
        return Ok(true);
    }
    let mut h: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &route.last_modified {
        h.push(("Last-Modified", v.clone()));
    }
    if let Some(v) = &route.content_disposition {
        h.push(("Content-Disposition", v.clone()));
    }
    if let Some(inm) = seen.header("if-none-match").map(str::to_string) {
        if let Some(odd) = &route.odd_not_modified_etag {
            seen.status = 304;
            h.push(("ETag", odd.clone()));
            write_head(out, 304, &h)?;
            return Ok(true);
        }
        if let Some(etag) = &route.etag {
            if route.honour_if_none_match && etag_list_contains(&inm, etag) {
                if !route.not_modified_without_etag {
                    h.push(("ETag", etag.clone()));
                }
                seen.status = 304;
                write_head(out, 304, &h)?;
                return Ok(true);
            }
        }
    }
    if let Some(etag) = &route.etag {
        h.push(("ETag", etag.clone()));
    }
    if route.ranges {
        h.push(("Accept-Ranges", "bytes".into()));
    }
    let full_len = route.body.len();
    // Range, honoured only when If-Range (if any) matches the current validator.
    let mut range: Option<(u64, u64)> = None;
    if route.ranges {
        if let Some(r) = seen.header("range").and_then(|v| v.strip_prefix("bytes=")) {
            let if_range_ok = match seen.header("if-range") {
                None => true,
                Some(v) => {
                    Some(v) == route.etag.as_deref() || Some(v) == route.last_modified.as_deref()
                }
            };
            if let Some((a, b)) = r.split_once('-') {
                if let Ok(start) = a.trim().parse::<u64>() {
                    let end = b
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .map_or(full_len.saturating_sub(1), |e| {
                            e.min(full_len.saturating_sub(1))
                        });
                    if if_range_ok && start < full_len && start <= end {
                        range = Some((start, end));
                    }
                }
            }
        }
    }
    if range.is_none() && route.always_partial && full_len > 0 {
        range = Some((0, full_len - 1));
    }
    if let (Some((start, end)), Some(n)) = (&mut range, route.short_ranges) {
        *end = (*end).min(start.saturating_add(n.max(1) - 1));
    }
    let accepts_gzip = seen
        .header("accept-encoding")
        .is_some_and(|v| v.contains("gzip"));
    let gzip_it = route.gzip && accepts_gzip && range.is_none();
    let (status, start, len) = match range {
        Some((s, e)) => {
            h.push(("Content-Range", format!("bytes {s}-{e}/{full_len}")));
            (206, s, e - s + 1)
        }
        None => (200, 0, full_len),
    };
    seen.status = status;
    if gzip_it {
        let raw = match &route.body {
            Body::Bytes(b) => b.as_ref().clone(),
            Body::File(p) => std::fs::read(p)?,
        };
        let gz = gzip_stored(&raw);
        h.push(("Content-Encoding", "gzip".into()));
        h.push(("Content-Length", gz.len().to_string()));
        write_head(out, status, &h)?;
        if head {
            return Ok(true);
        }
        return send_body(
            out,
            st,
            seen,
            &route,
            &route_key,
            Body::Bytes(Arc::new(gz)),
            0,
            u64::MAX,
        );
    }
    h.push(("Content-Length", len.to_string()));
    write_head(out, status, &h)?;
    if head {
        return Ok(true);
    }
    send_body(
        out,
        st,
        seen,
        &route,
        &route_key,
        route.body.clone(),
        start,
        len,
    )
}

#[allow(clippy::too_many_arguments)]
fn send_body(
    out: &mut TcpStream,
    st: &State,
    seen: &mut Seen,
    route: &Route,
    key: &str,
    body: Body,
    start: u64,
    len: u64,
) -> std::io::Result<bool> {
    let cut = match route.cut_after {
        Some(n) => {
            let mut done = st.cuts_done.lock().unwrap();
            let c = done.entry(key.to_string()).or_insert(0);
            if *c < route.cuts {
                *c += 1;
                Some(n)
            } else {
                None
            }
        }
        None => None,
    };
    let mut limit = len;
    if let Some(n) = cut {
        limit = limit.min(n);
    }
    let sent = match (&body, route.rate) {
        (Body::File(p), None) => {
            let mut f = File::open(p)?;
            f.seek(SeekFrom::Start(start))?;
            let n = std::io::copy(&mut f.take(limit), out)?;
            st.body_bytes.fetch_add(n, Ordering::SeqCst);
            n
        }
        _ => {
            let data: Vec<u8> = match &body {
                Body::Bytes(b) => b.as_ref().clone(),
                Body::File(p) => std::fs::read(p)?,
            };
            let end = (start.saturating_add(limit)).min(data.len() as u64) as usize;
            let slice = &data[start as usize..end];
            let began = Instant::now();
            let mut n = 0u64;
            for chunk in slice.chunks(64 * 1024) {
                if let Some(rate) = route.rate {
                    let due = Duration::from_secs_f64(n as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(began.elapsed()) {
                        thread::sleep(wait);
                    }
                }
                if out.write_all(chunk).is_err() {
                    break;
                }
                n += chunk.len() as u64;
                st.body_bytes
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                seen.body_bytes = n;
            }
            n
        }
    };
    seen.body_bytes = sent;
    out.flush()?;
    Ok(cut.is_none())
}

fn write_head(out: &mut TcpStream, status: u16, headers: &[(&str, String)]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        304 => "Not Modified",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Status",
    };
    let mut s = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    out.write_all(s.as_bytes())
}

/// A valid gzip member holding `data` in stored (uncompressed) deflate blocks.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let n = c.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}

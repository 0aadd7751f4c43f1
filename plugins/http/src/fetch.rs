//! Downloading a body into the host's content store: streamed (a reader thread pulls
//! from the socket while this thread hands the bytes to the store, which hashes and
//! writes them), resumed with `Range` + `If-Range` after a cut or a killed process,
//! retried with backoff on resets, timeouts and 5xx, and committed only when the
//! digest is right.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use kiln_plugin_api::{BlobWriter, ErrorCode, Host, Job, PluginError, Result};

use crate::client::{self, etag_value, Response};
use crate::config::Config;
use crate::ident::HttpIdentifier;
use crate::proxy::Agents;

/// Bytes per buffer handed from the reader thread.
const CHUNK: usize = 1 << 20;
/// Buffers in flight.
const BUFFERS: usize = 4;

/// A body committed to the store.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The committed blob.
    pub path: PathBuf,
    /// The response's ETag (`W/` removed), if any.
    pub etag: Option<String>,
    /// The response's `Last-Modified`, if any.
    pub last_modified: Option<String>,
    /// The response's `Content-Disposition`, if any.
    pub content_disposition: Option<String>,
}

/// What a conditional GET gave.
pub enum GetOutcome {
    /// 304: the ETag answered (`W/` removed) and the `Content-Disposition`.
    NotModified {
        /// The ETag of the 304, if it sent one.
        etag: Option<String>,
        /// Its `Content-Disposition`.
        content_disposition: Option<String>,
    },
    /// The body, stored.
    Fetched(Fetched),
}

/// A counting semaphore bounding concurrent body downloads.
pub struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

/// A held download slot.
pub struct Permit<'a>(&'a Semaphore);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

impl Semaphore {
    /// `n` slots.
    pub fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }
    /// Waits for a slot, polling for cancellation.
    pub fn acquire(&self, job: &Job<'_>) -> Result<Permit<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            job.check_cancelled()?;
            free = self
                .cv
                .wait_timeout(free, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *free -= 1;
        Ok(Permit(self))
    }
}

/// Everything a download needs.
pub struct Ctx<'a, 'j> {
    /// Plugin configuration.
    pub cfg: &'a Config,
    /// The HTTP agents.
    pub agents: &'a Agents,
    /// The host's services.
    pub host: &'a Host,
    /// What to fetch.
    pub id: &'a HttpIdentifier,
    /// The `Authorization` value, if any.
    pub auth: Option<&'a str>,
    /// The job.
    pub job: &'a Job<'j>,
    /// Download slots.
    pub slots: &'a Semaphore,
}

enum StreamError {
    /// The body broke off (reset, timeout, early EOF): resume or retry.
    Read(io::Error),
    /// The store or the job refused: stop.
    Fatal(PluginError),
}

/// GETs the URL into the store (ingest `http-<url hash>`), sending `If-None-Match`
/// when given, resuming a partial ingest when the server allows, and verifying
/// `expected` at commit.
pub fn get_into_store(
    ctx: &Ctx<'_, '_>,
    if_none_match: Option<&str>,
    expected: Option<&str>,
) -> Result<GetOutcome> {
    let id = ctx.id;
    let ingest = format!("http-{}", id.url_hash());
    let _permit = ctx.slots.acquire(ctx.job)?;
    let mut writer = ctx
        .host
        .blob_writer(&ingest)
        .map_err(|e| e.context(format!("{id}: content store")))?;
    let task = format!("GET {id}");
    let mut failures = 0u32;
    let mut no_range = false;
    let limits = Limits::new(ctx.cfg, id);
    loop {
        ctx.job.check_cancelled()?;
        limits.check_deadline(id)?;
        let saved = Partial::decode(&writer.validator());
        let offset = writer.offset();
        // Resume only data saved with a validator and a length it has not reached (a
        // complete ingest that was never committed is fetched again: a range past the
        // end would be refused).
        let resume = offset > 0
            && !no_range
            && saved
                .as_ref()
                .is_some_and(|p| !p.validator.is_empty() && p.total.is_none_or(|t| offset < t));
        if offset > 0 && !resume {
            writer
                .reset()
                .map_err(|e| e.context(format!("{id}: content store")))?;
        }
        let offset = writer.offset();
        let saved = saved.filter(|_| resume);
        let range = format!("bytes={offset}-");
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(inm) = if_none_match {
            headers.push(("If-None-Match", inm));
        }
        if let Some(p) = &saved {
            headers.push(("Range", &range));
            headers.push(("If-Range", &p.validator));
        }
        let resp = match client::send(ctx.agents, id, ctx.auth, "GET", &headers) {
            Ok(r) => r,
            Err(e) if e.retryable && failures < ctx.cfg.retries => {
                failures += 1;
                backoff(ctx, failures, &e.message)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let status = resp.status();
        if status == 304 {
            return Ok(GetOutcome::NotModified {
                etag: resp
                    .header("ETag")
                    .map(|v| etag_value(&v))
                    .filter(|v| !v.is_empty()),
                content_disposition: resp.header("Content-Disposition"),
            });
        }
        if !(200..300).contains(&status) {
            return Err(PluginError::new(
                ErrorCode::INTERNAL,
                format!("{id}: invalid response status {status}"),
            ));
        }
        // `client::send` refused invalid or conflicting lengths.
        let encoded_length = client::check_framing(&resp.inner).ok().flatten();
        let gzip = is_gzip(&resp);
        // A gzip body's decoded length is unknown until its end.
        let content_length = encoded_length.filter(|_| !gzip);
        if let Some(len) = content_length {
            // A 206 holds the bytes from `offset` on.
            let full = if status == 206 {
                offset.saturating_add(len)
            } else {
                len
            };
            if full > limits.max_size {
                return Err(limits.too_large(id, full));
            }
        }
        let (start, total) = if status == 206 {
            // The answer to a resumed request, or (from odd servers) to a plain GET:
            // then it must hold the whole body.
            match check_partial(
                resp.header("Content-Range").as_deref(),
                content_length,
                offset,
                saved.as_ref().and_then(|p| p.total),
            ) {
                Ok(total) => (offset, Some(total)),
                Err(why) => {
                    // Never loop on it: the next attempt asks for the whole body, and
                    // the attempt counts against the retries.
                    no_range = true;
                    let why = if offset > 0 {
                        format!(
                            "unusable 206 answer to the request resuming at byte {offset}: {why}"
                        )
                    } else {
                        format!("206 answer to a request for the whole body: {why}")
                    };
                    retry_or_fail(ctx, &mut failures, &why, None, |m| {
                        PluginError::new(ErrorCode::INTERNAL, m)
                    })?;
                    continue;
                }
            }
        } else {
            if offset > 0 {
                writer
                    .reset()
                    .map_err(|e| e.context(format!("{id}: content store")))?;
            }
            (0, content_length)
        };
        if start > 0 {
            tracing::info!("{id}: resuming at byte {start}");
        }
        let keep = match &saved {
            // Resumed: keep the validator, adding the length if it was unknown.
            Some(p) if start > 0 => p.total.is_none().then(|| Partial {
                total,
                validator: p.validator.clone(),
            }),
            // From the start: what a later attempt or run may resume against, a strong
            // ETag, else Last-Modified, with the full length. A gzip body is stored
            // decoded, so a range of the encoded body cannot continue it: no validator,
            // never resumed.
            _ => Some(Partial {
                total,
                validator: resp
                    .header("ETag")
                    .filter(|e| !e.starts_with("W/"))
                    .or_else(|| resp.header("Last-Modified"))
                    .filter(|_| !gzip)
                    .unwrap_or_default(),
            }),
        };
        if let Some(v) = keep {
            writer
                .set_validator(&v.encode())
                .map_err(|e| e.context(format!("{id}: content store")))?;
        }
        let meta = (
            resp.header("ETag")
                .map(|v| etag_value(&v))
                .filter(|v| !v.is_empty()),
            resp.header("Last-Modified"),
            resp.header("Content-Disposition"),
        );
        let why = match stream_body(
            resp,
            &mut writer,
            ctx.job,
            &task,
            start,
            total,
            &limits,
            gzip,
        ) {
            Ok(n) if total.is_none_or(|t| t == n) => {
                ctx.job.progress_finish(&task, n, None);
                let info = writer.commit(expected).map_err(|e| commit_error(id, e))?;
                return Ok(GetOutcome::Fetched(Fetched {
                    digest: info.digest.into_string(),
                    path: PathBuf::from(info.path.as_str()),
                    etag: meta.0,
                    last_modified: meta.1,
                    content_disposition: meta.2,
                }));
            }
            Ok(n) => {
                // Never store a body of the wrong length: start again.
                writer
                    .reset()
                    .map_err(|e| e.context(format!("{id}: content store")))?;
                format!(
                    "the body ended at byte {n} of {}",
                    total.expect("guarded above")
                )
            }
            Err(StreamError::Fatal(e)) => {
                ctx.job.progress_finish(&task, 0, Some(&e.message));
                // A body over a limit is never kept: the next run starts clean.
                if e.code != ErrorCode::CANCELLED {
                    let _ = writer.reset();
                }
                return Err(e);
            }
            Err(StreamError::Read(e)) => format!("download broke off: {e}"),
        };
        retry_or_fail(ctx, &mut failures, &why, Some(&task), PluginError::network)?;
    }
}

/// Counts a failed attempt and waits before the next one; once the retries are used
/// up, fails with `why` (made an error by `error`), finishing the `task`'s progress.
fn retry_or_fail(
    ctx: &Ctx<'_, '_>,
    failures: &mut u32,
    why: &str,
    task: Option<&str>,
    error: impl FnOnce(String) -> PluginError,
) -> Result<()> {
    if *failures >= ctx.cfg.retries {
        let e = error(format!(
            "{}: {why} (gave up after {} retries)",
            ctx.id, ctx.cfg.retries
        ));
        if let Some(task) = task {
            ctx.job.progress_finish(task, 0, Some(&e.message));
        }
        return Err(e);
    }
    *failures += 1;
    backoff(ctx, *failures, why)
}

fn commit_error(id: &HttpIdentifier, e: PluginError) -> PluginError {
    // The store's message names the expected and the actual digest.
    e.context(id)
}

fn backoff(ctx: &Ctx<'_, '_>, attempt: u32, why: &str) -> Result<()> {
    let wait = ctx.cfg.backoff(attempt);
    tracing::warn!(
        "{}: attempt {attempt} of {} failed ({why}); retrying in {} ms",
        ctx.id,
        ctx.cfg.retries,
        wait.as_millis()
    );
    let until = Instant::now() + wait;
    while Instant::now() < until {
        ctx.job.check_cancelled()?;
        std::thread::sleep(
            Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
        );
    }
    Ok(())
}

/// What is saved with a partial download (the ingest's validator) so that a later
/// attempt or run resumes it only against the same body: the full length and the
/// `If-Range` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    /// The full length of the body, when the server told it.
    pub total: Option<u64>,
    /// A strong ETag or a `Last-Modified` value (empty: not resumable).
    pub validator: String,
}

/// Marks the encoding of [`Partial`]; anything else (an older format) is not resumed.
const PARTIAL_FORMAT: &str = "kiln-http-partial/1";

impl Partial {
    /// `kiln-http-partial/1\n<total or empty>\n<validator>` (header values hold no
    /// line break).
    pub fn encode(&self) -> String {
        let total = self.total.map(|t| t.to_string()).unwrap_or_default();
        format!("{PARTIAL_FORMAT}\n{total}\n{}", self.validator)
    }

    /// Reads what [`Partial::encode`] wrote; `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        let mut lines = s.splitn(3, '\n');
        if lines.next()? != PARTIAL_FORMAT {
            return None;
        }
        let total = match lines.next()? {
            "" => None,
            t => Some(t.parse().ok()?),
        };
        Some(Partial {
            total,
            validator: lines.next()?.to_string(),
        })
    }
}

/// A parsed `Content-Range: bytes first-last/total` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    /// The first byte position.
    pub first: u64,
    /// The last byte position (inclusive).
    pub last: u64,
    /// The full length (`None` for `*`).
    pub total: Option<u64>,
}

/// Parses a `Content-Range` value of a 206 (`bytes a-b/c` or `bytes a-b/*`, with
/// `a <= b < c`).
pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let (range, total) = rest.trim_start().split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = (num(a)?, num(b)?);
    let total = match total.trim() {
        "*" => None,
        t => Some(num(t)?),
    };
    if first > last || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some(ContentRange { first, last, total })
}

/// Checks a 206 against the request for the bytes from `offset` to the end of a body
/// of `known_total` bytes (if known): the range must start at `offset` and reach the
/// end, and the lengths must agree. Returns the full length, or why the answer is
/// unusable.
pub fn check_partial(
    content_range: Option<&str>,
    content_length: Option<u64>,
    offset: u64,
    known_total: Option<u64>,
) -> std::result::Result<u64, String> {
    let Some(v) = content_range else {
        return Err("no Content-Range header".into());
    };
    let shown: String = v.chars().take(80).collect();
    let cr = parse_content_range(v).ok_or_else(|| format!("invalid Content-Range {shown:?}"))?;
    if cr.first != offset {
        return Err(format!(
            "Content-Range {shown:?} does not start at byte {offset}"
        ));
    }
    let total = match (cr.total, known_total) {
        (Some(t), Some(k)) if t != k => {
            return Err(format!(
                "Content-Range {shown:?} gives a length of {t} bytes, not {k}"
            ))
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => {
            return Err(format!(
                "Content-Range {shown:?} does not give the full length"
            ))
        }
    };
    if cr.last + 1 != total {
        return Err(format!(
            "Content-Range {shown:?} stops short of the end of the {total}-byte body"
        ));
    }
    if let Some(len) = content_length {
        if len != cr.last - cr.first + 1 {
            return Err(format!(
                "Content-Length {len} does not match Content-Range {shown:?}"
            ));
        }
    }
    Ok(total)
}

/// The bounds of one download (DESIGN: bad input never runs unbounded): the most
/// decoded bytes, the inflation ratio, the low-speed rule and the overall deadline.
pub struct Limits {
    /// The longest body accepted.
    pub max_size: u64,
    /// Where `max_size` came from, for the message.
    pub max_size_from: &'static str,
    /// `max_decompression_ratio`.
    pub ratio: u64,
    /// `low_speed_limit_bytes` (0: off).
    pub low_speed: u64,
    /// `low_speed_time_secs`.
    pub low_speed_time: Duration,
    /// When the whole download must be over.
    pub deadline: Instant,
    /// `deadline_secs`, for the message.
    pub deadline_secs: u64,
}

impl Limits {
    /// The limits of `cfg`, with `id`'s `http.maxsize` if set.
    pub fn new(cfg: &Config, id: &HttpIdentifier) -> Self {
        Limits {
            max_size: id.max_size.unwrap_or(cfg.max_body_bytes),
            max_size_from: if id.max_size.is_some() {
                "http.maxsize"
            } else {
                "max_body_bytes"
            },
            ratio: cfg.max_decompression_ratio,
            low_speed: cfg.low_speed_limit_bytes,
            low_speed_time: Duration::from_secs(cfg.low_speed_time_secs.max(1)),
            deadline: Instant::now() + Duration::from_secs(cfg.deadline_secs),
            deadline_secs: cfg.deadline_secs,
        }
    }

    fn too_large(&self, id: &HttpIdentifier, len: u64) -> PluginError {
        PluginError::new(
            ErrorCode::NETWORK,
            format!(
                "{id}: the body is larger than the limit of {} bytes ({len} bytes or more; raise {} to allow it)",
                self.max_size, self.max_size_from
            ),
        )
    }

    fn check_deadline(&self, id: &HttpIdentifier) -> Result<()> {
        if Instant::now() >= self.deadline {
            return Err(PluginError::new(
                ErrorCode::NETWORK,
                format!(
                    "{id}: the download did not finish within deadline_secs = {} (all attempts together)",
                    self.deadline_secs
                ),
            ));
        }
        Ok(())
    }
}

fn is_gzip(resp: &Response) -> bool {
    resp.header("Content-Encoding").is_some_and(|v| {
        v.split(',')
            .any(|e| matches!(e.trim().to_ascii_lowercase().as_str(), "gzip" | "x-gzip"))
    })
}

/// Counts the bytes read through it (the encoded size of a compressed body).
struct Counting<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Why the reader thread stopped a body on purpose (not a network failure).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// How often the writing side wakes while waiting for data, to see cancellation and
/// the deadline even when the body has stalled.
const POLL: Duration = Duration::from_millis(100);

#[allow(clippy::too_many_arguments)]
fn stream_body(
    resp: Response,
    writer: &mut BlobWriter,
    job: &Job<'_>,
    task: &str,
    start: u64,
    total: Option<u64>,
    limits: &Limits,
    gzip: bool,
) -> std::result::Result<u64, StreamError> {
    let encoded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let raw = Counting {
        inner: resp.inner.into_reader(),
        count: encoded.clone(),
    };
    let reader: Box<dyn Read + Send> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let bounds = ReadBounds {
        // Decoded bytes this attempt may still add.
        room: limits.max_size.saturating_sub(start),
        max_size: limits.max_size,
        max_size_from: limits.max_size_from,
        ratio: gzip.then_some(limits.ratio),
        encoded,
        low_speed: limits.low_speed,
        low_speed_time: limits.low_speed_time,
    };
    let (full_tx, full_rx) = sync_channel::<io::Result<Vec<u8>>>(BUFFERS);
    let (empty_tx, empty_rx) = channel::<Vec<u8>>();
    for _ in 0..BUFFERS {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    // The reader thread owns the socket; it ends when the body ends, fails, or when
    // this side hangs up (cancel, store error).
    std::thread::Builder::new()
        .name("kiln-http-read".into())
        .spawn(move || read_loop(reader, empty_rx, full_tx, bounds))
        .map_err(|e| {
            StreamError::Fatal(PluginError::internal(format!(
                "spawning a reader thread: {e}"
            )))
        })?;
    job.progress_start(task, total.unwrap_or(0));
    let mut current = start;
    let mut reported = Instant::now();
    loop {
        let next = match full_rx.recv_timeout(POLL) {
            Ok(next) => next,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if job.is_cancelled() {
                    return Err(StreamError::Fatal(PluginError::cancelled()));
                }
                if Instant::now() >= limits.deadline {
                    return Err(StreamError::Fatal(PluginError::new(
                        ErrorCode::NETWORK,
                        format!(
                            "the download did not finish within deadline_secs = {} (all attempts together)",
                            limits.deadline_secs
                        ),
                    )));
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(StreamError::Read(io::Error::other(
                    "the reader thread stopped",
                )))
            }
        };
        match next {
            Ok(buf) if buf.is_empty() => return Ok(current),
            Ok(buf) => {
                writer.write(&buf).map_err(StreamError::Fatal)?;
                current += buf.len() as u64;
                if job.is_cancelled() {
                    return Err(StreamError::Fatal(PluginError::cancelled()));
                }
                if reported.elapsed() >= Duration::from_millis(200) {
                    job.progress_update(task, current, total.unwrap_or(0));
                    reported = Instant::now();
                }
                let _ = empty_tx.send(buf);
            }
            Err(e) => {
                if let Some(r) = e.get_ref().and_then(|r| r.downcast_ref::<Refused>()) {
                    return Err(StreamError::Fatal(PluginError::new(
                        ErrorCode::NETWORK,
                        r.0.clone(),
                    )));
                }
                return Err(StreamError::Read(e));
            }
        }
    }
}

/// What the reader thread enforces while it reads.
struct ReadBounds {
    room: u64,
    max_size: u64,
    max_size_from: &'static str,
    /// The ratio guard, for a compressed body.
    ratio: Option<u64>,
    encoded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    low_speed: u64,
    low_speed_time: Duration,
}

impl ReadBounds {
    /// Checks the bounds after `decoded` bytes of this attempt; `window` is the start
    /// of the current low-speed window and the bytes read since.
    fn check(&self, decoded: u64, window: &mut (Instant, u64)) -> io::Result<()> {
        if decoded > self.room {
            return Err(io::Error::other(Refused(format!(
                "the body is larger than the limit of {} bytes (raise {} to allow it)",
                self.max_size, self.max_size_from
            ))));
        }
        if let Some(ratio) = self.ratio {
            let enc = self
                .encoded
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(1);
            if decoded > crate::config::RATIO_FLOOR && decoded / enc > ratio {
                return Err(io::Error::other(Refused(format!(
                    "the compressed body inflates more than {ratio} times ({enc} bytes gave over {decoded}); refusing a likely decompression bomb (raise max_decompression_ratio to allow it)"
                ))));
            }
        }
        if self.low_speed > 0 {
            let elapsed = window.0.elapsed();
            if elapsed >= self.low_speed_time {
                let rate = window.1 as f64 / elapsed.as_secs_f64();
                if rate < self.low_speed as f64 {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "slower than {} bytes/s for {} s (low_speed_limit_bytes, low_speed_time_secs)",
                            self.low_speed,
                            self.low_speed_time.as_secs()
                        ),
                    ));
                }
                *window = (Instant::now(), 0);
            }
        }
        Ok(())
    }
}

fn read_loop(
    mut reader: Box<dyn Read + Send>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    full: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
    bounds: ReadBounds,
) {
    let mut decoded = 0u64;
    let mut window = (Instant::now(), 0u64);
    while let Ok(mut buf) = empty.recv() {
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        let mut failure = None;
        let mut eof = false;
        // A slow body is handed on at least every POLL, so progress shows.
        let since = Instant::now();
        while filled < CHUNK {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    filled += n;
                    decoded += n as u64;
                    window.1 += n as u64;
                    if let Err(e) = bounds.check(decoded, &mut window) {
                        failure = Some(e);
                        break;
                    }
                    if since.elapsed() >= POLL {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        buf.truncate(filled);
        // Bytes past a refused bound are not handed on.
        let refused = failure
            .as_ref()
            .is_some_and(|e| e.get_ref().is_some_and(|r| r.is::<Refused>()));
        if filled > 0 && !refused && full.send(Ok(buf)).is_err() {
            return;
        }
        if let Some(e) = failure {
            let _ = full.send(Err(e));
            return;
        }
        if eof {
            let _ = full.send(Ok(Vec::new()));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        let cr = |first, last, total| Some(ContentRange { first, last, total });
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            cr(100, 199, Some(200))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), cr(0, 0, None));
        assert_eq!(parse_content_range(" bytes  5-9/10 "), cr(5, 9, Some(10)));
        for bad in [
            "bytes */200",
            "bytes 9-5/10",
            "bytes 0-10/10",
            "bytes -1-5/10",
            "bytes 0-+5/10",
            "bytes=0-5/10",
            "bytes0-5/10",
            "items 0-5/10",
            "bytes 0-5",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn partial_answers_must_reach_the_end() {
        // The resumed request of a 12,032-byte body cut at 5,000.
        let ok = check_partial(
            Some("bytes 5000-12031/12032"),
            Some(7032),
            5000,
            Some(12032),
        );
        assert_eq!(ok, Ok(12032));
        // The length was unknown so far: the Content-Range gives it.
        assert_eq!(
            check_partial(Some("bytes 5000-12031/12032"), None, 5000, None),
            Ok(12032)
        );
        assert_eq!(
            check_partial(Some("bytes 5000-12031/*"), None, 5000, Some(12032)),
            Ok(12032)
        );
        let bad = [
            // short: the reviewer's case
            (Some("bytes 5000-5999/12032"), Some(1000), Some(12032)),
            (Some("bytes 5000-5999/*"), None, Some(12032)),
            // wrong start
            (Some("bytes 0-12031/12032"), None, Some(12032)),
            // another length than the first answer gave
            (Some("bytes 5000-12999/13000"), None, Some(12032)),
            // length unknowable
            (Some("bytes 5000-12031/*"), None, None),
            // Content-Length disagrees
            (Some("bytes 5000-12031/12032"), Some(7000), Some(12032)),
            (None, None, Some(12032)),
            (Some("bytes */12032"), None, Some(12032)),
        ];
        for (cr, len, total) in bad {
            let e = check_partial(cr, len, 5000, total).unwrap_err();
            assert!(!e.is_empty(), "{cr:?}");
        }
        // A 206 to a plain GET: usable only when it holds the whole body.
        assert_eq!(
            check_partial(Some("bytes 0-12031/12032"), Some(12032), 0, None),
            Ok(12032)
        );
        for cr in [
            "bytes 0-99/12032",
            "bytes 0-12031/*",
            "bytes 100-12031/12032",
        ] {
            assert!(check_partial(Some(cr), None, 0, None).is_err(), "{cr}");
        }
        let e = check_partial(Some("bytes 5000-5999/12032"), None, 5000, Some(12032)).unwrap_err();
        assert!(e.contains("short") && e.contains("5000-5999"), "{e}");
    }

    #[test]
    fn partial_state_round_trips() {
        for p in [
            Partial {
                total: Some(12032),
                validator: "\"etag\"".into(),
            },
            Partial {
                total: None,
                validator: "Sun, 06 Nov 1994 08:49:37 GMT".into(),
            },
            Partial {
                total: Some(0),
                validator: String::new(),
            },
        ] {
            assert_eq!(Partial::decode(&p.encode()), Some(p));
        }
        // What older versions saved (a bare ETag) is not resumed.
        assert_eq!(Partial::decode("\"etag\""), None);
        assert_eq!(Partial::decode(""), None);
        assert_eq!(Partial::decode("kiln-http-partial/1\nx\n\"e\""), None);
    }
}

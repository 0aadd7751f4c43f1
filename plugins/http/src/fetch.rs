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
    /// The HTTP agent.
    pub agent: &'a ureq::Agent,
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
    loop {
        ctx.job.check_cancelled()?;
        let offset = writer.offset();
        let validator = writer.validator();
        let resume = offset > 0 && !validator.is_empty() && !no_range;
        if offset > 0 && !resume {
            writer
                .reset()
                .map_err(|e| e.context(format!("{id}: content store")))?;
        }
        let range = format!("bytes={offset}-");
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(inm) = if_none_match {
            headers.push(("If-None-Match", inm));
        }
        if resume {
            headers.push(("Range", &range));
            headers.push(("If-Range", &validator));
        }
        let resp = match client::send(ctx.agent, id, ctx.auth, "GET", &headers) {
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
        let start = if status == 206 {
            match content_range_start(resp.header("Content-Range").as_deref()) {
                Some(s) if resume && s == offset => {
                    tracing::info!("{id}: resuming at byte {offset}");
                    offset
                }
                _ => {
                    tracing::warn!("{id}: unusable partial response; downloading the whole body");
                    no_range = true;
                    continue;
                }
            }
        } else {
            if offset > 0 {
                writer
                    .reset()
                    .map_err(|e| e.context(format!("{id}: content store")))?;
            }
            // What a later run may resume against: a strong ETag, else Last-Modified.
            let v = resp
                .header("ETag")
                .filter(|e| !e.starts_with("W/"))
                .or_else(|| resp.header("Last-Modified"))
                .unwrap_or_default();
            writer
                .set_validator(&v)
                .map_err(|e| e.context(format!("{id}: content store")))?;
            0
        };
        let total = resp
            .header("Content-Length")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|len| start + len);
        let meta = (
            resp.header("ETag")
                .map(|v| etag_value(&v))
                .filter(|v| !v.is_empty()),
            resp.header("Last-Modified"),
            resp.header("Content-Disposition"),
        );
        match stream_body(resp, &mut writer, ctx.job, &task, start, total) {
            Ok(n) => {
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
            Err(StreamError::Fatal(e)) => {
                ctx.job.progress_finish(&task, 0, Some(&e.message));
                return Err(e);
            }
            Err(StreamError::Read(e)) => {
                if failures >= ctx.cfg.retries {
                    let msg = format!(
                        "{id}: download broke off after {} retries: {e}",
                        ctx.cfg.retries
                    );
                    ctx.job.progress_finish(&task, 0, Some(&msg));
                    return Err(PluginError::network(msg));
                }
                failures += 1;
                backoff(ctx, failures, &e.to_string())?;
            }
        }
    }
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

/// The first byte position of a `Content-Range: bytes a-b/c` value.
pub fn content_range_start(v: Option<&str>) -> Option<u64> {
    let rest = v?.trim().strip_prefix("bytes")?.trim_start();
    let (range, _) = rest.split_once('/')?;
    let (a, _) = range.split_once('-')?;
    a.trim().parse().ok()
}

fn stream_body(
    resp: Response,
    writer: &mut BlobWriter,
    job: &Job<'_>,
    task: &str,
    start: u64,
    total: Option<u64>,
) -> std::result::Result<u64, StreamError> {
    let reader = resp.inner.into_reader();
    let (full_tx, full_rx) = sync_channel::<io::Result<Vec<u8>>>(BUFFERS);
    let (empty_tx, empty_rx) = channel::<Vec<u8>>();
    for _ in 0..BUFFERS {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    // The reader thread owns the socket; it ends when the body ends, fails, or when
    // this side hangs up (cancel, store error).
    std::thread::Builder::new()
        .name("kiln-http-read".into())
        .spawn(move || read_loop(reader, empty_rx, full_tx))
        .map_err(|e| {
            StreamError::Fatal(PluginError::internal(format!(
                "spawning a reader thread: {e}"
            )))
        })?;
    job.progress_start(task, total.unwrap_or(0));
    let mut current = start;
    let mut reported = Instant::now();
    loop {
        match full_rx.recv() {
            Ok(Ok(buf)) if buf.is_empty() => return Ok(current),
            Ok(Ok(buf)) => {
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
            Ok(Err(e)) => return Err(StreamError::Read(e)),
            Err(_) => {
                return Err(StreamError::Read(io::Error::other(
                    "the reader thread stopped",
                )))
            }
        }
    }
}

fn read_loop(
    mut reader: Box<dyn Read + Send + Sync>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    full: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
) {
    while let Ok(mut buf) = empty.recv() {
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        let mut failure = None;
        let mut eof = false;
        while filled < CHUNK {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        buf.truncate(filled);
        if filled > 0 && full.send(Ok(buf)).is_err() {
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
        assert_eq!(content_range_start(Some("bytes 100-199/200")), Some(100));
        assert_eq!(content_range_start(Some("bytes 0-0/*")), Some(0));
        assert_eq!(content_range_start(Some("bytes */200")), None);
        assert_eq!(content_range_start(None), None);
    }
}

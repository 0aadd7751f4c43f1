//! The two halves of the unpack pipeline and the channel between them.
//!
//! The calling thread reads the blob, decompresses it and hashes the uncompressed tar
//! ([`pump`]); a worker thread parses the tar and writes the tree, reading the chunks
//! through a [`ChunkReader`]. Decompression and filesystem calls thus run on two cores at
//! once. Chunk buffers go back to the producer for reuse, so a layer allocates a handful of
//! buffers whatever its size.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use sha2::{Digest, Sha256};

/// Size of one chunk of uncompressed tar handed to the worker.
pub(crate) const CHUNK: usize = 256 * 1024;

/// Chunks in flight between the two threads (beyond the one each side holds).
pub(crate) const IN_FLIGHT: usize = 4;

/// A filled chunk (buffer, bytes used) or the read error that ended the stream.
pub(crate) type Chunk = io::Result<(Vec<u8>, usize)>;

/// How the producer stopped early.
pub(crate) enum PumpError {
    /// Reading or decompressing failed (the worker was told too).
    Read(io::Error),
    /// The worker stopped listening: it failed, and its error is the one to report.
    WorkerGone,
}

/// The uncompressed stream's sha256 and length, accumulated by the producer.
pub(crate) struct Digested {
    pub hasher: Sha256,
    pub bytes: u64,
}

/// Reads `src` to EOF in chunks: hashes each and sends it to the worker.
pub(crate) fn pump<D: Read>(
    src: &mut D,
    tx: &SyncSender<Chunk>,
    recycled: &Receiver<Vec<u8>>,
    digest: &mut Digested,
) -> Result<(), PumpError> {
    loop {
        let mut buf = recycled.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The worker reports it with the entry it was reading.
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(PumpError::Read(e));
                }
            }
        }
        if n == 0 {
            return Ok(());
        }
        digest.hasher.update(&buf[..n]);
        digest.bytes += n as u64;
        if tx.send(Ok((buf, n))).is_err() {
            return Err(PumpError::WorkerGone);
        }
    }
}

/// The worker's view of the chunk stream: a [`BufRead`] that ends when the producer does.
pub(crate) struct ChunkReader {
    rx: Receiver<Chunk>,
    recycle: Sender<Vec<u8>>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
}

impl ChunkReader {
    pub(crate) fn new(rx: Receiver<Chunk>, recycle: Sender<Vec<u8>>) -> Self {
        ChunkReader {
            rx,
            recycle,
            cur: Vec::new(),
            len: 0,
            pos: 0,
        }
    }

    /// Consumes everything up to the end of the stream.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        loop {
            let n = self.fill_buf()?.len();
            if n == 0 {
                return Ok(());
            }
            self.consume(n);
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.len {
            let used = std::mem::take(&mut self.cur);
            if !used.is_empty() {
                let _ = self.recycle.send(used);
            }
            self.pos = 0;
            self.len = 0;
            match self.rx.recv() {
                Ok(Ok((buf, n))) => {
                    self.cur = buf;
                    self.len = n;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {} // the producer is done: end of stream
            }
        }
        Ok(&self.cur[self.pos..self.len])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.len);
    }
}

//! A streaming reader of tar headers (ustar, GNU and PAX), made for applying image layers.
//!
//! It reads one header block at a time from a [`BufRead`], folds GNU long names/links
//! (`L`/`K`) and PAX extended headers (`x`) into the entry they describe, and leaves the
//! entry's data to the caller ([`TarReader::copy_data`]; what it does not read is skipped). It
//! keeps its buffers across entries, so a layer of many small files allocates little.
//!
//! Extension records are bounded ([`MAX_EXTENSION`]): a hostile layer cannot make it buffer
//! gigabytes for a "name". PAX global headers (`g`) are read past and ignored, as
//! containerd does. GNU sparse files are refused (image layers do not use them).

use std::io::{self, BufRead, Write};

/// The tar block size.
pub(crate) const BLOCK: usize = 512;

/// The largest GNU long name/link or PAX extended header accepted (1 MiB): far above any
/// real path (`PATH_MAX` is 4 KiB) or xattr set (64 KiB each), far below a memory problem.
pub(crate) const MAX_EXTENSION: u64 = 1 << 20;

/// What kind of filesystem object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

/// A seconds + nanoseconds timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Time {
    pub secs: i64,
    pub nanos: u32,
}

/// One entry's header, with extensions applied. Its buffers are reused across entries.
#[derive(Debug)]
pub(crate) struct Header {
    pub kind: Kind,
    /// The entry name as stored (not yet cleaned).
    pub path: Vec<u8>,
    /// Link target: for hard links an archive path, for symlinks the stored target.
    pub link: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: Time,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes from PAX `SCHILY.xattr.<name>` records, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Default for Header {
    fn default() -> Self {
        Header {
            kind: Kind::File,
            path: Vec::with_capacity(256),
            link: Vec::with_capacity(256),
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: Time::default(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        }
    }
}

/// A tar format error (the caller adds which entry it happened at).
#[derive(Debug)]
pub(crate) enum TarError {
    /// Reading (or decompressing) the stream failed.
    Io(io::Error),
    /// Not a valid tar stream.
    Format(String),
    /// Valid, but past a limit set against hostile layers.
    Limit(String),
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

fn format_err<T>(msg: impl Into<String>) -> Result<T, TarError> {
    Err(TarError::Format(msg.into()))
}

/// Why copying an entry's data failed.
#[derive(Debug)]
pub(crate) enum DataError {
    /// Reading (or decompressing) the layer.
    Read(io::Error),
    /// Writing the file.
    Write(io::Error),
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataError::Read(e) => write!(f, "reading the layer: {e}"),
            DataError::Write(e) => write!(f, "writing the file: {e}"),
        }
    }
}

/// PAX values pending for the next entry.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Time>,
}

/// Streaming tar reader over a buffered, uncompressed stream.
pub(crate) struct TarReader<R> {
    r: R,
    block: [u8; BLOCK],
    /// Data (plus padding) of the current entry not yet consumed.
    pending: u64,
    /// Scratch buffer for extension data.
    ext: Vec<u8>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Pax,
}

impl<R: BufRead> TarReader<R> {
    pub(crate) fn new(r: R) -> Self {
        TarReader {
            r,
            block: [0; BLOCK],
            pending: 0,
            ext: Vec::new(),
            long_name: None,
            long_link: None,
            pax: Pax::default(),
        }
    }

    /// The underlying reader (to drain it after the end of the archive).
    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }

    /// Reads the next entry header into `h`. Returns `false` at the end of the archive (a
    /// zero block, or end of stream on a block boundary). Skips whatever data of the previous
    /// entry the caller did not consume.
    pub(crate) fn next(&mut self, h: &mut Header) -> Result<bool, TarError> {
        self.skip_pending()?;
        h.xattrs.clear();
        let mut extension_seen = false;
        loop {
            if !self.read_block()? {
                if extension_seen {
                    return format_err("archive ends after an extended header, without its entry");
                }
                return Ok(false);
            }
            if self.block.iter().all(|&b| b == 0) {
                if extension_seen {
                    return format_err("archive ends after an extended header, without its entry");
                }
                return Ok(false);
            }
            self.verify_checksum()?;
            let typeflag = self.block[156];
            let size = parse_numeric(&self.block[124..136])
                .ok_or_else(|| TarError::Format("invalid size field in tar header".to_string()))?;
            match typeflag {
                b'x' | b'X' => {
                    self.read_extension(size, "PAX extended header")?;
                    self.parse_pax(h)?;
                    extension_seen = true;
                }
                b'g' => {
                    // Global PAX headers carry no per-entry data that matters here.
                    self.pending = padded(size)?;
                    self.skip_pending()?;
                }
                b'L' => {
                    self.read_extension(size, "GNU long name")?;
                    self.long_name = Some(trim_nul(&self.ext).to_vec());
                    extension_seen = true;
                }
                b'K' => {
                    self.read_extension(size, "GNU long link name")?;
                    self.long_link = Some(trim_nul(&self.ext).to_vec());
                    extension_seen = true;
                }
                _ => {
                    self.fill_header(h, typeflag, size)?;
                    return Ok(true);
                }
            }
        }
    }

    /// Writes the current entry's data to `w` (`size` bytes), then consumes its padding.
    /// The error says which side failed: reading the layer or writing to `w`.
    pub(crate) fn copy_data<W: Write>(&mut self, size: u64, w: &mut W) -> Result<(), DataError> {
        let mut left = size;
        while left > 0 {
            let buf = self.r.fill_buf().map_err(DataError::Read)?;
            if buf.is_empty() {
                return Err(DataError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "layer stream ends inside a file's data",
                )));
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            w.write_all(&buf[..n]).map_err(DataError::Write)?;
            self.r.consume(n);
            left -= n as u64;
            self.pending -= n as u64;
        }
        self.skip_pending().map_err(DataError::Read)
    }

    fn skip_pending(&mut self) -> io::Result<()> {
        while self.pending > 0 {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "layer stream ends inside an entry's data",
                ));
            }
            let n = buf
                .len()
                .min(usize::try_from(self.pending).unwrap_or(usize::MAX));
            self.r.consume(n);
            self.pending -= n as u64;
        }
        Ok(())
    }

    /// Reads one block; `false` on a clean end of stream before its first byte.
    fn read_block(&mut self) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                if filled == 0 {
                    return Ok(false);
                }
                return format_err("layer stream ends inside a tar header");
            }
            let n = buf.len().min(BLOCK - filled);
            self.block[filled..filled + n].copy_from_slice(&buf[..n]);
            self.r.consume(n);
            filled += n;
        }
        Ok(true)
    }

    fn verify_checksum(&self) -> Result<(), TarError> {
        let stored = parse_octal(&self.block[148..156])
            .ok_or_else(|| TarError::Format("invalid checksum field in tar header".into()))?;
        let mut unsigned: u64 = 0;
        let mut signed: i64 = 0;
        for (i, &b) in self.block.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += u64::from(b);
            signed += i64::from(b as i8);
        }
        if stored == unsigned || i64::try_from(stored).ok() == Some(signed) {
            Ok(())
        } else {
            format_err("tar header checksum mismatch (corrupt or not a tar stream)")
        }
    }

    /// Reads `size` bytes of extension data into `self.ext` (bounded), consuming padding.
    fn read_extension(&mut self, size: u64, what: &str) -> Result<(), TarError> {
        if size > MAX_EXTENSION {
            return Err(TarError::Limit(format!(
                "{what} of {size} bytes is larger than the limit of {MAX_EXTENSION} bytes"
            )));
        }
        self.pending = padded(size)?;
        self.ext.clear();
        let mut ext = std::mem::take(&mut self.ext);
        let res = self.copy_data(size, &mut ext);
        self.ext = ext;
        match res {
            Ok(()) => Ok(()),
            Err(DataError::Read(e) | DataError::Write(e)) => Err(TarError::Io(e)),
        }
    }

    fn parse_pax(&mut self, h: &mut Header) -> Result<(), TarError> {
        let mut rest: &[u8] = &self.ext;
        while !rest.is_empty() {
            // "<len> <key>=<value>\n", len counting the whole record.
            let sp = rest
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| TarError::Format("malformed PAX record (no length)".into()))?;
            let len: usize = std::str::from_utf8(&rest[..sp])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|&l: &usize| l > sp + 1 && l <= rest.len())
                .ok_or_else(|| TarError::Format("malformed PAX record length".into()))?;
            let record = &rest[sp + 1..len];
            rest = &rest[len..];
            let record = record
                .strip_suffix(b"\n")
                .ok_or_else(|| TarError::Format("malformed PAX record (no newline)".into()))?;
            let eq = record
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| TarError::Format("malformed PAX record (no '=')".into()))?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            match key {
                b"path" => self.pax.path = Some(value.to_vec()),
                b"linkpath" => self.pax.link = Some(value.to_vec()),
                b"size" => self.pax.size = Some(pax_number(key, value)?),
                b"uid" => self.pax.uid = Some(pax_number(key, value)?),
                b"gid" => self.pax.gid = Some(pax_number(key, value)?),
                b"mtime" => {
                    self.pax.mtime = Some(parse_pax_time(value).ok_or_else(|| {
                        TarError::Format("malformed PAX mtime record".to_string())
                    })?)
                }
                _ if key.starts_with(b"SCHILY.xattr.") => {
                    let name = &key[b"SCHILY.xattr.".len()..];
                    h.xattrs.push((name.to_vec(), value.to_vec()));
                }
                _ if key.starts_with(b"GNU.sparse.") => {
                    return format_err("GNU sparse files are not supported in image layers");
                }
                // uname, gname, atime, ctime, comment, charset, LIBARCHIVE.* …: not needed.
                _ => {}
            }
        }
        Ok(())
    }

    fn fill_header(&mut self, h: &mut Header, typeflag: u8, size: u64) -> Result<(), TarError> {
        let b = &self.block;
        let ustar = &b[257..263] == b"ustar\0";
        let name_field = trim_nul(&b[0..100]);
        h.kind = match typeflag {
            b'0' | b'7' => Kind::File,
            // Old (v7) archives mark directories only by a trailing slash.
            0 if name_field.ends_with(b"/") => Kind::Dir,
            0 => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' | b'D' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'S' => return format_err("GNU sparse files are not supported in image layers"),
            other => {
                return format_err(format!(
                    "unsupported tar entry type {:?}",
                    char::from(other).escape_default().to_string()
                ))
            }
        };

        h.path.clear();
        if let Some(p) = self.pax.path.take() {
            h.path.extend_from_slice(&p);
        } else if let Some(p) = self.long_name.take() {
            h.path.extend_from_slice(&p);
        } else {
            let prefix = trim_nul(&b[345..500]);
            if ustar && !prefix.is_empty() {
                h.path.extend_from_slice(prefix);
                h.path.push(b'/');
            }
            h.path.extend_from_slice(name_field);
        }
        self.long_name = None;

        h.link.clear();
        if let Some(l) = self.pax.link.take() {
            h.link.extend_from_slice(&l);
        } else if let Some(l) = self.long_link.take() {
            h.link.extend_from_slice(&l);
        } else {
            h.link.extend_from_slice(trim_nul(&b[157..257]));
        }
        self.long_link = None;

        let bad = |field: &str| TarError::Format(format!("invalid {field} field in tar header"));
        h.mode = (parse_numeric(&b[100..108]).ok_or_else(|| bad("mode"))? & 0o7777) as u32;
        h.uid = match self.pax.uid.take() {
            Some(v) => v,
            None => parse_numeric(&b[108..116]).ok_or_else(|| bad("uid"))?,
        };
        h.gid = match self.pax.gid.take() {
            Some(v) => v,
            None => parse_numeric(&b[116..124]).ok_or_else(|| bad("gid"))?,
        };
        h.mtime = match self.pax.mtime.take() {
            Some(t) => t,
            None => Time {
                secs: parse_numeric_signed(&b[136..148]).ok_or_else(|| bad("mtime"))?,
                nanos: 0,
            },
        };
        if matches!(h.kind, Kind::Char | Kind::Block) {
            h.dev_major =
                u32::try_from(parse_numeric(&b[329..337]).ok_or_else(|| bad("devmajor"))?)
                    .map_err(|_| bad("devmajor"))?;
            h.dev_minor =
                u32::try_from(parse_numeric(&b[337..345]).ok_or_else(|| bad("devminor"))?)
                    .map_err(|_| bad("devminor"))?;
        } else {
            h.dev_major = 0;
            h.dev_minor = 0;
        }
        let size = self.pax.size.take().unwrap_or(size);
        // Only regular files (and GNU dump directories) have data; for links, directories
        // and special files the size field is ignored, as Go's archive/tar does.
        h.size = if h.kind == Kind::File { size } else { 0 };
        self.pending = if h.kind == Kind::File || typeflag == b'D' {
            padded(size)?
        } else {
            0
        };
        self.pax = Pax::default();
        Ok(())
    }
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> Result<u64, TarError> {
    size.checked_add(BLOCK as u64 - 1)
        .map(|s| s & !(BLOCK as u64 - 1))
        .ok_or_else(|| TarError::Format("tar entry size overflows".into()))
}

fn trim_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// An octal field (leading spaces/NULs allowed, ends at space or NUL).
fn parse_octal(field: &[u8]) -> Option<u64> {
    let mut it = field
        .iter()
        .skip_while(|&&c| c == b' ' || c == 0)
        .peekable();
    let mut v: u64 = 0;
    while let Some(&&c) = it.peek() {
        match c {
            b'0'..=b'7' => {
                v = v.checked_mul(8)?.checked_add(u64::from(c - b'0'))?;
                it.next();
            }
            b' ' | 0 => break,
            _ => return None,
        }
    }
    // A field of only spaces/NULs means 0 (some writers leave unused fields blank).
    Some(v)
}

/// A numeric field: octal, or GNU base-256 (high bit of the first byte set).
fn parse_numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return None; // negative
        }
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            if v >> 56 != 0 {
                return None;
            }
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    } else {
        parse_octal(field)
    }
}

/// Like [`parse_numeric`] but allows base-256 negative values (mtimes before 1970).
fn parse_numeric_signed(field: &[u8]) -> Option<i64> {
    if field.first() == Some(&0xff) {
        // Big-endian two's complement: start from the sign-extended first byte.
        let mut acc: i128 = -1;
        for &b in &field[1..] {
            acc = acc.checked_mul(256)?.checked_add(i128::from(b))?;
        }
        i64::try_from(acc).ok()
    } else {
        parse_numeric(field).and_then(|v| i64::try_from(v).ok())
    }
}

fn pax_number(key: &[u8], value: &[u8]) -> Result<u64, TarError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            TarError::Format(format!(
                "malformed PAX {} record",
                String::from_utf8_lossy(key)
            ))
        })
}

/// A PAX time: `[-]secs[.fraction]`.
fn parse_pax_time(value: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(value).ok()?;
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let negative = int.starts_with('-');
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut nanos: u32 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    if negative && nanos > 0 {
        // -1.5 means 1.5 s before the epoch: secs -2, nanos 0.5 s.
        Some(Time {
            secs: secs - 1,
            nanos: 1_000_000_000 - nanos,
        })
    } else {
        Some(Time { secs, nanos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"   755 \0"), Some(0o755));
        assert_eq!(parse_octal(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"12x"), None);
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_numeric_signed(&[0xff; 12]), Some(-1));
        assert_eq!(
            parse_pax_time(b"1700000000.25"),
            Some(Time {
                secs: 1_700_000_000,
                nanos: 250_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"-1.5"),
            Some(Time {
                secs: -2,
                nanos: 500_000_000
            })
        );
    }
}

//! Untrusted text: reading it with a size cap, escaping it before a terminal sees it,
//! and shortening it before an error echoes it.
//!
//! Identifiers, URLs, file names and strings a server sent may hold terminal control
//! sequences (`ESC [2J` clears the screen) or be megabytes long. Everything shown to a
//! person passes through [`escape`] (or [`escape_lines`] for whole messages); anything
//! echoed back in an error passes through [`shorten`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::path::Path;

/// How much of a long echoed value an error keeps: this many bytes of its head and of
/// its tail.
pub const ECHO_KEEP: usize = 120;

/// The most a configuration file may hold (4 MiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The most a build definition may hold (8 MiB).
pub const MAX_DEFINITION_BYTES: u64 = 8 << 20;
/// The most a `--secret` file may hold (512 KiB, about BuildKit's limit).
pub const MAX_SECRET_BYTES: u64 = 512 << 10;

fn is_unsafe(c: char, keep_newlines: bool) -> bool {
    match c {
        '\n' | '\t' => !keep_newlines,
        // C0 controls (ESC among them), DEL and the C1 controls (CSI is U+009B).
        '\0'..='\x1f' | '\x7f'..='\u{9f}' => true,
        // Bidirectional overrides and isolates: they reorder what the reader sees.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' => true,
        _ => false,
    }
}

fn escape_with(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe(c, keep_newlines) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x1b' => out.push_str("\\e"),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// `s` with every control character (newlines too), DEL, C1 control and bidirectional
/// override written as a visible escape (`\e`, `\n`, `\x07`, `\u{202e}`): safe to put
/// on one line of a terminal.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_with(s, false)
}

/// Like [`escape`] but keeps line breaks and tabs: for whole messages that may span
/// lines.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    escape_with(s, true)
}

/// `s` cut to its first and last [`ECHO_KEEP`] bytes (on character boundaries) with
/// `…(N bytes)…` between when it is longer than about twice that.
pub fn shorten(s: &str) -> Cow<'_, str> {
    shorten_to(s, ECHO_KEEP)
}

/// [`shorten`] with `keep` bytes at each end.
pub fn shorten_to(s: &str, keep: usize) -> Cow<'_, str> {
    // Not worth cutting when the marker would save little.
    if s.len() <= keep * 2 + 32 {
        return Cow::Borrowed(s);
    }
    let mut head = keep;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - keep;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    Cow::Owned(format!(
        "{}…({} bytes)…{}",
        &s[..head],
        s.len() - head - (s.len() - tail),
        &s[tail..]
    ))
}

/// [`shorten`] then [`escape`]: the form in which an untrusted value is echoed.
pub fn echo(s: &str) -> String {
    escape(&shorten(s)).into_owned()
}

/// The most of one message that is shown: past this, its head and tail.
pub const MAX_MESSAGE_BYTES: usize = 8 << 10;

/// `s` with every over-long word (a URL, a path, a token; anything between spaces
/// longer than about `2 × ECHO_KEEP`) cut to head … tail, and the whole cut to
/// [`MAX_MESSAGE_BYTES`]: an error that echoes a 100 KB identifier twice stays short
/// and still says what was wrong.
pub fn shorten_words(s: &str) -> Cow<'_, str> {
    let long_word = s
        .split(char::is_whitespace)
        .any(|w| w.len() > ECHO_KEEP * 2 + 32);
    if !long_word && s.len() <= MAX_MESSAGE_BYTES {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(MAX_MESSAGE_BYTES + 64));
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        out.push_str(&shorten(&rest[..end]));
        rest = &rest[end..];
        let ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
    }
    Cow::Owned(shorten_to(&out, MAX_MESSAGE_BYTES / 2).into_owned())
}

/// A message about to be printed on a terminal: over-long words shortened, controls
/// escaped (line breaks kept).
pub fn for_terminal(s: &str) -> String {
    escape_lines(&shorten_words(s)).into_owned()
}

/// One line about to be printed on a terminal: shortened and every control escaped.
pub fn one_line(s: &str) -> String {
    escape(&shorten_words(s)).into_owned()
}

/// A TOML parse error in a few words: line and column of `text` where it happened and
/// what was expected, without the source snippet (which echoes the whole line, however
/// long it is).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let at = e
        .span()
        .map(|s| {
            let (line, col) = line_col(text, s.start);
            format!("line {line}, column {col}: ")
        })
        .unwrap_or_default();
    let msg = e.message().trim_end().replace('\n', "; ");
    format!("{at}{}", shorten_words(&msg))
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// Reads the file at `path`, refusing more than `cap` bytes without reading them (a
/// device such as `/dev/zero` stops at the cap). `what` names the kind of file in the
/// error ("configuration file", "build definition").
pub fn read_capped_bytes(path: &Path, cap: u64, what: &str) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let too_big = || {
        let limit = if cap >= 1 << 20 {
            format!("{} MiB", cap >> 20)
        } else {
            format!("{} KiB", cap >> 10)
        };
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit}, the limit for a {what}"),
        )
    };
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            format!("is a folder, not a {what}"),
        ));
    }
    if meta.is_file() && meta.len() > cap {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(if meta.is_file() {
        meta.len() as usize
    } else {
        8192
    });
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_big());
    }
    Ok(bytes)
}

/// [`read_capped_bytes`] for UTF-8 text.
pub fn read_capped(path: &Path, cap: u64, what: &str) -> io::Result<String> {
    let bytes = read_capped_bytes(path, cap, what)?;
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(escape("ok"), "ok");
        assert_eq!(
            escape("http://x/ok\x1b[2J\x1b[31mFAKE"),
            "http://x/ok\\e[2J\\e[31mFAKE"
        );
        assert_eq!(escape("a\nb\r\u{9b}c\u{202e}"), "a\\nb\\r\\x9bc\\u{202e}");
        assert_eq!(escape_lines("a\nb\x07"), "a\nb\\x07");
        assert_eq!(escape("naïve ✓"), "naïve ✓");
    }

    #[test]
    fn shortens_long_echoes_on_char_boundaries() {
        let long = "é".repeat(10_000);
        let s = shorten(&long);
        assert!(s.len() < 2 * ECHO_KEEP + 40, "{}", s.len());
        assert!(s.contains("bytes)…"));
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn long_words_are_cut_and_the_rest_kept() {
        let url = format!("http://h/{}", "a".repeat(100_000));
        let msg = format!("invalid identifier {url}: bad port in {url}\nsecond line");
        let s = shorten_words(&msg);
        assert!(s.len() < 1200, "{}", s.len());
        assert!(s.starts_with("invalid identifier http://h/aaa"));
        assert!(s.contains(": bad port in http://h/"));
        assert!(s.ends_with("\nsecond line"));
        let many = "word ".repeat(10_000);
        assert!(shorten_words(&many).len() <= MAX_MESSAGE_BYTES + 64);
    }

    #[test]
    fn reads_are_capped() {
        let e = read_capped(Path::new("/dev/zero"), 1 << 20, "build definition").unwrap_err();
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"\xff").unwrap();
        assert!(read_capped(&p, 10, "x").is_err());
        std::fs::write(&p, b"fine").unwrap();
        assert_eq!(read_capped(&p, 10, "x").unwrap(), "fine");
    }
}

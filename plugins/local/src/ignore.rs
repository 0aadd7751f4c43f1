//! The ignore file of a local context (`.dockerignore` syntax), named by the
//! `local.ignorefile` attribute; by default `.dockerignore` at the context's root, as
//! `docker build` reads it.
//!
//! One pattern per line; surrounding whitespace is trimmed; empty lines and lines
//! starting with `#` are skipped; `!pattern` re-includes what an earlier line excluded;
//! a leading `/` is dropped (every pattern is relative to the context root). The
//! patterns then join `local.excludepatterns` (the ignore file's first, so that the
//! attribute has the last word) and match as described in
//! [`kiln_plugin_api::patterns`].

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The ignore file used when `local.ignorefile` is not set.
pub const DEFAULT: &str = ".dockerignore";

/// Ignore files larger than this are refused (a sign of a wrong file).
pub const MAX_BYTES: u64 = 1 << 20;

/// The patterns of an ignore file's text.
pub fn parse(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_prefix('!') {
            Some(rest) => {
                let rest = rest.trim();
                let rest = if rest.len() > 1 {
                    rest.strip_prefix('/').unwrap_or(rest)
                } else {
                    rest
                };
                out.push(format!("!{rest}"));
            }
            None => {
                let p = if line.len() > 1 {
                    line.strip_prefix('/').unwrap_or(line)
                } else {
                    line
                };
                out.push(p.to_string());
            }
        }
    }
    out
}

/// Reads the ignore file `path`: `Ok(None)` when it does not exist.
pub fn read(path: &Path) -> io::Result<Option<Vec<String>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(MAX_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than {MAX_BYTES} bytes"),
        ));
    }
    let text = String::from_utf8(buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "it is not UTF-8 text"))?;
    Ok(Some(parse(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_lines() {
        let text = "\u{feff}# build output\ntarget\n\n  /.git  \n*.log\n! target/keep.txt\n!/docs\n#!not\n/\n";
        assert_eq!(
            parse(text),
            ["target", ".git", "*.log", "!target/keep.txt", "!docs", "/"]
        );
    }
}

//! The name of the downloaded file: the `http.filename` attribute, else the
//! `Content-Disposition` filename, else the last segment of the original URL's path,
//! else `download` — always reduced to one safe path component.

/// The name used when nothing else gives one.
pub const DEFAULT_NAME: &str = "download";

/// Go's `path.Base` over `/`-separated paths.
fn go_base(p: &str) -> &str {
    if p.is_empty() {
        return ".";
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    match trimmed.rfind('/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// Reduces `name` to a single safe component: surrounding whitespace trimmed, the last
/// path segment kept; empty, `.`, `..`, or anything with a control character (NUL
/// included) becomes [`DEFAULT_NAME`].
pub fn safe_file_name(name: &str) -> String {
    let base = go_base(name.trim());
    if base.is_empty()
        || base == "."
        || base == ".."
        || base.contains('/')
        || base.chars().any(char::is_control)
    {
        DEFAULT_NAME.to_string()
    } else {
        base.to_string()
    }
}

/// Decodes `%XX` escapes; invalid escapes are kept as they are. Returns `None` when
/// the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The `filename` parameter of a `Content-Disposition` value (RFC 6266, with the
/// RFC 5987 `filename*` form taking precedence), or `None` if the header does not
/// parse or has none.
pub fn content_disposition_filename(value: &str) -> Option<String> {
    let mut parts = split_params(value)?.into_iter();
    let disposition = parts.next()?;
    if disposition.0.is_empty() || disposition.1.is_some() {
        return None;
    }
    let mut plain = None;
    let mut extended = None;
    for (k, v) in parts {
        let v = v?;
        match k.to_ascii_lowercase().as_str() {
            "filename" => plain = Some(v),
            "filename*" => extended = decode_ext_value(&v),
            _ => {}
        }
    }
    extended.or(plain)
}

/// `charset'lang'pct-encoded` → text (UTF-8 and US-ASCII only).
fn decode_ext_value(v: &str) -> Option<String> {
    let mut it = v.splitn(3, '\'');
    let charset = it.next()?;
    let _lang = it.next()?;
    let rest = it.next()?;
    if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("us-ascii") {
        return None;
    }
    percent_decode(rest)
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}

/// Splits `type; k=v; k="quoted"` into `(name, value)` pairs; the first is the type.
fn split_params(s: &str) -> Option<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && (chars[*i] == ' ' || chars[*i] == '\t') {
            *i += 1;
        }
    };
    // disposition type
    skip_ws(&mut i);
    let start = i;
    while i < chars.len() && is_token_char(chars[i]) {
        i += 1;
    }
    out.push((chars[start..i].iter().collect::<String>(), None));
    skip_ws(&mut i);
    while i < chars.len() {
        if chars[i] != ';' {
            return None;
        }
        i += 1;
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let ks = i;
        while i < chars.len() && (is_token_char(chars[i]) || chars[i] == '*') && chars[i] != '=' {
            i += 1;
        }
        let key: String = chars[ks..i].iter().collect();
        if key.is_empty() {
            return None;
        }
        skip_ws(&mut i);
        if i >= chars.len() || chars[i] != '=' {
            return None;
        }
        i += 1;
        skip_ws(&mut i);
        let value = if i < chars.len() && chars[i] == '"' {
            i += 1;
            let mut v = String::new();
            loop {
                if i >= chars.len() {
                    return None;
                }
                match chars[i] {
                    '"' => {
                        i += 1;
                        break;
                    }
                    '\\' if i + 1 < chars.len() => {
                        v.push(chars[i + 1]);
                        i += 2;
                    }
                    c => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            v
        } else {
            let vs = i;
            while i < chars.len()
                && (is_token_char(chars[i]) || chars[i] == '\'' || chars[i] == '%')
            {
                i += 1;
            }
            chars[vs..i].iter().collect()
        };
        out.push((key, Some(value)));
        skip_ws(&mut i);
    }
    Some(out)
}

/// BuildKit's rule for the file name. `url_path` is the original URL's path, still
/// percent-encoded; `content_disposition` the response header, if there was a response.
pub fn file_name(attr: Option<&str>, content_disposition: Option<&str>, url_path: &str) -> String {
    if let Some(name) = attr.filter(|n| !n.is_empty()) {
        return safe_file_name(name);
    }
    if let Some(name) = content_disposition.and_then(content_disposition_filename) {
        if !name.is_empty() && !name.ends_with('/') {
            return safe_file_name(&name);
        }
    }
    let decoded = percent_decode(url_path).unwrap_or_else(|| url_path.to_string());
    let base = go_base(&decoded);
    if base != "." && base != "/" {
        return safe_file_name(base);
    }
    DEFAULT_NAME.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_like_buildkit() {
        for (input, want) in [
            ("foo", "foo"),
            ("foo.txt", "foo.txt"),
            ("資料.txt", "資料.txt"),
            ("тест-файл", "тест-файл"),
            ("name with spaces.txt", "name with spaces.txt"),
            ("  foo.txt  ", "foo.txt"),
            ("a/b/c.txt", "c.txt"),
            ("", "download"),
            (".", "download"),
            ("..", "download"),
            ("../", "download"),
            ("../../etc/passwd", "passwd"),
            ("/", "download"),
            ("a\u{0}b", "download"),
            ("a\nb", "download"),
            ("a\u{7f}b", "download"),
            ("..\\", "..\\"),
            ("a\\b\\c.txt", "a\\b\\c.txt"),
        ] {
            assert_eq!(safe_file_name(input), want, "input {input:?}");
        }
    }

    #[test]
    fn content_disposition_forms() {
        let cd = content_disposition_filename;
        assert_eq!(
            cd("attachment; filename=foo.tgz").as_deref(),
            Some("foo.tgz")
        );
        assert_eq!(
            cd("attachment; filename=\"a b.txt\"").as_deref(),
            Some("a b.txt")
        );
        assert_eq!(
            cd("attachment;filename=\"q\\\"x\"").as_deref(),
            Some("q\"x")
        );
        assert_eq!(
            cd("attachment; filename=\"plain.txt\"; filename*=UTF-8''%E2%82%AC%20rates.txt")
                .as_deref(),
            Some("€ rates.txt")
        );
        assert_eq!(cd("inline").as_deref(), None);
        assert_eq!(cd("attachment; filename").as_deref(), None);
        assert_eq!(cd("attachment; filename=\"unterminated").as_deref(), None);
    }

    #[test]
    fn file_name_rules() {
        assert_eq!(
            file_name(Some("given"), Some("attachment; filename=cd"), "/p/u"),
            "given"
        );
        assert_eq!(
            file_name(None, Some("attachment; filename=cd.bin"), "/p/u"),
            "cd.bin"
        );
        assert_eq!(
            file_name(None, Some("attachment; filename=\"../../x\""), "/p/u"),
            "x"
        );
        // an unquoted '/' makes the header invalid, so it is ignored (as Go does)
        assert_eq!(
            file_name(None, Some("attachment; filename=../../x"), "/p/u"),
            "u"
        );
        assert_eq!(
            file_name(None, Some("attachment; filename=dir/"), "/p/u"),
            "u"
        );
        assert_eq!(file_name(None, None, "/p/u%20v"), "u v");
        assert_eq!(file_name(None, None, "/p/dir/"), "dir");
        assert_eq!(file_name(None, None, "/"), "download");
        assert_eq!(file_name(None, None, ""), "download");
        assert_eq!(file_name(None, None, "/%2e%2e"), "download");
        assert_eq!(file_name(None, None, "/a%0Ab"), "download");
    }
}

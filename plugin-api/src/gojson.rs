//! Go `encoding/json` output, byte for byte, for BuildKit-compatible cache keys.
//!
//! BuildKit hashes JSON that Go's encoder wrote; a plugin that wants the same keys must
//! write the same bytes: struct fields in declaration order (the caller writes them),
//! HTML-safe string escaping (`<`, `>`, `&`, U+2028, U+2029 as `\u00XX`/`\u20XX`),
//! `\b`, `\f`, `\n`, `\r`, `\t` as short escapes (Go 1.22 and later), other control
//! characters as `\u00XX`, and a nil slice as `null`.

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it.
pub fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a Go `[]string`: `null` for a nil slice (`None`), else a JSON array.
pub fn push_string_list(out: &mut String, list: Option<&[String]>) {
    match list {
        None => out.push_str("null"),
        Some(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_string(out, item);
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_go() {
        let mut s = String::new();
        push_string(&mut s, "<a&b>\"\\\n\t\r\u{8}\u{c}\u{1}\u{2028}é");
        assert_eq!(
            s,
            "\"\\u003ca\\u0026b\\u003e\\\"\\\\\\n\\t\\r\\b\\f\\u0001\\u2028é\""
        );
    }

    #[test]
    fn lists_are_null_when_nil() {
        let mut s = String::new();
        push_string_list(&mut s, None);
        s.push(' ');
        push_string_list(&mut s, Some(&[]));
        s.push(' ');
        push_string_list(&mut s, Some(&["a".to_string(), "<".to_string()]));
        assert_eq!(s, "null [] [\"a\",\"\\u003c\"]");
    }
}

//! Wildcards in the `src` of `copy` and the `path` of `rm`: shell-style matching of one
//! path component at a time (`*`, `?`, `[…]` with `!`/`^` negation and ranges, `\`
//! escapes), as Go's `filepath.Match` does for BuildKit. Include/exclude lists use
//! [`kiln_plugin_api::patterns::PathFilter`] instead.

pub(crate) fn check_component(p: &str) -> Result<(), String> {
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'[' => match class_end(b, i) {
                Some(end) => i = end + 1,
                None => return Err("unterminated [".into()),
            },
            _ => i += 1,
        }
    }
    Ok(())
}

/// Index of the `]` closing the class opened at `start`.
fn class_end(p: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if i < p.len() && (p[i] == b'!' || p[i] == b'^') {
        i += 1;
    }
    if i < p.len() && p[i] == b']' {
        i += 1;
    }
    while i < p.len() {
        match p[i] {
            b'\\' => i += 2,
            b']' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Shell-style match of one component (`*`, `?`, `[…]`, `\`).
pub fn glob_component(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some(end) = class_end(p, pi) {
                        if class_matches(&p[pi + 1..end], s[si]) {
                            pi = end + 1;
                            si += 1;
                            continue;
                        }
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

fn class_matches(class: &[u8], c: u8) -> bool {
    let (neg, mut body) = match class.first() {
        Some(b'!') | Some(b'^') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut hit = false;
    while !body.is_empty() {
        let (lo, rest) = take_class_char(body);
        if rest.len() >= 2 && rest[0] == b'-' {
            let (hi, rest2) = take_class_char(&rest[1..]);
            hit |= lo <= c && c <= hi;
            body = rest2;
        } else {
            hit |= lo == c;
            body = rest;
        }
    }
    hit != neg
}

fn take_class_char(b: &[u8]) -> (u8, &[u8]) {
    if b[0] == b'\\' && b.len() > 1 {
        (b[1], &b[2..])
    } else {
        (b[0], &b[1..])
    }
}

/// Whether a string contains wildcard characters.
pub fn has_wildcards(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'*' | b'?' | b'[' => return true,
            _ => i += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        glob_component(p.as_bytes(), s.as_bytes())
    }

    #[test]
    fn component_globs() {
        assert!(m("*.rs", "main.rs"));
        assert!(!m("*.rs", "main.rc"));
        assert!(m("f?o", "foo"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("[^a-c]x", "dx"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(!m("[abc", "a"));
        assert!(has_wildcards("/src/*.txt"));
        assert!(!has_wildcards("/src/a\\*.txt"));
        assert!(check_component("[abc").is_err());
    }
}

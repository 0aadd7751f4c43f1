//! Path patterns with `.dockerignore` semantics, as BuildKit applies them to local
//! sources (`local.includepattern`, `local.excludepatterns`) and to copy filters.
//!
//! # Pattern syntax
//!
//! A pattern is matched against a *clean relative path* with `/` separators
//! (`src/main.rs`, never `./src//main.rs`). Before use, every pattern is trimmed of
//! surrounding whitespace and cleaned like a path (`a//b/./c/` → `a/b/c`, `a/../b` →
//! `b`); a leading `/` is dropped because every pattern is relative to the root of the
//! tree anyway. Empty patterns are ignored.
//!
//! | syntax | matches |
//! |---|---|
//! | `*` | any run of characters except `/` (possibly empty) |
//! | `?` | one character except `/` |
//! | `[abc]`, `[a-z]`, `[^a-z]` | one character (never `/`) in, or with `^` not in, the class |
//! | `**/` | zero or more whole directories: `**/*.go` matches `a.go` and `x/y/a.go` |
//! | `**` at the end | anything, including `/`: `build/**` matches everything under `build` |
//! | `**` elsewhere | any run of characters including `/`: `**.log` matches `a/b.log` |
//! | `\c` | the character `c` literally (`\*` is a star) |
//! | `.` | the whole tree |
//!
//! A pattern matches a path when it matches the path itself **or any of its parent
//! directories**: `node_modules` matches `node_modules/x/index.js`.
//!
//! A pattern starting with `!` is an *exception*. In a [`PatternMatcher`] the patterns
//! are applied in order and the **last** pattern that matches decides: an ordinary
//! pattern selects the path, an exception deselects it. So `["*.md", "!README.md"]`
//! matches `NOTES.md` but not `README.md`.
//!
//! # Walking a tree
//!
//! [`PatternMatcher::matches_with_parent`] reuses the answers computed for a path's
//! parent directory ([`MatchInfo`]), so a walk matches every pattern once per path.
//! [`PathFilter`] combines include and exclude lists the way BuildKit's local source
//! does and tells a walker which directories it may skip entirely: an excluded
//! directory is skipped only when no exception could re-include something below it
//! ([`PatternMatcher::exceptions_may_match_under`]).
//!
//! ```
//! use kiln_plugin_api::patterns::PathFilter;
//!
//! let filter = PathFilter::new(&[], &["target", "!target/keep.txt"]).unwrap();
//! let root = Default::default();
//! let target = filter.check("target", true, &root);
//! assert!(!target.selected && target.descend); // excluded, but an exception may apply inside
//! let state = target.state.unwrap();
//! assert!(filter.check("target/keep.txt", false, &state).selected);
//! assert!(!filter.check("target/debug.o", false, &state).selected);
//! ```

use std::fmt;

/// A pattern that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    /// The pattern as it was given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid pattern {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for PatternError {}

/// Cleans a `/`-separated path lexically, like Go's `path.Clean`: repeated and
/// trailing separators and `.` elements go away, `x/..` pairs are removed, `..` at
/// the start of a rooted path is dropped. An empty result is `.`.
pub fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            s => parts.push(s),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// One element of a compiled glob (a small NFA; see [`Glob::step`]).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    /// This character.
    Lit(char),
    /// `?`: one character except `/`.
    One,
    /// `[...]`: one character except `/`, in (or not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `*`: zero or more characters except `/`.
    Star,
    /// `**` not followed by `/`: zero or more characters of any kind.
    AnyStar,
    /// `**/`: either skip (to `i + 2`) or enter the loop at `i + 1`.
    DirSplit,
    /// Inside `**/`: any characters, leaving after a `/`.
    DirLoop,
}

/// A compiled glob: an NFA over [`Node`]s whose accepting state is `nodes.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Glob {
    nodes: Vec<Node>,
}

/// A set of NFA states with O(1) membership, reused across steps.
struct StateSet {
    list: Vec<usize>,
    mark: Vec<bool>,
}

impl StateSet {
    fn new(n: usize) -> Self {
        Self {
            list: Vec::with_capacity(n + 1),
            mark: vec![false; n + 1],
        }
    }
    fn clear(&mut self) {
        for &i in &self.list {
            self.mark[i] = false;
        }
        self.list.clear();
    }
}

impl Glob {
    /// Adds state `i` and everything reachable from it without input.
    fn add(&self, set: &mut StateSet, i: usize) {
        if set.mark[i] {
            return;
        }
        set.mark[i] = true;
        set.list.push(i);
        match self.nodes.get(i) {
            Some(Node::Star) | Some(Node::AnyStar) => self.add(set, i + 1),
            Some(Node::DirSplit) => {
                self.add(set, i + 1);
                self.add(set, i + 2);
            }
            _ => {}
        }
    }

    /// Moves every state of `from` over character `c` into `to`.
    fn step(&self, from: &StateSet, c: char, to: &mut StateSet) {
        to.clear();
        for &i in &from.list {
            match self.nodes.get(i) {
                Some(Node::Lit(l)) if *l == c => self.add(to, i + 1),
                Some(Node::One) if c != '/' => self.add(to, i + 1),
                Some(Node::Class { negated, ranges }) if c != '/' => {
                    let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                    if inside != *negated {
                        self.add(to, i + 1);
                    }
                }
                Some(Node::Star) if c != '/' => self.add(to, i),
                Some(Node::AnyStar) => self.add(to, i),
                Some(Node::DirLoop) => {
                    self.add(to, i);
                    if c == '/' {
                        self.add(to, i + 1);
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs the NFA over `input`; returns the final state set (empty: dead).
    fn run(&self, input: impl Iterator<Item = char>) -> StateSet {
        let n = self.nodes.len();
        let mut cur = StateSet::new(n);
        let mut next = StateSet::new(n);
        self.add(&mut cur, 0);
        for c in input {
            self.step(&cur, c, &mut next);
            std::mem::swap(&mut cur, &mut next);
            if cur.list.is_empty() {
                break;
            }
        }
        cur
    }

    fn matches(&self, path: &str) -> bool {
        self.run(path.chars()).mark[self.nodes.len()]
    }

    /// Whether some non-empty `rest` makes `dir/rest` match.
    fn may_match_under(&self, dir: &str) -> bool {
        !self
            .run(dir.chars().chain(std::iter::once('/')))
            .list
            .is_empty()
    }

    /// Parses a cleaned pattern body (without `!`).
    fn parse(body: &str) -> Result<Self, String> {
        let chars: Vec<char> = body.chars().collect();
        let mut nodes = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    i += 2;
                    if i == chars.len() {
                        nodes.push(Node::AnyStar);
                    } else if chars[i] == '/' {
                        i += 1;
                        if i == chars.len() {
                            nodes.push(Node::AnyStar);
                        } else {
                            nodes.push(Node::DirSplit);
                            nodes.push(Node::DirLoop);
                        }
                    } else {
                        nodes.push(Node::AnyStar);
                        // Further stars add nothing to `**`.
                        while chars.get(i) == Some(&'*') {
                            i += 1;
                        }
                    }
                    continue;
                }
                '*' => {
                    if nodes.last() != Some(&Node::Star) {
                        nodes.push(Node::Star);
                    }
                }
                '?' => nodes.push(Node::One),
                '\\' => {
                    i += 1;
                    match chars.get(i) {
                        Some(&c) => nodes.push(Node::Lit(c)),
                        None => return Err("a trailing '\\' escapes nothing".into()),
                    }
                }
                '[' => {
                    let (node, next) = parse_class(&chars, i)?;
                    nodes.push(node);
                    i = next;
                    continue;
                }
                c => nodes.push(Node::Lit(c)),
            }
            i += 1;
        }
        Ok(Glob { nodes })
    }

    /// The literal text, when the pattern has no wildcard at all.
    fn literal(&self) -> Option<String> {
        self.nodes
            .iter()
            .map(|n| match n {
                Node::Lit(c) => Some(*c),
                _ => None,
            })
            .collect()
    }
}

/// Parses `[...]` starting at `chars[start] == '['`; returns the node and the index
/// after the closing `]`.
fn parse_class(chars: &[char], start: usize) -> Result<(Node, usize), String> {
    let mut i = start + 1;
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let read_char = |i: &mut usize| -> Result<char, String> {
        match chars.get(*i) {
            Some('\\') => {
                *i += 1;
                let c = *chars.get(*i).ok_or("unterminated character class")?;
                *i += 1;
                Ok(c)
            }
            Some(&c) => {
                *i += 1;
                Ok(c)
            }
            None => Err("unterminated character class".into()),
        }
    };
    loop {
        match chars.get(i) {
            None => return Err("unterminated character class".into()),
            // A `]` right after `[` (or `[^`) is a literal member.
            Some(']') if !ranges.is_empty() => return Ok((Node::Class { negated, ranges }, i + 1)),
            _ => {}
        }
        let lo = read_char(&mut i)?;
        let hi = if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&c| c != ']') {
            i += 1;
            read_char(&mut i)?
        } else {
            lo
        };
        if hi < lo {
            return Err(format!("bad range {lo}-{hi} in character class"));
        }
        ranges.push((lo, hi));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// `.`: everything.
    All,
    /// No wildcards: plain comparison.
    Exact(String),
    /// Anything else.
    Glob(Glob),
}

/// One compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    exception: bool,
    kind: Kind,
}

impl Pattern {
    /// Compiles one pattern. Returns `Ok(None)` for a pattern that is empty after
    /// trimming (such patterns are ignored).
    pub fn new(pattern: &str) -> Result<Option<Self>, PatternError> {
        let err = |reason: String| PatternError {
            pattern: pattern.to_string(),
            reason,
        };
        let mut body = pattern.trim();
        if body.is_empty() {
            return Ok(None);
        }
        let exception = body.starts_with('!');
        if exception {
            body = body[1..].trim_start();
            if body.is_empty() {
                return Err(err("'!' needs a pattern after it".into()));
            }
        }
        let cleaned = clean_path(body);
        let text = match cleaned.trim_start_matches('/') {
            "" => ".".to_string(),
            t => t.to_string(),
        };
        let kind = if text == "." {
            Kind::All
        } else {
            let glob = Glob::parse(&text).map_err(err)?;
            match glob.literal() {
                Some(lit) => Kind::Exact(lit),
                None => Kind::Glob(glob),
            }
        };
        Ok(Some(Pattern {
            text,
            exception,
            kind,
        }))
    }

    /// The cleaned pattern, without the leading `!`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is an exception (`!pattern`).
    pub fn is_exception(&self) -> bool {
        self.exception
    }

    /// Whether the pattern matches `path` itself (not looking at parents).
    pub fn matches_exactly(&self, path: &str) -> bool {
        match &self.kind {
            Kind::All => true,
            Kind::Exact(s) => s == path,
            Kind::Glob(g) => g.matches(path),
        }
    }

    /// Whether the pattern matches `path` or one of its parent directories.
    pub fn matches(&self, path: &str) -> bool {
        if self.matches_exactly(path) {
            return true;
        }
        path.match_indices('/')
            .any(|(i, _)| self.matches_exactly(&path[..i]))
    }

    /// Whether the pattern may match some path strictly inside directory `dir`
    /// (`""` is the root). May answer `true` when unsure, never `false` wrongly.
    pub fn may_match_under(&self, dir: &str) -> bool {
        if dir.is_empty() || dir == "." {
            return true;
        }
        match &self.kind {
            Kind::All => true,
            Kind::Exact(s) => {
                s.len() > dir.len() && s.starts_with(dir) && s[dir.len()..].starts_with('/')
            }
            Kind::Glob(g) => g.may_match_under(dir),
        }
    }
}

/// What a [`PatternMatcher`] found for a directory, reused for its children: which
/// patterns matched the directory or one of its parents. The default value is the
/// state above the root (nothing matched).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatchInfo {
    matched: Vec<bool>,
}

/// An ordered list of patterns; the last one that matches a path decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exceptions: bool,
}

impl PatternMatcher {
    /// Compiles `patterns` in order; empty ones are skipped. The error names the
    /// first pattern that cannot be parsed.
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for p in patterns {
            if let Some(p) = Pattern::new(p.as_ref())? {
                out.push(p);
            }
        }
        let exceptions = out.iter().any(Pattern::is_exception);
        Ok(Self {
            patterns: out,
            exceptions,
        })
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether there are no patterns (nothing matches).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is an exception (`!…`).
    pub fn has_exceptions(&self) -> bool {
        self.exceptions
    }

    /// Whether `path` (clean, relative, `/`-separated) is matched: the last pattern
    /// matching it or one of its parents is not an exception.
    pub fn matches(&self, path: &str) -> bool {
        self.patterns
            .iter()
            .rev()
            .find(|p| p.matches(path))
            .is_some_and(|p| !p.is_exception())
    }

    /// Like [`matches`](Self::matches) for a path whose parent directory's answers
    /// are `parent` (from the call for that directory, or `MatchInfo::default()` for
    /// an entry at the root). Returns the answer and the info for `path`'s children.
    pub fn matches_with_parent(&self, path: &str, parent: &MatchInfo) -> (bool, MatchInfo) {
        let matched: Vec<bool> = self
            .patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parent.matched.get(i).copied().unwrap_or(false) || p.matches_exactly(path)
            })
            .collect();
        let answer = self
            .patterns
            .iter()
            .zip(&matched)
            .rev()
            .find(|(_, &m)| m)
            .is_some_and(|(p, _)| !p.is_exception());
        (answer, MatchInfo { matched })
    }

    /// Like [`matches_with_parent`](Self::matches_with_parent) for a leaf (a file):
    /// stops at the deciding pattern and builds no info.
    pub fn matches_leaf(&self, path: &str, parent: &MatchInfo) -> bool {
        self.patterns
            .iter()
            .enumerate()
            .rev()
            .find(|(i, p)| {
                parent.matched.get(*i).copied().unwrap_or(false) || p.matches_exactly(path)
            })
            .is_some_and(|(_, p)| !p.is_exception())
    }

    /// Whether an ordinary (non-exception) pattern may match something strictly
    /// inside `dir`. A walker looking for matches can skip `dir` when this is false
    /// and `dir` itself did not match.
    pub fn may_match_under(&self, dir: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| !p.is_exception() && p.may_match_under(dir))
    }

    /// Whether an exception (`!…`) may match something strictly inside `dir`, and so
    /// re-include it although `dir` itself matched. A walker can skip a matched
    /// (excluded) directory only when this is false.
    pub fn exceptions_may_match_under(&self, dir: &str) -> bool {
        self.exceptions
            && self
                .patterns
                .iter()
                .any(|p| p.is_exception() && p.may_match_under(dir))
    }
}

/// The per-directory state of a [`PathFilter`] walk; `Default` is the root's parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterState {
    include: MatchInfo,
    exclude: MatchInfo,
}

/// The answer of [`PathFilter::check`] for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The path is part of the result.
    pub selected: bool,
    /// (Directories) something inside may be selected, so walk into it. When the
    /// directory itself is not selected but something inside is, the walker should
    /// still create it (with its own metadata) as the parent of what it selects.
    pub descend: bool,
    /// (Directories that are descended into) the state to pass for the children.
    pub state: Option<FilterState>,
}

/// Include and exclude lists combined as BuildKit's local source applies them: a
/// path is selected when the include list is empty or matches it, and the exclude
/// list does not match it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathFilter {
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
}

impl PathFilter {
    /// Compiles both lists (an empty include list selects everything).
    pub fn new<S: AsRef<str>>(include: &[S], exclude: &[S]) -> Result<Self, PatternError> {
        let include = PatternMatcher::new(include)?;
        let exclude = PatternMatcher::new(exclude)?;
        Ok(Self {
            include: (!include.is_empty()).then_some(include),
            exclude: (!exclude.is_empty()).then_some(exclude),
        })
    }

    /// Whether the filter selects every path.
    pub fn selects_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    /// Decides about `path` (clean, relative, `/`-separated), given the state of its
    /// parent directory (`FilterState::default()` at the root).
    pub fn check(&self, path: &str, is_dir: bool, parent: &FilterState) -> Verdict {
        if !is_dir {
            let included = self
                .include
                .as_ref()
                .is_none_or(|m| m.matches_leaf(path, &parent.include));
            let excluded = included
                && self
                    .exclude
                    .as_ref()
                    .is_some_and(|m| m.matches_leaf(path, &parent.exclude));
            return Verdict {
                selected: included && !excluded,
                descend: false,
                state: None,
            };
        }
        let mut state = FilterState::default();
        let included = match &self.include {
            None => true,
            Some(m) => {
                let (hit, info) = m.matches_with_parent(path, &parent.include);
                state.include = info;
                hit
            }
        };
        if !included
            && !self
                .include
                .as_ref()
                .is_some_and(|m| m.may_match_under(path))
        {
            return Verdict {
                selected: false,
                descend: false,
                state: None,
            };
        }
        let excluded = match &self.exclude {
            None => false,
            Some(m) => {
                let (hit, info) = m.matches_with_parent(path, &parent.exclude);
                state.exclude = info;
                hit
            }
        };
        let descend = !excluded
            || self
                .exclude
                .as_ref()
                .is_some_and(|m| m.exceptions_may_match_under(path));
        Verdict {
            selected: included && !excluded,
            descend,
            state: descend.then_some(state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> PatternMatcher {
        PatternMatcher::new(patterns).unwrap()
    }

    fn p(pattern: &str) -> Pattern {
        Pattern::new(pattern).unwrap().unwrap()
    }

    #[test]
    fn clean_path_like_go() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("./a//b/", "a/b"),
            ("a/./b/../c", "a/c"),
            ("../a", "../a"),
            ("a/../../b", "../b"),
            ("/../a", "/a"),
            ("/", "/"),
            ("//a///", "/a"),
        ] {
            assert_eq!(clean_path(input), want, "clean_path({input:?})");
        }
    }

    #[test]
    fn patterns_are_cleaned_trimmed_and_unrooted() {
        assert_eq!(p("  ./a//b/  ").as_str(), "a/b");
        assert_eq!(p("/abs/path").as_str(), "abs/path");
        assert_eq!(p("a/../b").as_str(), "b");
        assert_eq!(p("/").as_str(), ".");
        assert!(Pattern::new("   ").unwrap().is_none());
        let e = p("!x/");
        assert!(e.is_exception());
        assert_eq!(e.as_str(), "x");
        assert!(m(&["", "  ", "a"]).patterns().len() == 1);
    }

    #[test]
    fn star_and_question_stay_within_a_component() {
        let pat = p("*.go");
        assert!(pat.matches_exactly("main.go"));
        assert!(pat.matches_exactly(".go"));
        assert!(!pat.matches_exactly("cmd/main.go"));
        let pat = p("a?c");
        assert!(pat.matches_exactly("abc"));
        assert!(!pat.matches_exactly("a/c"));
        assert!(!pat.matches_exactly("ac"));
        let pat = p("src/*/mod.rs");
        assert!(pat.matches_exactly("src/x/mod.rs"));
        assert!(!pat.matches_exactly("src/x/y/mod.rs"));
        assert!(p("*").matches_exactly("anything"));
        assert!(!p("*").matches_exactly("a/b"));
    }

    #[test]
    fn character_classes() {
        let pat = p("file[0-9].txt");
        assert!(pat.matches_exactly("file7.txt"));
        assert!(!pat.matches_exactly("filex.txt"));
        let pat = p("[^a-c]x");
        assert!(pat.matches_exactly("dx"));
        assert!(!pat.matches_exactly("bx"));
        assert!(!pat.matches_exactly("/x"));
        let pat = p("[]a]");
        assert!(pat.matches_exactly("]"));
        assert!(pat.matches_exactly("a"));
        let pat = p(r"[\]-]");
        assert!(pat.matches_exactly("]"));
        assert!(pat.matches_exactly("-"));
        assert!(p("[ab-]").matches_exactly("-"));
        assert!(p("[é-ë]").matches_exactly("ê"));
    }

    #[test]
    fn double_star() {
        let pat = p("**/*.go");
        assert!(pat.matches_exactly("a.go"));
        assert!(pat.matches_exactly("x/y/a.go"));
        assert!(!pat.matches_exactly("x/y/a.rs"));
        let pat = p("a/**/b");
        assert!(pat.matches_exactly("a/b"));
        assert!(pat.matches_exactly("a/x/b"));
        assert!(pat.matches_exactly("a/x/y/b"));
        assert!(!pat.matches_exactly("a/xb"));
        assert!(!pat.matches_exactly("ab"));
        let pat = p("build/**");
        assert!(pat.matches_exactly("build/x"));
        assert!(pat.matches_exactly("build/x/y"));
        assert!(!pat.matches_exactly("build"));
        assert!(!pat.matches_exactly("builder/x"));
        assert!(p("**").matches_exactly("a/b/c"));
        let pat = p("**.log");
        assert!(pat.matches_exactly("a.log"));
        assert!(pat.matches_exactly("a/b/c.log"));
        assert!(!pat.matches_exactly("a/b/c.txt"));
        let pat = p("**/node_modules");
        assert!(pat.matches_exactly("node_modules"));
        assert!(pat.matches_exactly("web/node_modules"));
        assert!(pat.matches("web/node_modules/x/index.js"));
        assert!(p("a/**/**/b").matches_exactly("a/x/y/b"));
        assert!(p("***").matches_exactly("x/y"));
    }

    #[test]
    fn escapes_and_literals() {
        let pat = p(r"a\*b");
        assert!(pat.matches_exactly("a*b"));
        assert!(!pat.matches_exactly("axb"));
        assert!(matches!(pat.kind, Kind::Exact(_)));
        assert!(p(r"\[x\]").matches_exactly("[x]"));
        assert!(p("plain/path.txt").matches_exactly("plain/path.txt"));
        assert!(!p("plain").matches_exactly("plainer"));
    }

    #[test]
    fn bad_patterns_are_named() {
        for bad in ["[abc", "a[", r"x\", "[z-a]", "!", "[^", r"[a\"] {
            let err = PatternMatcher::new(["ok", bad]).unwrap_err();
            assert_eq!(err.pattern, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn parent_directories_match() {
        let pat = p("node_modules");
        assert!(pat.matches("node_modules"));
        assert!(pat.matches("node_modules/a/b.js"));
        assert!(!pat.matches("src/node_modules"));
        assert!(p("*/tmp").matches("a/tmp/x/y"));
        assert!(!p("*/tmp").matches("a/b/tmp"));
        assert!(p(".").matches("any/thing"));
    }

    #[test]
    fn last_matching_pattern_wins() {
        let matcher = m(&["*.md", "!README.md"]);
        assert!(matcher.matches("NOTES.md"));
        assert!(!matcher.matches("README.md"));
        assert!(!matcher.matches("main.rs"));
        // An exception, then the rule again.
        let matcher = m(&["docs", "!docs/keep", "docs/keep/secret"]);
        assert!(matcher.matches("docs/a"));
        assert!(!matcher.matches("docs/keep/b"));
        assert!(matcher.matches("docs/keep/secret"));
        assert!(matcher.matches("docs/keep/secret/inner"));
        // An exception before its rule changes nothing.
        let matcher = m(&["!a.txt", "*.txt"]);
        assert!(matcher.matches("a.txt"));
        // Exception of a directory re-includes its contents.
        let matcher = m(&["*", "!src"]);
        assert!(!matcher.matches("src/lib.rs"));
        assert!(matcher.matches("Cargo.toml"));
        assert!(m(&["!x"]).has_exceptions());
        assert!(!m(&["x"]).has_exceptions());
        assert!(!m(&[]).matches("x"));
    }

    #[test]
    fn matches_with_parent_agrees_with_matches() {
        let matcher = m(&["a", "!a/b", "a/b/c*", "**/*.o", "!keep.o", "[xy]/**"]);
        let paths = [
            "a",
            "a/b",
            "a/b/c1",
            "a/b/c1/deep",
            "a/b/d",
            "a/z",
            "q",
            "q/r.o",
            "keep.o",
            "x",
            "x/1",
            "x/1/2",
            "y/k.o",
        ];
        // Walk the paths as a tree, carrying infos.
        let mut infos: std::collections::HashMap<&str, MatchInfo> = Default::default();
        for path in paths {
            let parent = path.rsplit_once('/').map_or("", |(d, _)| d);
            let pinfo = infos.get(parent).cloned().unwrap_or_default();
            let (hit, info) = matcher.matches_with_parent(path, &pinfo);
            assert_eq!(hit, matcher.matches(path), "{path}");
            assert_eq!(matcher.matches_leaf(path, &pinfo), hit, "{path}");
            infos.insert(path, info);
        }
    }

    #[test]
    fn may_match_under() {
        assert!(p("a/b/c").may_match_under("a"));
        assert!(p("a/b/c").may_match_under("a/b"));
        assert!(!p("a/b/c").may_match_under("a/b/c"));
        assert!(!p("a/b/c").may_match_under("ab"));
        assert!(!p("a/b").may_match_under("x"));
        assert!(p("*/keep").may_match_under("anything"));
        assert!(!p("*/keep").may_match_under("a/b"));
        assert!(p("**/keep").may_match_under("a/b/c"));
        assert!(p("src/*.rs").may_match_under("src"));
        assert!(!p("src/*.rs").may_match_under("src/sub"));
        assert!(!p("*.rs").may_match_under("src"));
        assert!(p("a*/x").may_match_under("abc"));
        assert!(!p("a*/x").may_match_under("bc"));
        assert!(p("x").may_match_under(""));
        let matcher = m(&["target", "!target/keep.txt"]);
        assert!(matcher.exceptions_may_match_under("target"));
        assert!(!matcher.exceptions_may_match_under("other"));
        assert!(!m(&["target"]).exceptions_may_match_under("target"));
        assert!(!matcher.may_match_under("target"));
        assert!(m(&["src/lib.rs", "!x/y"]).may_match_under("src"));
        assert!(!m(&["src/lib.rs", "!x/y"]).may_match_under("x"));
    }

    /// Walks a fixed tree with a filter and returns the selected paths.
    fn walk(filter: &PathFilter, tree: &[(&str, bool)]) -> Vec<String> {
        let mut states: std::collections::HashMap<String, FilterState> = Default::default();
        states.insert(String::new(), FilterState::default());
        let mut out = Vec::new();
        for &(path, is_dir) in tree {
            let parent = path.rsplit_once('/').map_or("", |(d, _)| d);
            let Some(pstate) = states.get(parent).cloned() else {
                continue; // parent was skipped
            };
            let v = filter.check(path, is_dir, &pstate);
            if v.selected {
                out.push(path.to_string());
            }
            if let Some(s) = v.state {
                assert!(v.descend);
                states.insert(path.to_string(), s);
            }
        }
        out
    }

    const TREE: &[(&str, bool)] = &[
        ("Cargo.toml", false),
        ("README.md", false),
        ("src", true),
        ("src/lib.rs", false),
        ("src/gen", true),
        ("src/gen/out.rs", false),
        ("target", true),
        ("target/debug", true),
        ("target/debug/app", false),
        ("target/keep.txt", false),
        ("x.log", false),
        ("logs", true),
        ("logs/a.log", false),
    ];

    #[test]
    fn filter_exclude_with_exception() {
        let f = PathFilter::new(&[], &["target", "!target/keep.txt", "**/*.log"]).unwrap();
        assert_eq!(
            walk(&f, TREE),
            [
                "Cargo.toml",
                "README.md",
                "src",
                "src/lib.rs",
                "src/gen",
                "src/gen/out.rs",
                "target/keep.txt",
                "logs"
            ]
        );
        // Without an exception, the excluded directory is not even entered.
        let f = PathFilter::new(&[], &["target"]).unwrap();
        let v = f.check("target", true, &FilterState::default());
        assert!(!v.selected && !v.descend && v.state.is_none());
    }

    #[test]
    fn filter_include_only() {
        let f = PathFilter::new(&["src/gen", "*.md"], &[]).unwrap();
        assert_eq!(walk(&f, TREE), ["README.md", "src/gen", "src/gen/out.rs"]);
        // `target` cannot contain a match: skipped.
        assert!(!f.check("target", true, &FilterState::default()).descend);
        // `src` may: walked, but not selected itself.
        let v = f.check("src", true, &FilterState::default());
        assert!(v.descend && !v.selected);
    }

    #[test]
    fn filter_include_and_exclude() {
        let f = PathFilter::new(&["src", "target"], &["src/gen", "target/debug"]).unwrap();
        assert_eq!(
            walk(&f, TREE),
            ["src", "src/lib.rs", "target", "target/keep.txt"]
        );
        assert!(PathFilter::new::<&str>(&[], &[]).unwrap().selects_all());
        assert!(!f.selects_all());
    }

    #[test]
    fn filter_exclude_everything_but() {
        let f = PathFilter::new(&[], &["*", "!src/lib.rs", "!README.md"]).unwrap();
        assert_eq!(walk(&f, TREE), ["README.md", "src/lib.rs"]);
    }
}

//! `local://NAME` identifiers and their `local.*` attributes (no I/O).

use std::fmt;

use kiln_plugin_api::patterns::PatternMatcher;
use kiln_plugin_api::{AttrSpec, AttrType, PluginError, Request, Result};

/// `local.session`: a session id; the form `a:b` gives name `a-<name>`, session `b`.
pub const ATTR_SESSION: &str = "local.session";
/// `local.unique`: a client id that only changes the vertex digest.
pub const ATTR_UNIQUE: &str = "local.unique";
/// `local.includepattern` (BuildKit's spelling): JSON list of include patterns.
pub const ATTR_INCLUDE: &str = "local.includepattern";
/// `local.includepatterns`: accepted as another spelling of [`ATTR_INCLUDE`].
pub const ATTR_INCLUDE_ALT: &str = "local.includepatterns";
/// `local.excludepatterns`: JSON list of exclude patterns.
pub const ATTR_EXCLUDE: &str = "local.excludepatterns";
/// `local.followpaths`: JSON list of paths whose symlinks are followed.
pub const ATTR_FOLLOW: &str = "local.followpaths";
/// `local.sharedkeyhint`: a hint for reusing an earlier transfer.
pub const ATTR_SHARED_KEY_HINT: &str = "local.sharedkeyhint";
/// `local.differ`: `metadata` (default) or `none`.
pub const ATTR_DIFFER: &str = "local.differ";
/// `local.ignorefile`: an ignore file (`.dockerignore` syntax) relative to the
/// context's root; default `.dockerignore`; empty: none.
pub const ATTR_IGNORE_FILE: &str = "local.ignorefile";
/// `local.metadatatransfer`: BuildKit's metadata-only transfer (only `false` here).
pub const ATTR_METADATA_TRANSFER: &str = "local.metadatatransfer";
/// `local.metadatatransferexclude`: patterns for the metadata-only transfer.
pub const ATTR_METADATA_TRANSFER_EXCLUDE: &str = "local.metadatatransferexclude";

/// The attributes this source accepts (its schema, checked by the host before the
/// plugin is called and shown by `kiln plugins show io.kiln.source.v1.local`).
pub fn attributes() -> Vec<AttrSpec> {
    use AttrType::{List, String};
    vec![
        AttrSpec::new(
            ATTR_SESSION,
            String,
            "session id; the form PREFIX:ID keys the name as PREFIX-NAME",
        ),
        AttrSpec::new(
            ATTR_UNIQUE,
            String,
            "a client id; changes only the step's digest",
        ),
        AttrSpec::new(
            ATTR_INCLUDE,
            List,
            "include patterns (only matching paths are copied)",
        ),
        AttrSpec::new(
            ATTR_INCLUDE_ALT,
            List,
            "another spelling of local.includepattern",
        ),
        AttrSpec::new(
            ATTR_EXCLUDE,
            List,
            "exclude patterns (matching paths are left out)",
        ),
        AttrSpec::new(ATTR_FOLLOW, List, "paths whose symlinks are followed"),
        AttrSpec::new(
            ATTR_SHARED_KEY_HINT,
            String,
            "a hint for reusing an earlier transfer",
        ),
        AttrSpec::new(
            ATTR_DIFFER,
            String,
            "metadata (default: unchanged files come from the last snapshot) or none (copy all)",
        ),
        AttrSpec::new(
            ATTR_IGNORE_FILE,
            String,
            "ignore file (.dockerignore syntax) in the context; default .dockerignore, empty: none",
        ),
        AttrSpec::new(
            ATTR_METADATA_TRANSFER,
            String,
            "metadata-only transfer: only false is supported",
        ),
        AttrSpec::new(
            ATTR_METADATA_TRANSFER_EXCLUDE,
            List,
            "patterns for the metadata-only transfer",
        ),
    ]
}

/// How a transfer decides that a file is unchanged since an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Differ {
    /// Size, times, mode, owner and inode (BuildKit's default): unchanged files are
    /// taken from the kept copy of the last snapshot.
    Metadata,
    /// Always copy every file.
    None,
}

/// A parsed `local://NAME` step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalId {
    /// The name as written after `local://`.
    pub name: String,
    /// The name the directory is looked up under and keyed by: `name`, or `a-name`
    /// when `local.session` is `a:b`.
    pub key_name: String,
    /// The session from `local.session` (without an `a:` prefix), if set.
    pub session: Option<String>,
    /// Include patterns; `None` when the attribute is absent (or JSON `null`).
    pub include: Option<Vec<String>>,
    /// Exclude patterns; `None` when absent.
    pub exclude: Option<Vec<String>>,
    /// Follow paths; `None` when absent.
    pub follow: Option<Vec<String>>,
    /// `local.sharedkeyhint`.
    pub shared_key_hint: Option<String>,
    /// `local.differ`.
    pub differ: Differ,
    /// The ignore file, relative to the context root: `Some(".dockerignore")` by
    /// default (used when present), `None` when `local.ignorefile` is empty.
    pub ignore_file: Option<String>,
    /// Whether `local.ignorefile` named the file (then it must exist).
    pub ignore_file_explicit: bool,
}

impl fmt::Display for LocalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "local://{}", self.name)
    }
}

fn invalid(id: &str, msg: impl fmt::Display) -> PluginError {
    PluginError::invalid_identifier(format!("local://{id}: {msg}"))
}

impl LocalId {
    /// Parses `request` (scheme `local`, reference `NAME`) and validates every
    /// `local.*` attribute; other attributes are ignored.
    pub fn parse(request: &Request) -> Result<Self> {
        let name = request.reference.as_str();
        if name.is_empty() {
            return Err(PluginError::invalid_identifier(
                "local://: a local source needs a name, as in local://context",
            ));
        }
        if let Some(c) = name.chars().find(|c| c.is_control() || *c == '/') {
            return Err(invalid(
                name,
                format!("a local name cannot contain {c:?}; use a plain name such as \"context\""),
            ));
        }
        // Every attribute of our own prefix must be one the schema declares.
        let known = attributes();
        let names: Vec<&str> = known.iter().map(|a| a.name.as_str()).collect();
        request.deny_unknown("local.", &names)?;

        let mut key_name = name.to_string();
        let mut session = None;
        if let Some(v) = request.attr(ATTR_SESSION) {
            match v.split_once(':') {
                Some((prefix, id)) => {
                    key_name = format!("{prefix}-{name}");
                    session = Some(id.to_string());
                }
                None => session = Some(v.to_string()),
            }
        }

        let include = match (request.attr(ATTR_INCLUDE), request.attr(ATTR_INCLUDE_ALT)) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    name,
                    format!("set only one of {ATTR_INCLUDE} and {ATTR_INCLUDE_ALT}"),
                ))
            }
            (Some(_), None) => request.attr_list(ATTR_INCLUDE)?,
            (None, _) => request.attr_list(ATTR_INCLUDE_ALT)?,
        };
        let exclude = request.attr_list(ATTR_EXCLUDE)?;
        let follow = request.attr_list(ATTR_FOLLOW)?;
        let include_key = if request.attr(ATTR_INCLUDE).is_some() {
            ATTR_INCLUDE
        } else {
            ATTR_INCLUDE_ALT
        };
        for (key, list) in [
            (include_key, &include),
            (ATTR_EXCLUDE, &exclude),
            (ATTR_FOLLOW, &follow),
        ] {
            if let Some(list) = list {
                PatternMatcher::new(list)
                    .map_err(|e| invalid(name, format!("attribute {key}: {e}")))?;
            }
        }
        request.attr_list(ATTR_METADATA_TRANSFER_EXCLUDE)?;

        let differ = match request.attr(ATTR_DIFFER) {
            None | Some("") | Some("metadata") => Differ::Metadata,
            Some("none") => Differ::None,
            Some(other) => {
                return Err(invalid(
                    name,
                    format!("attribute {ATTR_DIFFER} must be \"metadata\", \"none\" or empty, not {other:?}"),
                ))
            }
        };
        // BuildKit reads it as "true" or anything else; empty means unset here.
        let transfer = match request.attr(ATTR_METADATA_TRANSFER) {
            None | Some("") => None,
            Some(_) => request.attr_bool(ATTR_METADATA_TRANSFER)?,
        };
        if transfer == Some(true) {
            return Err(PluginError::unsupported(format!(
                "local://{name}: attribute {ATTR_METADATA_TRANSFER}=true (metadata-only transfer) is not supported"
            )));
        }

        let (ignore_file, ignore_file_explicit) = match request.attr(ATTR_IGNORE_FILE) {
            None => (Some(crate::ignore::DEFAULT.to_string()), false),
            Some("") => (None, true),
            Some(p) => {
                let bad = p.starts_with('/')
                    || p.split('/').any(|c| c == "..")
                    || p.chars().any(char::is_control);
                if bad {
                    return Err(invalid(
                        name,
                        format!("attribute {ATTR_IGNORE_FILE} must be a path inside the context, like .dockerignore or docker/app.ignore, not {p:?}"),
                    ));
                }
                (Some(p.to_string()), true)
            }
        };

        Ok(LocalId {
            name: name.to_string(),
            key_name,
            session,
            include,
            exclude,
            follow,
            shared_key_hint: request.attr(ATTR_SHARED_KEY_HINT).map(str::to_string),
            differ,
            ignore_file,
            ignore_file_explicit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_api::ErrorCode;

    fn req(name: &str, attrs: &[(&str, &str)]) -> Request {
        Request {
            scheme: "local".into(),
            reference: name.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platform: None,
        }
    }

    #[test]
    fn plain_name() {
        let id = LocalId::parse(&req("context", &[])).unwrap();
        assert_eq!(id.to_string(), "local://context");
        assert_eq!(id.key_name, "context");
        assert_eq!(id.include, None);
        assert_eq!(id.differ, Differ::Metadata);
        assert_eq!(id.ignore_file.as_deref(), Some(".dockerignore"));
        let id = LocalId::parse(&req("context", &[(ATTR_IGNORE_FILE, "")])).unwrap();
        assert_eq!(id.ignore_file, None);
        let id = LocalId::parse(&req("context", &[(ATTR_IGNORE_FILE, "ci/ignore")])).unwrap();
        assert_eq!(id.ignore_file.as_deref(), Some("ci/ignore"));
        assert!(id.ignore_file_explicit);
    }

    #[test]
    fn attributes() {
        let id = LocalId::parse(&req(
            "ctx",
            &[
                (ATTR_INCLUDE, r#"["src", "*.toml"]"#),
                (ATTR_EXCLUDE, "[]"),
                (ATTR_FOLLOW, "null"),
                (ATTR_DIFFER, "none"),
                (ATTR_SHARED_KEY_HINT, "hint"),
                (ATTR_UNIQUE, "u1"),
                ("git.keepgitdir", "ignored"),
            ],
        ))
        .unwrap();
        assert_eq!(
            id.include.as_deref(),
            Some(&["src".to_string(), "*.toml".to_string()][..])
        );
        assert_eq!(id.exclude, Some(vec![]));
        assert_eq!(id.follow, None);
        assert_eq!(id.differ, Differ::None);
        assert_eq!(id.shared_key_hint.as_deref(), Some("hint"));
        let alt = LocalId::parse(&req("ctx", &[(ATTR_INCLUDE_ALT, r#"["a"]"#)])).unwrap();
        assert_eq!(alt.include, Some(vec!["a".to_string()]));
    }

    #[test]
    fn session_prefix_renames() {
        let id = LocalId::parse(&req("context", &[(ATTR_SESSION, "abc:s1")])).unwrap();
        assert_eq!(id.key_name, "abc-context");
        assert_eq!(id.session.as_deref(), Some("s1"));
        assert_eq!(id.to_string(), "local://context");
        let id = LocalId::parse(&req("context", &[(ATTR_SESSION, "s2")])).unwrap();
        assert_eq!(id.key_name, "context");
        assert_eq!(id.session.as_deref(), Some("s2"));
    }

    #[test]
    fn errors_name_the_attribute() {
        for (attrs, needle) in [
            (vec![(ATTR_EXCLUDE, "target")], ATTR_EXCLUDE),
            (vec![(ATTR_INCLUDE, r#"["a", 1]"#)], ATTR_INCLUDE),
            (vec![(ATTR_FOLLOW, "")], ATTR_FOLLOW),
            (vec![(ATTR_EXCLUDE, r#"["[oops"]"#)], "[oops"),
            (vec![(ATTR_DIFFER, "content")], ATTR_DIFFER),
            (vec![(ATTR_IGNORE_FILE, "../x")], ATTR_IGNORE_FILE),
            (vec![(ATTR_IGNORE_FILE, "/etc/x")], ATTR_IGNORE_FILE),
            (
                vec![(ATTR_METADATA_TRANSFER, "maybe")],
                ATTR_METADATA_TRANSFER,
            ),
            (vec![("local.excludepattern", "[]")], "local.excludepattern"),
            (
                vec![(ATTR_INCLUDE, "[]"), (ATTR_INCLUDE_ALT, "[]")],
                ATTR_INCLUDE_ALT,
            ),
        ] {
            let err = LocalId::parse(&req("ctx", &attrs)).unwrap_err();
            assert_eq!(err.code, ErrorCode::INVALID_IDENTIFIER, "{err}");
            assert!(err.message.contains(needle), "{err} should name {needle}");
            assert!(err.message.starts_with("local://ctx:"), "{err}");
        }
        let err = LocalId::parse(&req("ctx", &[(ATTR_METADATA_TRANSFER, "true")])).unwrap_err();
        assert_eq!(err.code, ErrorCode::UNSUPPORTED);
    }

    #[test]
    fn bad_names() {
        assert!(LocalId::parse(&req("", &[]))
            .unwrap_err()
            .message
            .contains("needs a name"));
        assert!(LocalId::parse(&req("a/b", &[])).is_err());
        assert!(LocalId::parse(&req("a\nb", &[])).is_err());
    }

    /// The whole step through the SDK's test doubles: parse, key, snapshot.
    mod with_doubles {
        use super::*;
        use crate::LocalSource;
        use kiln_plugin_api::testing::{FakeHost, FakeJob};
        use kiln_plugin_api::{Plugin, Source};

        fn step(
            host: &FakeHost,
            attrs: &[(&str, &str)],
        ) -> Box<dyn kiln_plugin_api::SourceInstance> {
            let source = LocalSource::new("", host.host()).unwrap();
            let id = source.identifier(&req("ctx", attrs)).unwrap();
            source.resolve(id).unwrap()
        }

        #[test]
        fn snapshot_copies_the_selected_files_and_reports_progress() {
            let host = FakeHost::new();
            let src = host.root().join("src");
            std::fs::create_dir_all(src.join("sub")).unwrap();
            std::fs::write(src.join("a.txt"), "a").unwrap();
            std::fs::write(src.join("sub/b.log"), "b").unwrap();
            let fake = FakeJob::new().with_local_dir("ctx", &src);
            let s = step(&host, &[(ATTR_EXCLUDE, r#"["*.log", "sub/*.log"]"#)]);
            let key = s.cache_key(0, &fake.job()).unwrap();
            assert!(key.key.starts_with("session:ctx:"), "{key:?}");
            assert!(key.done);
            let dest = host.staging_dir();
            let snap = s.snapshot(&dest, &fake.job()).unwrap();
            assert_eq!(std::fs::read_to_string(dest.join("a.txt")).unwrap(), "a");
            assert!(!dest.join("sub/b.log").exists());
            assert!(snap.metadata.contains(&("local.files".into(), "1".into())));
            let p = fake.progress();
            let last = p.last().unwrap();
            assert_eq!((last.kind, last.current), ("finish", 1), "{p:?}");
            assert_eq!(p[0].kind, "start");
        }

        #[test]
        fn unmapped_name_and_cancellation() {
            let host = FakeHost::new();
            let s = step(&host, &[]);
            let e = s
                .snapshot(&host.staging_dir(), &FakeJob::new().job())
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::NOT_FOUND);
            assert!(e.message.contains("--local ctx=DIR"), "{e}");
            let fake = FakeJob::new().with_local_dir("ctx", host.root());
            fake.cancel();
            let e = s.snapshot(&host.staging_dir(), &fake.job()).unwrap_err();
            assert_eq!(e.code, ErrorCode::CANCELLED);
        }

        #[test]
        fn the_key_depends_on_the_options_not_the_session_name_only() {
            let fake = FakeJob::new().with_id("job-1");
            let host = FakeHost::new();
            let a = step(&host, &[]).cache_key(0, &fake.job()).unwrap();
            let b = step(&host, &[(ATTR_EXCLUDE, r#"["x"]"#)])
                .cache_key(0, &fake.job())
                .unwrap();
            assert_ne!(a.key, b.key);
        }
    }
}

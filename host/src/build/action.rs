//! The file actions of a file-op step, with BuildKit FileOp's options.
//!
//! Every path is inside the step's own tree (DESIGN §5); the worker confines them.

use serde::{Deserialize, Serialize};

/// One action of a file-op step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Copy from another step's tree.
    Copy(Copy),
    /// Create a directory.
    Mkdir(Mkdir),
    /// Create a file with the given content.
    Mkfile(Mkfile),
    /// Remove a path.
    Rm(Rm),
    /// Create a symbolic link.
    Symlink(Symlink),
}

impl Action {
    /// The action's name as written in the definition.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Copy(_) => "copy",
            Action::Mkdir(_) => "mkdir",
            Action::Mkfile(_) => "mkfile",
            Action::Rm(_) => "rm",
            Action::Symlink(_) => "symlink",
        }
    }
}

/// `uid:gid` ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(format!(
                "owner {:?} is not \"UID:GID\" (two numbers)",
                crate::text::shorten(&s)
            ))
        };
        let (u, g) = s.split_once(':').ok_or_else(bad)?;
        Ok(Owner {
            uid: u.parse().map_err(|_| bad())?,
            gid: g.parse().map_err(|_| bad())?,
        })
    }
}

/// A permission mode: a string of octal digits (`"0755"`) or a TOML integer (`0o755`).
pub(crate) mod mode {
    use serde::{Deserializer, Serializer};

    fn check(m: i64) -> Result<u32, String> {
        if (0..=0o7777).contains(&m) {
            Ok(m as u32)
        } else {
            Err(format!("mode {m:#o} is out of range (0 to 0o7777)"))
        }
    }

    const EXPECTED: &str = "an octal string like \"0755\" or an integer like 0o755";

    /// Accepts an integer or a string of octal digits, and says what it expected for
    /// anything else (a float, a boolean, a table…).
    struct ModeVisitor;

    impl serde::de::Visitor<'_> for ModeVisitor {
        type Value = u32;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
            check(v).map_err(E::custom)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
            check(i64::try_from(v).unwrap_or(i64::MAX)).map_err(E::custom)
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u32, E> {
            Err(E::custom(format!(
                "mode {v} is a float; expected {EXPECTED}"
            )))
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<u32, E> {
            i64::from_str_radix(s.trim_start_matches("0o"), 8)
                .map_err(|_| {
                    format!(
                        "mode {:?} is not an octal number; expected {EXPECTED}",
                        crate::text::shorten(s)
                    )
                })
                .and_then(check)
                .map_err(E::custom)
        }
    }

    pub fn parse<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        d.deserialize_any(ModeVisitor)
    }

    pub fn parse_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        parse(d).map(Some)
    }

    pub fn write<S: Serializer>(m: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{m:04o}"))
    }

    pub fn write_opt<S: Serializer>(m: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => write(m, s),
            None => s.serialize_none(),
        }
    }
}

fn yes() -> bool {
    true
}
fn dir_mode() -> u32 {
    0o755
}
fn file_mode() -> u32 {
    0o644
}

/// `copy`: BuildKit FileOp copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Copy {
    /// The step to copy from.
    pub from: String,
    /// The source path in `from`'s tree (wildcards allowed unless `allow_wildcard` is false).
    pub src: String,
    /// The destination path in this step's tree.
    pub dest: String,
    /// Mode of the copied entries; default: kept.
    #[serde(
        default,
        deserialize_with = "mode::parse_opt",
        serialize_with = "mode::write_opt"
    )]
    pub mode: Option<u32>,
    /// Owner of the copied entries; default: kept.
    #[serde(default)]
    pub owner: Option<Owner>,
    /// Follow a symlink named by `src`.
    #[serde(default)]
    pub follow_symlinks: bool,
    /// Copy the contents of a source directory rather than the directory.
    #[serde(default)]
    pub dir_contents: bool,
    /// Create missing parents of `dest`.
    #[serde(default = "yes")]
    pub create_dest_path: bool,
    /// Treat `src` as a pattern.
    #[serde(default = "yes")]
    pub allow_wildcard: bool,
    /// Only copy paths matching these patterns.
    #[serde(default)]
    pub include: Vec<String>,
    /// Skip paths matching these patterns.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Extract a tar archive named by `src` instead of copying it.
    #[serde(default)]
    pub unpack: bool,
}

/// `mkdir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mkdir {
    /// The directory to create.
    pub path: String,
    /// Its mode (default 0755).
    #[serde(
        default = "dir_mode",
        deserialize_with = "mode::parse",
        serialize_with = "mode::write"
    )]
    pub mode: u32,
    /// Create missing parents too.
    #[serde(default)]
    pub parents: bool,
    /// Its owner; default 0:0.
    #[serde(default)]
    pub owner: Option<Owner>,
}

/// `mkfile`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mkfile {
    /// The file to create or replace.
    pub path: String,
    /// Its content.
    #[serde(default)]
    pub data: String,
    /// Its mode (default 0644).
    #[serde(
        default = "file_mode",
        deserialize_with = "mode::parse",
        serialize_with = "mode::write"
    )]
    pub mode: u32,
    /// Its owner; default 0:0.
    #[serde(default)]
    pub owner: Option<Owner>,
}

/// `rm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rm {
    /// The path to remove (recursively).
    pub path: String,
    /// Succeed when nothing is there.
    #[serde(default)]
    pub allow_not_found: bool,
    /// Treat `path` as a pattern.
    #[serde(default)]
    pub allow_wildcard: bool,
}

/// `symlink`: create `path` pointing at `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    /// What the link points at (stored verbatim).
    pub target: String,
    /// Where the link is created.
    pub path: String,
}

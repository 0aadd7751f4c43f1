//! Platforms `os/arch[/variant]`, validated and normalised as containerd's
//! `platforms.Parse` + `Normalize` do (`x86_64` → `amd64`, `aarch64` and `arm64/v8` →
//! `arm64`, `armhf` → `arm/v7`, …). kiln also refuses operating systems and
//! architectures nobody publishes images for, so a typo fails at once instead of
//! later as "no match for platform in manifest".
//!
//! Shared by the image plugin (its `platform` attribute), the host's `--platform` flag
//! and the OCI exporter, so that one spelling means one platform everywhere.

use std::fmt;

/// Why a platform was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// Not `os/arch[/variant]`.
    #[error(
        "invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm/v7"
    )]
    Format(String),
    /// An OS containerd does not know.
    #[error("invalid platform {platform:?}: unknown operating system {os:?}")]
    UnknownOs {
        /// The whole platform text.
        platform: String,
        /// The OS part.
        os: String,
    },
    /// An architecture containerd does not know.
    #[error("invalid platform {platform:?}: unknown architecture {arch:?}")]
    UnknownArch {
        /// The whole platform text.
        platform: String,
        /// The architecture part.
        arch: String,
    },
}

/// A normalised platform.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, `darwin`, …
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `386`, …
    pub architecture: String,
    /// `v7`, `v6`, `v8`, … or none.
    pub variant: Option<String>,
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

impl Platform {
    /// Parses and normalises `os/arch[/variant]` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let valid_part = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid_part) {
            return Err(PlatformError::Format(s.to_string()));
        }
        let os = normalize_os(parts[0]);
        if !KNOWN_OS.contains(&os) {
            return Err(PlatformError::UnknownOs {
                platform: s.to_string(),
                os: parts[0].to_string(),
            });
        }
        let (architecture, variant) = normalize_arch(parts[1], parts.get(2).copied().unwrap_or(""));
        if !KNOWN_ARCH.contains(&architecture) {
            return Err(PlatformError::UnknownArch {
                platform: s.to_string(),
                arch: parts[1].to_string(),
            });
        }
        Ok(Self {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: (!variant.is_empty()).then_some(variant),
        })
    }

    /// The platform this kiln was built for (`linux/amd64` on x86-64 Linux).
    pub fn host() -> Self {
        use std::env::consts::{ARCH, OS};
        let os = match OS {
            "macos" => "darwin",
            other => other,
        };
        let (arch, variant) = match ARCH {
            "x86_64" => ("amd64", ""),
            "x86" => ("386", ""),
            "aarch64" if cfg!(target_endian = "big") => ("arm64be", ""),
            "aarch64" => ("arm64", ""),
            "arm" => ("arm", host_arm_variant()),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", ""),
            "powerpc64" => ("ppc64", ""),
            "powerpc" => ("ppc", ""),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", ""),
            "mips" if cfg!(target_endian = "little") => ("mipsle", ""),
            "loongarch64" => ("loong64", ""),
            "sparc64" => ("sparc64", ""),
            other => (other, ""),
        };
        Self {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: (!variant.is_empty()).then(|| variant.to_string()),
        }
    }
}

fn host_arm_variant() -> &'static str {
    if cfg!(target_feature = "v7") {
        "v7"
    } else if cfg!(target_feature = "v6") {
        "v6"
    } else {
        "v7"
    }
}

/// `os/arch[/variant]`.
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalize_os(os: &str) -> &str {
    match os {
        "macos" => "darwin",
        other => other,
    }
}

/// containerd's `normalizeArch`.
fn normalize_arch(arch: &str, variant: &str) -> (&'static str, String) {
    let v = variant.to_string();
    match arch {
        "i386" | "386" => ("386", String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            let v = if v == "v1" { String::new() } else { v };
            ("amd64", v)
        }
        "aarch64" | "arm64" => {
            let v = match v.as_str() {
                "8" | "v8" | "" => String::new(),
                _ => v,
            };
            ("arm64", v)
        }
        "armhf" => ("arm", "v7".to_string()),
        "armel" => ("arm", "v6".to_string()),
        "arm" => {
            let v = match v.as_str() {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{v}"),
                _ => v,
            };
            ("arm", v)
        }
        other => (
            KNOWN_ARCH
                .iter()
                .copied()
                .find(|a| *a == other)
                .unwrap_or("?"),
            v,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd's platform normalisation table.
    #[test]
    fn parse_and_normalize() {
        for (input, want) in [
            ("linux/amd64", "linux/amd64"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/i386", "linux/386"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/arm64/v9", "linux/arm64/v9"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/arm/v5", "linux/arm/v5"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("linux/s390x", "linux/s390x"),
            ("linux/riscv64", "linux/riscv64"),
            ("windows/amd64", "windows/amd64"),
            ("macos/arm64", "darwin/arm64"),
        ] {
            let p = Platform::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.to_string(), want, "{input}");
        }
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v7/x",
            "linux/amd 64",
            "linux//amd64",
        ] {
            assert!(
                matches!(Platform::parse(bad), Err(PlatformError::Format(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Platform::parse("linucks/amd64"),
            Err(PlatformError::UnknownOs { .. })
        ));
        let e = Platform::parse("linux/amd46").unwrap_err();
        assert!(matches!(e, PlatformError::UnknownArch { .. }));
        assert_eq!(
            e.to_string(),
            "invalid platform \"linux/amd46\": unknown architecture \"amd46\""
        );
    }

    #[test]
    fn host_platform() {
        let h = Platform::host();
        let again = Platform::parse(&h.to_string()).unwrap();
        assert_eq!(again, h, "the host platform is already normalised");
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        assert_eq!(h.to_string(), "linux/amd64");
        #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
        assert_eq!(h.to_string(), "linux/arm64");
    }
}

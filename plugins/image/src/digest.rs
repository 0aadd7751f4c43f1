//! Content digests (`sha256:<hex>`), validated as OCI's go-digest does: a registered
//! algorithm and lowercase hex of exactly that algorithm's length.

#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

/// A digest algorithm kiln knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `sha256` (64 hex digits), the canonical one.
    Sha256,
    /// `sha384` (96 hex digits).
    Sha384,
    /// `sha512` (128 hex digits).
    Sha512,
}

impl Algorithm {
    /// The algorithm's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// The number of hex digits of an encoded digest.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha384 => 96,
            Self::Sha512 => 128,
        }
    }
}

/// Why a digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not `algorithm:hex`.
    #[error("invalid digest {0:?}: expected <algorithm>:<hex>, e.g. sha256:<64 hex digits>")]
    Format(String),
    /// An algorithm other than sha256, sha384, sha512.
    #[error("unsupported digest algorithm {0:?} (expected sha256, sha384 or sha512)")]
    Algorithm(String),
    /// Wrong length or not lowercase hex.
    #[error("invalid {alg} digest {digest:?}: expected {len} lowercase hex digits")]
    Encoded {
        /// The algorithm.
        alg: &'static str,
        /// The whole digest.
        digest: String,
        /// The required length.
        len: usize,
    },
}

/// A validated digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses `algorithm:hex`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (alg, hex) = s
            .split_once(':')
            .filter(|(a, h)| !a.is_empty() && !h.is_empty())
            .ok_or_else(|| DigestError::Format(s.to_string()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha384" => Algorithm::Sha384,
            "sha512" => Algorithm::Sha512,
            _ => {
                let grammar_ok = alg.split(['+', '.', '_', '-']).all(|c| {
                    c.chars().next().is_some_and(|f| f.is_ascii_alphabetic())
                        && c.chars().all(|ch| ch.is_ascii_alphanumeric())
                });
                return Err(if grammar_ok {
                    DigestError::Algorithm(alg.to_string())
                } else {
                    DigestError::Format(s.to_string())
                });
            }
        };
        if hex.len() != algorithm.hex_len()
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::Encoded {
                alg: algorithm.as_str(),
                digest: s.to_string(),
                len: algorithm.hex_len(),
            });
        }
        Ok(Self {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        Self::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid() {
        let h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d = Digest::parse(&format!("sha256:{h}")).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex(), h);
        assert_eq!(d.to_string(), format!("sha256:{h}"));
        assert!(Digest::parse(&format!("sha384:{}", "a".repeat(96))).is_ok());
        assert!(Digest::parse(&format!("sha512:{}", "b".repeat(128))).is_ok());
    }

    #[test]
    fn invalid() {
        assert!(matches!(Digest::parse(""), Err(DigestError::Format(_))));
        assert!(matches!(
            Digest::parse("sha256"),
            Err(DigestError::Format(_))
        ));
        assert!(matches!(Digest::parse(":abc"), Err(DigestError::Format(_))));
        assert!(matches!(
            Digest::parse("sha256:"),
            Err(DigestError::Format(_))
        ));
        assert!(matches!(
            Digest::parse(&format!("md5:{}", "a".repeat(32))),
            Err(DigestError::Algorithm(_))
        ));
        assert!(matches!(
            Digest::parse("1x:abc"),
            Err(DigestError::Format(_))
        ));
        assert!(matches!(
            Digest::parse("sha256:abc"),
            Err(DigestError::Encoded { .. })
        ));
        assert!(matches!(
            Digest::parse(&format!("sha256:{}", "A".repeat(64))),
            Err(DigestError::Encoded { .. })
        ));
        assert!(matches!(
            Digest::parse(&format!("sha256:{}", "a".repeat(65))),
            Err(DigestError::Encoded { .. })
        ));
        assert_eq!(
            Digest::parse("sha256:abc").unwrap_err().to_string(),
            "invalid sha256 digest \"sha256:abc\": expected 64 lowercase hex digits"
        );
    }
}

//! The error value that crosses the plugin boundary.

use std::fmt;

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// What kind of failure a [`PluginError`] reports.
///
/// A `u32` newtype rather than an enum, so that later plugin-api versions can add
/// codes without breaking the ABI; a code this version does not know reads as
/// [`ErrorCode::INTERNAL`] through [`ErrorCode::known`].
///
/// What `kiln` makes of each code: the `code` of its `--json` error object is the
/// name with `_` for spaces (`not_found`); [`INVALID_CONFIG`](Self::INVALID_CONFIG)
/// fails the plugin's loading (exit code 2 from `kiln config check`, or when the
/// plugin is required); [`INVALID_IDENTIFIER`](Self::INVALID_IDENTIFIER) is the user's
/// mistake (exit code 2); [`SKIP`](Self::SKIP) from `new_source` skips the plugin;
/// [`PANICKED`](Self::PANICKED) poisons it; every other code fails the build or fetch
/// (exit code 1).
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The plugin's `config` table in `kiln.toml` is wrong.
    pub const INVALID_CONFIG: Self = Self(1);
    /// The identifier or one of its attributes is malformed.
    pub const INVALID_IDENTIFIER: Self = Self(2);
    /// The thing named does not exist (404, unknown ref, missing local name).
    pub const NOT_FOUND: Self = Self(3);
    /// The remote refused the credentials, or none were given.
    pub const UNAUTHORIZED: Self = Self(4);
    /// A network failure: connection refused or reset, timeout, TLS.
    pub const NETWORK: Self = Self(5);
    /// Content did not match the digest it was pinned to.
    pub const CHECKSUM_MISMATCH: Self = Self(6);
    /// The host cancelled the call.
    pub const CANCELLED: Self = Self(7);
    /// The operation is not supported by this plugin (yet).
    pub const UNSUPPORTED: Self = Self(8);
    /// Answer of `new_source`: this plugin cannot run here (e.g. a program it needs is
    /// missing) and should be skipped, not failed.
    pub const SKIP: Self = Self(9);
    /// The plugin panicked; the host marks it poisoned.
    pub const PANICKED: Self = Self(10);
    /// Anything else: a bug or an unexpected I/O failure.
    pub const INTERNAL: Self = Self(11);

    const NAMES: [(ErrorCode, &'static str); 11] = [
        (Self::INVALID_CONFIG, "invalid config"),
        (Self::INVALID_IDENTIFIER, "invalid identifier"),
        (Self::NOT_FOUND, "not found"),
        (Self::UNAUTHORIZED, "unauthorized"),
        (Self::NETWORK, "network"),
        (Self::CHECKSUM_MISMATCH, "checksum mismatch"),
        (Self::CANCELLED, "cancelled"),
        (Self::UNSUPPORTED, "unsupported"),
        (Self::SKIP, "skip"),
        (Self::PANICKED, "panicked"),
        (Self::INTERNAL, "internal"),
    ];

    /// This code if this plugin-api version knows it, else [`ErrorCode::INTERNAL`].
    pub fn known(self) -> Self {
        if Self::NAMES.iter().any(|(c, _)| *c == self) {
            self
        } else {
            Self::INTERNAL
        }
    }

    /// A short human name: `"not found"`, `"checksum mismatch"`, …
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("internal", |(_, n)| n)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({}: {})", self.0, self.name())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error as it crosses the boundary: a code, one readable message, and whether
/// trying again may help.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct PluginError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// One readable sentence or paragraph; never contains secrets or URL credentials.
    pub message: RString,
    /// Whether the same call may succeed if repeated.
    pub retryable: bool,
}

impl PluginError {
    /// An error with `code` and `message`, not retryable.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: RString::from(message.into()),
            retryable: false,
        }
    }

    /// Marks the error as retryable (or not).
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Shorthand for [`ErrorCode::INVALID_CONFIG`].
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_CONFIG, message)
    }
    /// Shorthand for [`ErrorCode::INVALID_IDENTIFIER`].
    pub fn invalid_identifier(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_IDENTIFIER, message)
    }
    /// Shorthand for [`ErrorCode::NOT_FOUND`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NOT_FOUND, message)
    }
    /// Shorthand for [`ErrorCode::UNAUTHORIZED`].
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNAUTHORIZED, message)
    }
    /// Shorthand for a retryable [`ErrorCode::NETWORK`] error.
    pub fn network(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NETWORK, message).retryable(true)
    }
    /// Shorthand for [`ErrorCode::CHECKSUM_MISMATCH`].
    pub fn checksum_mismatch(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::CHECKSUM_MISMATCH, message)
    }
    /// Shorthand for [`ErrorCode::CANCELLED`].
    pub fn cancelled() -> Self {
        Self::new(ErrorCode::CANCELLED, "cancelled")
    }
    /// Shorthand for [`ErrorCode::UNSUPPORTED`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNSUPPORTED, message)
    }
    /// Shorthand for [`ErrorCode::SKIP`].
    pub fn skip(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::SKIP, message)
    }
    /// Shorthand for [`ErrorCode::INTERNAL`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL, message)
    }

    /// Prefixes the message with `context: `.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = RString::from(format!("{context}: {}", self.message));
        self
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

impl From<std::io::Error> for PluginError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => Self::not_found(e.to_string()),
            _ => Self::internal(e.to_string()),
        }
    }
}

/// The result type of every SDK call.
pub type Result<T, E = PluginError> = std::result::Result<T, E>;

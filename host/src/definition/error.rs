//! Errors of the build definition. Each names the file and, where there is one, the step.

use std::path::{Path, PathBuf};

/// A definition that cannot be read, parsed or validated (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read.
    #[error("cannot read build definition {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not valid TOML, or a top-level entry is wrong.
    #[error("{}{message}", file_prefix(file))]
    Syntax {
        /// The file, once known.
        file: Option<PathBuf>,
        /// What is wrong, with line and column when TOML gave them.
        message: String,
    },
    /// A step is wrong.
    #[error("{}step `{step}`: {message}", file_prefix(file))]
    Step {
        /// The file, once known.
        file: Option<PathBuf>,
        /// The offending step.
        step: String,
        /// What is wrong.
        message: String,
    },
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    match file {
        Some(f) => format!("build definition {}: ", f.display()),
        None => "build definition: ".to_string(),
    }
}

impl DefinitionError {
    pub(crate) fn syntax(message: impl Into<String>) -> Self {
        DefinitionError::Syntax {
            file: None,
            message: message.into(),
        }
    }

    pub(crate) fn step(step: &str, message: impl Into<String>) -> Self {
        DefinitionError::Step {
            file: None,
            step: step.to_string(),
            message: message.into(),
        }
    }

    /// The step the error is about, if any.
    pub fn step_name(&self) -> Option<&str> {
        match self {
            DefinitionError::Step { step, .. } => Some(step),
            _ => None,
        }
    }

    pub(crate) fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            DefinitionError::Syntax { file, .. } | DefinitionError::Step { file, .. } => {
                *file = Some(path.to_path_buf())
            }
            DefinitionError::Read { .. } => {}
        }
        self
    }
}

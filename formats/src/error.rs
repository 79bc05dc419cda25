use std::path::PathBuf;

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// What went wrong reading or writing a file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("no file matches '{pattern}': check the path (a file, a directory or a glob such as 'data/*.parquet')")]
    NoFiles { pattern: String },
    #[error("cannot access '{}': {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot read '{}': {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write '{}': {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error("invalid glob '{pattern}': {message}")]
    BadPattern { pattern: String, message: String },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        FormatError::Corrupt { path: path.into(), message: message.to_string() }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        FormatError::Write { path: path.into(), message: message.to_string() }
    }
}

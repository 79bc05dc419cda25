//! Riffle's sources and sinks: finding files, inferring their schema, splitting them into morsels that
//! worker threads read in parallel, and writing results atomically.

pub mod debezium;
mod direct;
mod error;
mod files;
pub mod gensort;
pub mod nexmark;
mod read;
mod write;

pub use direct::{DirectWriter, PrefetchReader};
pub use error::{FormatError, Result};
pub use files::list_files;
pub use read::{
    dictionary_encoded, infer_schema, parquet_metadata_with_page_index, parquet_page_stats, parquet_stats, plan_morsels, read_morsel, BatchReader,
    ColumnStats, Morsel, PageStats,
};
pub use write::{commit_staged, write_atomic, AtomicWriter};

use std::path::Path;

/// How the fields of a CSV file are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    pub header: bool,
    pub delimiter: u8,
    pub quote: u8,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { header: true, delimiter: b',', quote: b'"' }
    }
}

/// A file format Riffle reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFormat {
    Parquet,
    Csv(CsvOptions),
    /// JSON lines: one object per line.
    Json,
    /// Arrow IPC file format.
    Arrow,
    /// The sort benchmark's 100-byte records (key + payload), no header.
    Gensort,
    /// A changelog in Debezium's JSON envelope, one change per line (Flink's `debezium-json`): read
    /// and written as the rows' columns plus a last column of row kinds (`debezium`).
    DebeziumJson,
}

impl FileFormat {
    /// The format a path's extension names, if any.
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Self::from_name(&ext)
    }

    /// The file name extension of the format.
    pub fn extension(&self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv(_) => "csv",
            FileFormat::Json => "json",
            FileFormat::Arrow => "arrow",
            FileFormat::Gensort => "gensort",
            FileFormat::DebeziumJson => "json",
        }
    }

    /// Whether its rows are a changelog (a last column of row kinds, read and written).
    pub fn is_changelog(&self) -> bool {
        matches!(self, FileFormat::DebeziumJson)
    }

    /// The format a name such as `parquet`, `csv`, `json` or `arrow` stands for.
    pub fn from_name(name: &str) -> Option<FileFormat> {
        match name.to_ascii_lowercase().as_str() {
            "parquet" | "pq" => Some(FileFormat::Parquet),
            "csv" | "tsv" | "txt" => Some(FileFormat::Csv(CsvOptions {
                delimiter: if name.eq_ignore_ascii_case("tsv") { b'\t' } else { b',' },
                ..CsvOptions::default()
            })),
            "json" | "jsonl" | "ndjson" => Some(FileFormat::Json),
            "arrow" | "ipc" | "feather" => Some(FileFormat::Arrow),
            "gensort" => Some(FileFormat::Gensort),
            "debezium-json" => Some(FileFormat::DebeziumJson),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv(_) => "csv",
            FileFormat::Json => "json",
            FileFormat::Arrow => "arrow",
            FileFormat::Gensort => "gensort",
            FileFormat::DebeziumJson => "debezium-json",
        }
    }
}

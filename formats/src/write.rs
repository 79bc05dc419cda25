use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::{FileFormat, FormatError, Result};

/// Writes `batches` to `path` atomically: into a hidden staging file beside it, synced, then renamed
/// over `path`. A reader sees either the old file or the whole new one, never a partial write; on error
/// the staging file is removed.
pub fn write_atomic(format: &FileFormat, path: &Path, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let staging = staging_path(path);
    let result = write_file(format, &staging, schema, batches).and_then(|()| {
        std::fs::rename(&staging, path).map_err(|e| FormatError::write(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
}

fn staging_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.staging", std::process::id()))
}

fn write_file(format: &FileFormat, path: &Path, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| FormatError::write(path, e);
    let file = File::create(path).map_err(|e| FormatError::io(path, e))?;
    let file = match format {
        FileFormat::Parquet => {
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| err(&e))?;
            for batch in batches {
                writer.write(batch).map_err(|e| err(&e))?;
            }
            writer.into_inner().map_err(|e| err(&e))?
        }
        FileFormat::Csv(opts) => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(opts.header)
                .with_delimiter(opts.delimiter)
                .with_quote(opts.quote)
                .with_timestamp_format("%Y-%m-%d %H:%M:%S%.f".to_string())
                .build(BufWriter::new(file));
            if batches.is_empty() && opts.header {
                // Arrow's writer emits the header with the first batch; an empty result still has one.
                writer.write(&RecordBatch::new_empty(schema.clone())).map_err(|e| err(&e))?;
            }
            for batch in batches {
                writer.write(batch).map_err(|e| err(&e))?;
            }
            writer.into_inner().into_inner().map_err(|e| err(&e))?
        }
        FileFormat::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(BufWriter::new(file));
            for batch in batches {
                writer.write(batch).map_err(|e| err(&e))?;
            }
            writer.finish().map_err(|e| err(&e))?;
            writer.into_inner().into_inner().map_err(|e| err(&e))?
        }
        FileFormat::Arrow => {
            let mut writer =
                arrow::ipc::writer::FileWriter::try_new(BufWriter::new(file), schema).map_err(|e| err(&e))?;
            for batch in batches {
                writer.write(batch).map_err(|e| err(&e))?;
            }
            writer.finish().map_err(|e| err(&e))?;
            writer.into_inner().map_err(|e| err(&e))?.into_inner().map_err(|e| err(&e))?
        }
    };
    let mut file = file;
    file.flush().map_err(|e| FormatError::io(path, e))?;
    file.sync_all().map_err(|e| FormatError::io(path, e))?;
    Ok(())
}

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::{FileFormat, FormatError, Result};

/// Writes `batches` to `path` atomically (see [`AtomicWriter`]).
pub fn write_atomic(format: &FileFormat, path: &Path, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let mut writer = AtomicWriter::create(format, path, schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()
}

/// Streams batches into a file atomically: they go into a hidden staging file beside `path`, which
/// `finish` syncs and renames over `path`. A reader sees either the old file or the whole new one,
/// never a partial write; a writer dropped before `finish` (an error, a cancelled query) removes its
/// staging file.
pub struct AtomicWriter {
    path: PathBuf,
    staging: PathBuf,
    inner: Option<Inner>,
    schema: SchemaRef,
    header: bool,
    wrote: bool,
}

enum Inner {
    Parquet(parquet::arrow::ArrowWriter<File>),
    Csv(arrow::csv::Writer<BufWriter<File>>),
    Json(arrow::json::LineDelimitedWriter<BufWriter<File>>),
    Arrow(arrow::ipc::writer::FileWriter<BufWriter<File>>),
    Gensort(crate::gensort::GensortWriter<BufWriter<File>>),
}

impl AtomicWriter {
    pub fn create(format: &FileFormat, path: &Path, schema: &SchemaRef) -> Result<AtomicWriter> {
        let staging = staging_path(path);
        let err = |e: &dyn std::fmt::Display| FormatError::write(path, e);
        let file = File::create(&staging).map_err(|e| FormatError::io(&staging, e))?;
        let mut header = false;
        let inner = match format {
            FileFormat::Parquet => Inner::Parquet(parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| err(&e))?),
            FileFormat::Csv(opts) => {
                header = opts.header;
                Inner::Csv(
                    arrow::csv::WriterBuilder::new()
                        .with_header(opts.header)
                        .with_delimiter(opts.delimiter)
                        .with_quote(opts.quote)
                        .with_timestamp_format("%Y-%m-%d %H:%M:%S%.f".to_string())
                        .build(BufWriter::new(file)),
                )
            }
            FileFormat::Json => Inner::Json(arrow::json::LineDelimitedWriter::new(BufWriter::new(file))),
            FileFormat::Arrow => {
                Inner::Arrow(arrow::ipc::writer::FileWriter::try_new(BufWriter::new(file), schema).map_err(|e| err(&e))?)
            }
            FileFormat::Gensort => {
                crate::gensort::check_schema(schema).map_err(|e| err(&e))?;
                Inner::Gensort(crate::gensort::GensortWriter::new(BufWriter::with_capacity(1 << 20, file)))
            }
        };
        let writer = AtomicWriter { path: path.to_path_buf(), staging, inner: Some(inner), schema: schema.clone(), header, wrote: false };
        Ok(writer)
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let path = &self.path;
        let err = |e: &dyn std::fmt::Display| FormatError::write(path, e);
        self.wrote = true;
        match self.inner.as_mut() {
            Some(Inner::Parquet(w)) => w.write(batch).map_err(|e| err(&e)),
            Some(Inner::Csv(w)) => w.write(batch).map_err(|e| err(&e)),
            Some(Inner::Json(w)) => w.write(batch).map_err(|e| err(&e)),
            Some(Inner::Arrow(w)) => w.write(batch).map_err(|e| err(&e)),
            Some(Inner::Gensort(w)) => w.write(batch).map_err(|e| err(&e)),
            None => Err(err(&"written after it was finished")),
        }
    }

    /// Completes the file, syncs it and renames it into place.
    pub fn finish(mut self) -> Result<()> {
        if !self.wrote && self.header {
            // Arrow's CSV writer emits the header with the first batch; an empty result still has one.
            let empty = RecordBatch::new_empty(self.schema.clone());
            self.write(&empty)?;
        }
        let result = self.complete();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.staging);
        }
        result
    }

    fn complete(&mut self) -> Result<()> {
        let path = self.path.clone();
        let err = |e: &dyn std::fmt::Display| FormatError::write(&path, e);
        let file = match self.inner.take() {
            Some(Inner::Parquet(w)) => w.into_inner().map_err(|e| err(&e))?,
            Some(Inner::Csv(w)) => w.into_inner().into_inner().map_err(|e| err(&e))?,
            Some(Inner::Json(mut w)) => {
                w.finish().map_err(|e| err(&e))?;
                w.into_inner().into_inner().map_err(|e| err(&e))?
            }
            Some(Inner::Arrow(mut w)) => {
                w.finish().map_err(|e| err(&e))?;
                w.into_inner().map_err(|e| err(&e))?.into_inner().map_err(|e| err(&e))?
            }
            Some(Inner::Gensort(w)) => w.into_inner().map_err(|e| err(&e))?.into_inner().map_err(|e| err(&e))?,
            None => return Err(err(&"finished twice")),
        };
        let mut file = file;
        file.flush().map_err(|e| FormatError::io(&self.staging, e))?;
        file.sync_all().map_err(|e| FormatError::io(&self.staging, e))?;
        drop(file);
        std::fs::rename(&self.staging, &self.path).map_err(|e| FormatError::write(&self.path, e))?;
        Ok(())
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        if self.inner.is_some() {
            // Not finished: the staging file is discarded, `path` is untouched.
            self.inner = None;
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}

fn staging_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.staging", std::process::id()))
}

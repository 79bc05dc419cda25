use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::{DirectWriter, FileFormat, FormatError, Result};

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
    Parquet(ParquetWriter),
    Csv(arrow::csv::Writer<DirectWriter>),
    Json(arrow::json::LineDelimitedWriter<DirectWriter>),
    /// Changelog batches, written as Debezium envelopes (NULLs spelled out, as Flink writes them).
    DebeziumJson(arrow::json::LineDelimitedWriter<DirectWriter>),
    Arrow(arrow::ipc::writer::FileWriter<DirectWriter>),
    Gensort(crate::gensort::GensortWriter<DirectWriter>),
}

impl AtomicWriter {
    pub fn create(format: &FileFormat, path: &Path, schema: &SchemaRef) -> Result<AtomicWriter> {
        AtomicWriter::create_staged(format, path, &staging_path(path), schema)
    }

    /// Like `create`, staging under a name of the caller's (which must not be a data file's: a name
    /// starting with a dot is hidden from table scans).
    pub fn create_staged(format: &FileFormat, path: &Path, staging: &Path, schema: &SchemaRef) -> Result<AtomicWriter> {
        let staging = staging.to_path_buf();
        let err = |e: &dyn std::fmt::Display| FormatError::write(path, e);
        let file = File::create(&staging).map_err(|e| FormatError::io(&staging, e))?;
        let mut header = false;
        let inner = match format {
            FileFormat::Parquet => Inner::Parquet(ParquetWriter::new(file, schema).map_err(|e| err(&e))?),
            FileFormat::Csv(opts) => {
                header = opts.header;
                Inner::Csv(
                    arrow::csv::WriterBuilder::new()
                        .with_header(opts.header)
                        .with_delimiter(opts.delimiter)
                        .with_quote(opts.quote)
                        .with_timestamp_format("%Y-%m-%d %H:%M:%S%.f".to_string())
                        .build(DirectWriter::new(file)),
                )
            }
            FileFormat::Json => Inner::Json(arrow::json::LineDelimitedWriter::new(DirectWriter::new(file))),
            FileFormat::DebeziumJson => Inner::DebeziumJson(
                arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow::json::writer::LineDelimited>(DirectWriter::new(file)),
            ),
            FileFormat::Arrow => {
                Inner::Arrow(arrow::ipc::writer::FileWriter::try_new(DirectWriter::new(file), schema).map_err(|e| err(&e))?)
            }
            FileFormat::Gensort => {
                crate::gensort::check_schema(schema).map_err(|e| err(&e))?;
                Inner::Gensort(crate::gensort::GensortWriter::new(DirectWriter::new(file)))
            }
        };
        let writer = AtomicWriter { path: path.to_path_buf(), staging, inner: Some(inner), schema: schema.clone(), header, wrote: false };
        Ok(writer)
    }

    /// Caps the memory the writer holds for rows on their way into the file at about `bytes`: a Parquet
    /// writer holds the row group it gathers and the ones its encoder threads encode, each as Arrow
    /// rows and as encoded pages, so under a small memory limit it writes smaller row groups (at most
    /// the usual 32 MB, at least 1 MB). Other formats hold a chunk or two and need no cap.
    pub fn with_buffer_limit(mut self, bytes: usize) -> AtomicWriter {
        if let Some(Inner::Parquet(w)) = &mut self.inner {
            w.row_group_bytes = (bytes / ((ENCODERS + 1) * 2)).clamp(1 << 20, ROW_GROUP_BYTES);
        }
        self
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let path = &self.path;
        let err = |e: &dyn std::fmt::Display| FormatError::write(path, e);
        self.wrote = true;
        match self.inner.as_mut() {
            Some(Inner::Parquet(w)) => w.write(batch).map_err(|e| err(&e)),
            Some(Inner::Csv(w)) => w.write(batch).map_err(|e| err(&e)),
            Some(Inner::Json(w)) => w.write(batch).map_err(|e| err(&e)),
            Some(Inner::DebeziumJson(w)) => w.write(&crate::debezium::encode(batch).map_err(|e| err(&e))?).map_err(|e| err(&e)),
            Some(Inner::Arrow(w)) => w.write(batch).map_err(|e| err(&e)),
            Some(Inner::Gensort(w)) => w.write(batch).map_err(|e| err(&e)),
            None => Err(err(&"written after it was finished")),
        }
    }

    /// Completes the file, syncs it and renames it into place.
    pub fn finish(self) -> Result<()> {
        let (staging, path) = self.prepare()?;
        commit_staged(&staging, &path)
    }

    /// Completes and syncs the file under its staging name, not renaming it yet: the first phase of a
    /// two-phase commit, which `commit_staged(staging, path)` completes.
    pub fn prepare(mut self) -> Result<(PathBuf, PathBuf)> {
        if !self.wrote && self.header {
            // Arrow's CSV writer emits the header with the first batch; an empty result still has one.
            let empty = RecordBatch::new_empty(self.schema.clone());
            self.write(&empty)?;
        }
        let result = self.complete();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.staging);
        }
        result.map(|()| (self.staging.clone(), self.path.clone()))
    }

    fn complete(&mut self) -> Result<()> {
        let path = self.path.clone();
        let err = |e: &dyn std::fmt::Display| FormatError::write(&path, e);
        let file = match self.inner.take() {
            Some(Inner::Parquet(w)) => w.finish().map_err(|e| err(&e))?,
            Some(Inner::Csv(w)) => w.into_inner().finish().map_err(|e| err(&e))?,
            Some(Inner::Json(mut w)) | Some(Inner::DebeziumJson(mut w)) => {
                w.finish().map_err(|e| err(&e))?;
                w.into_inner().finish().map_err(|e| err(&e))?
            }
            Some(Inner::Arrow(mut w)) => {
                w.finish().map_err(|e| err(&e))?;
                w.into_inner().map_err(|e| err(&e))?.finish().map_err(|e| err(&e))?
            }
            Some(Inner::Gensort(w)) => w.into_inner().map_err(|e| err(&e))?.finish().map_err(|e| err(&e))?,
            None => return Err(err(&"finished twice")),
        };
        let mut file = file;
        file.flush().map_err(|e| FormatError::io(&self.staging, e))?;
        file.sync_all().map_err(|e| FormatError::io(&self.staging, e))?;
        Ok(())
    }
}

/// Renames a prepared file into place and syncs its directory, so the rename survives a crash.
pub fn commit_staged(staging: &Path, path: &Path) -> Result<()> {
    std::fs::rename(staging, path).map_err(|e| FormatError::write(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
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

/// Rows (or bytes, whichever comes first) per Parquet row group.
const ROW_GROUP_ROWS: usize = 256 << 10;
const ROW_GROUP_BYTES: usize = 32 << 20;
/// Threads encoding row groups beside the one that feeds them.
const ENCODERS: usize = 2;

type Chunks = parquet::errors::Result<Vec<parquet::arrow::arrow_writer::ArrowColumnChunk>>;
type EncodeJob = (Vec<parquet::arrow::arrow_writer::ArrowColumnWriter>, Vec<RecordBatch>, std::sync::mpsc::Sender<Chunks>);

/// A Parquet writer that encodes (and compresses) row groups on threads of its own while the next
/// row group is gathered, so writing a big result is not one core's work; row groups go into the
/// file in order. The encoder threads live as long as the writer, so their allocations are reused
/// from one row group to the next.
struct ParquetWriter {
    writer: parquet::file::writer::SerializedFileWriter<DirectWriter>,
    factory: parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    pending_bytes: usize,
    /// Bytes of Arrow rows that make a row group (`ROW_GROUP_BYTES` unless capped).
    row_group_bytes: usize,
    row_groups: usize,
    encoders: Vec<std::sync::mpsc::Sender<EncodeJob>>,
    /// Row groups being encoded, oldest first.
    encoding: std::collections::VecDeque<std::sync::mpsc::Receiver<Chunks>>,
}

impl ParquetWriter {
    fn new(file: File, schema: &SchemaRef) -> parquet::errors::Result<ParquetWriter> {
        // Snappy, as DuckDB and Spark write by default: cheap to decode, a fair size on disk.
        let mut props =
            parquet::file::properties::WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build();
        // Readers (ours, pyarrow) take the exact Arrow types from the embedded schema.
        parquet::arrow::add_encoded_arrow_schema_to_metadata(schema, &mut props);
        let props = std::sync::Arc::new(props);
        let parquet_schema = parquet::arrow::ArrowSchemaConverter::new().with_coerce_types(props.coerce_types()).convert(schema)?;
        let writer = parquet::file::writer::SerializedFileWriter::new(DirectWriter::new(file), parquet_schema.root_schema_ptr(), props)?;
        let factory = parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory::new(&writer, schema.clone());
        Ok(ParquetWriter {
            writer,
            factory,
            schema: schema.clone(),
            pending: Vec::new(),
            pending_rows: 0,
            pending_bytes: 0,
            row_group_bytes: ROW_GROUP_BYTES,
            row_groups: 0,
            encoders: Vec::new(),
            encoding: Default::default(),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> parquet::errors::Result<()> {
        let mut batch = batch.clone();
        while batch.num_rows() > 0 {
            let take = batch.num_rows().min(ROW_GROUP_ROWS - self.pending_rows);
            let part = batch.slice(0, take);
            batch = batch.slice(take, batch.num_rows() - take);
            self.pending_rows += part.num_rows();
            self.pending_bytes += part.get_array_memory_size();
            self.pending.push(part);
            if self.pending_rows >= ROW_GROUP_ROWS || self.pending_bytes >= self.row_group_bytes {
                self.encode_pending()?;
            }
        }
        Ok(())
    }

    /// The sender of encoder thread `i`, started on first use.
    fn encoder(&mut self, i: usize) -> parquet::errors::Result<std::sync::mpsc::Sender<EncodeJob>> {
        while self.encoders.len() <= i {
            let (send, jobs) = std::sync::mpsc::channel::<EncodeJob>();
            let schema = self.schema.clone();
            std::thread::Builder::new()
                .name("riffle-parquet-encoder".into())
                .spawn(move || {
                    for (writers, batches, done) in jobs {
                        let _ = done.send(encode_row_group(&schema, writers, &batches));
                    }
                })
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            self.encoders.push(send);
        }
        Ok(self.encoders[i].clone())
    }

    /// Starts encoding the gathered rows as the next row group.
    fn encode_pending(&mut self) -> parquet::errors::Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        while self.encoding.len() >= ENCODERS {
            self.append_oldest()?;
        }
        let writers = self.factory.create_column_writers(self.row_groups)?;
        let encoder = self.encoder(self.row_groups % ENCODERS)?;
        self.row_groups += 1;
        let batches = std::mem::take(&mut self.pending);
        (self.pending_rows, self.pending_bytes) = (0, 0);
        let (done, result) = std::sync::mpsc::channel();
        encoder
            .send((writers, batches, done))
            .map_err(|_| parquet::errors::ParquetError::General("a Parquet encoder thread stopped".into()))?;
        self.encoding.push_back(result);
        Ok(())
    }

    /// Waits for the oldest row group being encoded and appends it to the file.
    fn append_oldest(&mut self) -> parquet::errors::Result<()> {
        let Some(result) = self.encoding.pop_front() else { return Ok(()) };
        let chunks = result.recv().map_err(|_| parquet::errors::ParquetError::General("a Parquet encoder thread stopped".into()))??;
        let mut row_group = self.writer.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        Ok(())
    }

    fn finish(mut self) -> parquet::errors::Result<File> {
        self.encode_pending()?;
        while !self.encoding.is_empty() {
            self.append_oldest()?;
        }
        self.writer.into_inner()?.finish().map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}

fn encode_row_group(schema: &SchemaRef, mut writers: Vec<parquet::arrow::arrow_writer::ArrowColumnWriter>, batches: &[RecordBatch]) -> Chunks {
    for batch in batches {
        let mut w = writers.iter_mut();
        for (array, field) in batch.columns().iter().zip(schema.fields()) {
            for leaf in parquet::arrow::arrow_writer::compute_leaves(field, array)? {
                let Some(writer) = w.next() else {
                    return Err(parquet::errors::ParquetError::General("more leaf columns than writers".into()));
                };
                writer.write(&leaf)?;
            }
        }
    }
    writers.into_iter().map(|w| w.close()).collect()
}

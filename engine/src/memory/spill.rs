//! The one place that writes and reads spill files: Arrow IPC streams, compressed, in a directory of
//! the query's own under the spill dir. Files go when they are dropped, the directory when the query
//! ends (success or error), and on Ctrl-C the CLI removes every live directory
//! ([`remove_live_spill_dirs`]).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow::ipc::CompressionType;

use crate::error::{Result, RiffleError};

const WRITE_BUFFER: usize = 1 << 20;

/// Spill directories of running queries, for the Ctrl-C handler.
#[derive(Default)]
struct LiveDirs {
    dirs: Vec<PathBuf>,
    /// Set once the process is being interrupted: no new spill directory may appear after that.
    closed: bool,
}

fn live_dirs() -> MutexGuard<'static, LiveDirs> {
    static DIRS: OnceLock<Mutex<LiveDirs>> = OnceLock::new();
    DIRS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the spill directory of every query still running (call it when the process is being
/// interrupted, where destructors will not run). Workers keep running meanwhile, so each directory is
/// first renamed away: a spill file a worker opens after that fails (its directory is gone) instead of
/// landing in a directory being emptied, which `remove_dir_all` would then fail to remove.
pub fn remove_live_spill_dirs() {
    let mut live = live_dirs();
    live.closed = true;
    for d in std::mem::take(&mut live.dirs) {
        let mut doomed = d.clone().into_os_string();
        doomed.push(".removing");
        let doomed = PathBuf::from(doomed);
        let gone = if std::fs::rename(&d, &doomed).is_ok() { doomed } else { d };
        let _ = std::fs::remove_dir_all(gone);
    }
}

/// A query's spill files.
#[derive(Debug)]
pub struct SpillManager {
    base: PathBuf,
    dir: Mutex<Option<tempfile::TempDir>>,
    compression: Option<CompressionType>,
    next_file: AtomicU64,
    bytes_spilled: AtomicU64,
    files_spilled: AtomicU64,
}

impl SpillManager {
    /// Spill files will go under `base` (the system temp dir if `None`), compressed with `compression`.
    pub fn new(base: Option<PathBuf>, compression: Option<CompressionType>) -> SpillManager {
        SpillManager {
            base: base.unwrap_or_else(std::env::temp_dir),
            dir: Mutex::new(None),
            compression,
            next_file: AtomicU64::new(0),
            bytes_spilled: AtomicU64::new(0),
            files_spilled: AtomicU64::new(0),
        }
    }

    /// Compressed bytes written to spill files so far.
    pub fn bytes_spilled(&self) -> u64 {
        self.bytes_spilled.load(Ordering::Relaxed)
    }

    pub fn files_spilled(&self) -> u64 {
        self.files_spilled.load(Ordering::Relaxed)
    }

    /// The query's spill directory, made on first use.
    fn dir(&self) -> Result<PathBuf> {
        let mut dir = self.dir.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dir.as_ref() {
            return Ok(d.path().to_path_buf());
        }
        let mut live = live_dirs();
        if live.closed {
            return Err(RiffleError::exec("the process is being interrupted: no new spill files"));
        }
        let made = tempfile::Builder::new().prefix("riffle-spill-").tempdir_in(&self.base).map_err(|e| {
            RiffleError::exec(format!(
                "cannot create a spill directory in '{}': {e}; choose a writable directory with --spill-dir",
                self.base.display()
            ))
        })?;
        let path = made.path().to_path_buf();
        live.dirs.push(path.clone());
        *dir = Some(made);
        Ok(path)
    }

    /// Starts a new spill file for batches of `schema`.
    pub fn writer(self: &Arc<Self>, schema: &SchemaRef) -> Result<SpillWriter> {
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let path = self.dir()?.join(format!("run-{n}.arrows"));
        let file = File::create(&path).map_err(|e| write_error(&path, &e))?;
        let options = IpcWriteOptions::default().try_with_compression(self.compression)?;
        let writer = StreamWriter::try_new_with_options(BufWriter::with_capacity(WRITE_BUFFER, file), schema, options)
            .map_err(|e| write_error(&path, &e))?;
        Ok(SpillWriter { manager: self.clone(), writer: Some(writer), file: Some(SpillFile { path, rows: 0, bytes: 0 }) })
    }
}

impl Drop for SpillManager {
    fn drop(&mut self) {
        let dir = self.dir.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(d) = dir {
            live_dirs().dirs.retain(|p| p != d.path());
            // TempDir removes the directory and whatever is left in it.
        }
    }
}

fn write_error(path: &Path, e: &dyn std::fmt::Display) -> RiffleError {
    RiffleError::exec(format!(
        "cannot write spill file '{}': {e}; free disk space there or choose another directory with --spill-dir",
        path.display()
    ))
}

/// A spill file being written.
pub struct SpillWriter {
    manager: Arc<SpillManager>,
    writer: Option<StreamWriter<BufWriter<File>>>,
    file: Option<SpillFile>,
}

impl SpillWriter {
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let (Some(w), Some(f)) = (self.writer.as_mut(), self.file.as_mut()) else {
            return Err(RiffleError::exec("spill file written after it was finished"));
        };
        w.write(batch).map_err(|e| write_error(&f.path, &e))?;
        f.rows += batch.num_rows();
        Ok(())
    }

    /// Completes the file; it can then be read back any number of times.
    pub fn finish(mut self) -> Result<SpillFile> {
        let (Some(mut w), Some(mut f)) = (self.writer.take(), self.file.take()) else {
            return Err(RiffleError::exec("spill file finished twice"));
        };
        w.finish().map_err(|e| write_error(&f.path, &e))?;
        drop(w.into_inner().map_err(|e| write_error(&f.path, &e))?);
        f.bytes = std::fs::metadata(&f.path).map_err(|e| write_error(&f.path, &e))?.len();
        self.manager.bytes_spilled.fetch_add(f.bytes, Ordering::Relaxed);
        self.manager.files_spilled.fetch_add(1, Ordering::Relaxed);
        Ok(f)
    }
}

/// A complete spill file; deleted when dropped.
#[derive(Debug)]
pub struct SpillFile {
    path: PathBuf,
    rows: usize,
    bytes: u64,
}

impl SpillFile {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the batches back, in the order they were written, `read_buffer` bytes at a time.
    pub fn reader(&self, read_buffer: usize) -> Result<SpillReader> {
        let read_error = |e: &dyn std::fmt::Display| {
            RiffleError::exec(format!("cannot read spill file '{}': {e} (was the spill directory removed?)", self.path.display()))
        };
        let file = File::open(&self.path).map_err(|e| read_error(&e))?;
        let reader = StreamReader::try_new(BufReader::with_capacity(read_buffer.max(4096), file), None).map_err(|e| read_error(&e))?;
        Ok(SpillReader { reader, path: self.path.clone() })
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The batches of one spill file.
pub struct SpillReader {
    reader: StreamReader<BufReader<File>>,
    path: PathBuf,
}

impl SpillReader {
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        match self.reader.next() {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(RiffleError::exec(format!("cannot read spill file '{}': {e}", self.path.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn spilled_batches_read_back_and_files_go_away() {
        let base = tempfile::tempdir().unwrap();
        let manager = Arc::new(SpillManager::new(Some(base.path().to_path_buf()), Some(CompressionType::LZ4_FRAME)));
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from_iter_values(0..1000)) as _),
            ("b", Arc::new(StringArray::from_iter_values((0..1000).map(|i| format!("row {i}")))) as _),
        ])
        .unwrap();
        let mut w = manager.writer(&batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch.slice(10, 5)).unwrap();
        let file = w.finish().unwrap();
        assert_eq!(file.rows(), 1005);
        assert!(manager.bytes_spilled() > 0);
        let mut r = file.reader(1 << 16).unwrap();
        assert_eq!(r.next_batch().unwrap().unwrap(), batch);
        assert_eq!(r.next_batch().unwrap().unwrap(), batch.slice(10, 5));
        assert!(r.next_batch().unwrap().is_none());
        let path = file.path().to_path_buf();
        drop(file);
        assert!(!path.exists());
        drop(manager);
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0, "the spill directory is removed");
    }
}

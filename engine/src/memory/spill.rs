//! The one place that writes and reads spill files, in a directory of the query's own under the spill
//! dir. A spill file is a sequence of frames, one per batch: the batch's Arrow IPC stream messages
//! (the schema before the first batch), compressed as one block, after an 8-byte header (the frame's
//! size before and after compression). Reading a frame back is one read and one decompression into a
//! buffer the batch's arrays then point into: no zero-filled buffers (arrow's own IPC reader zeroes
//! every message body, and its lz4 frame decoder every buffer, before filling them: as much time as
//! lz4 itself in a merge of hundreds of runs), no copies. Files go when they are dropped, the directory when the query
//! ends (success or error), and on Ctrl-C the CLI removes every live directory
//! ([`remove_live_spill_dirs`]). A process killed outright (SIGKILL, a crash) leaves its directory
//! behind: directories are named `riffle-spill-<pid>-…`, and the first query of a process that spills
//! under the same base removes those of processes that are gone (`remove_stale_dirs`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamEncoder;
use arrow::ipc::CompressionType;

use riffle_formats::{DirectWriter, PrefetchReader};

use crate::error::{Result, RiffleError};

/// Bytes a spill file gathers per write: a big file goes past the page cache (see
/// `riffle_formats::DirectWriter`) and is read back frame by frame the same way.
const WRITE_CHUNK: usize = 1 << 20;

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

/// Spill directories are `<DIR_PREFIX><pid>-<random>`.
const DIR_PREFIX: &str = "riffle-spill-";

/// A directory left by a process that is gone is removed once it has not changed for this long (a
/// process of another PID namespace sharing the directory is not seen in /proc: a live query's
/// directory changes as it spills).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes, once per process and base directory, the spill directories under `base` left by
/// processes that are gone (killed before they could remove them).
fn remove_stale_dirs(base: &Path) {
    static SWEPT: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    {
        let mut swept = SWEPT.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
        if swept.iter().any(|b| b == base) {
            return;
        }
        swept.push(base.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)).and_then(|rest| rest.split('-').next()?.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let unchanged = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if unchanged.is_some_and(|age| age >= STALE_AFTER) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether process `pid` runs (where /proc cannot tell, it is taken to run).
fn process_alive(pid: u32) -> bool {
    !cfg!(target_os = "linux") || Path::new(&format!("/proc/{pid}")).exists()
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
        remove_stale_dirs(&self.base);
        // A spill dir that does not exist yet is made (as DuckDB makes its temp_directory); one that
        // cannot be made fails below, saying where.
        let _ = std::fs::create_dir_all(&self.base);
        let made = tempfile::Builder::new().prefix(&format!("{DIR_PREFIX}{}-", std::process::id())).tempdir_in(&self.base).map_err(|e| {
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
        let codec = Codec::of(self.compression);
        Ok(SpillWriter {
            manager: self.clone(),
            out: Some(DirectWriter::with_chunk(file, WRITE_CHUNK)),
            encoder: StreamEncoder::try_new(schema)?,
            messages: Vec::new(),
            frame: Vec::new(),
            file: Some(SpillFile { path, codec, rows: 0, bytes: 0, max_frame: 0, direct: false, frame_ends: Vec::new(), _dir: self.clone() }),
        })
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

/// How a spill file's frames are compressed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Codec {
    None,
    Lz4,
    Zstd,
}

impl Codec {
    fn of(compression: Option<CompressionType>) -> Codec {
        match compression {
            None => Codec::None,
            Some(CompressionType::ZSTD) => Codec::Zstd,
            Some(_) => Codec::Lz4,
        }
    }
}

/// Bytes before each frame: its size before and after compression (little-endian u32s).
const FRAME_HEADER: usize = 8;

/// A spill file being written.
pub struct SpillWriter {
    manager: Arc<SpillManager>,
    out: Option<DirectWriter>,
    encoder: StreamEncoder,
    /// One batch's IPC messages, gathered for compression (reused).
    messages: Vec<u8>,
    /// The compressed frame (reused).
    frame: Vec<u8>,
    file: Option<SpillFile>,
}

impl SpillWriter {
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let (Some(out), Some(f)) = (self.out.as_mut(), self.file.as_mut()) else {
            return Err(RiffleError::exec("spill file written after it was finished"));
        };
        self.messages.clear();
        for buffer in self.encoder.encode(batch)? {
            self.messages.extend_from_slice(&buffer);
        }
        let stored: &[u8] = match f.codec {
            Codec::None => &self.messages,
            Codec::Lz4 => {
                self.frame.resize(lz4_flex::block::get_maximum_output_size(self.messages.len()), 0);
                let n = lz4_flex::block::compress_into(&self.messages, &mut self.frame)
                    .map_err(|e| write_error(&f.path, &format!("lz4: {e}")))?;
                &self.frame[..n]
            }
            Codec::Zstd => {
                self.frame = zstd::bulk::compress(&self.messages, 1).map_err(|e| write_error(&f.path, &e))?;
                &self.frame
            }
        };
        let too_big = || write_error(&f.path, &"a batch of more than 4 GiB cannot be spilled; lower the batch size");
        let raw = u32::try_from(self.messages.len()).map_err(|_| too_big())?;
        let size = u32::try_from(stored.len()).map_err(|_| too_big())?;
        let mut header = [0u8; FRAME_HEADER];
        header[..4].copy_from_slice(&raw.to_le_bytes());
        header[4..].copy_from_slice(&size.to_le_bytes());
        out.write_all(&header).and_then(|_| out.write_all(stored)).map_err(|e| write_error(&f.path, &e))?;
        f.rows += batch.num_rows();
        f.max_frame = f.max_frame.max(FRAME_HEADER + stored.len());
        f.frame_ends.push(out.position());
        Ok(())
    }

    /// Completes the file; it can then be read back any number of times.
    pub fn finish(mut self) -> Result<SpillFile> {
        let (Some(out), Some(mut f)) = (self.out.take(), self.file.take()) else {
            return Err(RiffleError::exec("spill file finished twice"));
        };
        f.direct = out.went_direct();
        drop(out.finish().map_err(|e| write_error(&f.path, &e))?);
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
    codec: Codec,
    rows: usize,
    bytes: u64,
    /// The largest frame as stored: what reading it back buffers beside the batch.
    max_frame: usize,
    /// Written past the page cache (a big file), so read past it too.
    direct: bool,
    /// Where each frame ends in the file: the reader asks for the next frame while the caller
    /// works on this one.
    frame_ends: Vec<u64>,
    /// Keeps the query's spill directory while the file lives: a checkpoint may still be copying
    /// it when the query's operators are gone.
    _dir: Arc<SpillManager>,
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

    /// Memory a reader holds beside the batch it returns: the biggest frame as stored (its next
    /// frame is read into the same buffer once it is done with this one).
    pub fn read_buffer(&self) -> usize {
        PrefetchReader::memory(self.max_frame, self.direct)
    }

    /// Reads the batches back, in the order they were written.
    pub fn reader(&self) -> Result<SpillReader> {
        let file = File::open(&self.path).map_err(|e| {
            RiffleError::exec(format!("cannot read spill file '{}': {e} (was the spill directory removed?)", self.path.display()))
        })?;
        let starts = std::iter::once(0).chain(self.frame_ends.iter().copied());
        let frames = starts.zip(self.frame_ends.iter().copied()).map(|(a, b)| a..b).collect();
        let input = PrefetchReader::new(file, frames, self.direct).map_err(|e| RiffleError::exec(format!("cannot read spill file '{}': {e}", self.path.display())))?;
        Ok(SpillReader { input, codec: self.codec, decoder: StreamDecoder::new(), path: self.path.clone() })
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A frame's IPC messages: its header checked, its bytes decompressed.
fn decode_frame(codec: Codec, frame: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let Some((header, stored)) = frame.split_first_chunk::<FRAME_HEADER>() else { return Err("a frame without its header".into()) };
    let raw = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if size != stored.len() {
        return Err(format!("a frame's header says {size} bytes, the file holds {}", stored.len()));
    }
    let messages = match codec {
        Codec::None => stored.to_vec(),
        // Decompresses into fresh, uninitialised memory that becomes the batch's buffers.
        Codec::Lz4 => lz4_flex::block::decompress(stored, raw).map_err(|e| format!("lz4: {e}"))?,
        Codec::Zstd => zstd::bulk::decompress(stored, raw).map_err(|e| e.to_string())?,
    };
    if messages.len() != raw {
        return Err(format!("a frame decompressed to {} bytes, not {raw}", messages.len()));
    }
    Ok(messages)
}

/// The batches of one spill file.
pub struct SpillReader {
    input: PrefetchReader,
    codec: Codec,
    decoder: StreamDecoder,
    path: PathBuf,
}

impl SpillReader {
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let error = |e: &dyn std::fmt::Display| RiffleError::exec(format!("cannot read spill file '{}': {e}", self.path.display()));
        let codec = self.codec;
        let messages = match self.input.with_next(|frame| decode_frame(codec, frame)) {
            Ok(None) => return Ok(None),
            Ok(Some(decoded)) => decoded.map_err(|e| error(&e))?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(error(&"the file ends inside a frame")),
            Err(e) => return Err(error(&e)),
        };
        let mut messages = Buffer::from_vec(messages);
        while !messages.is_empty() {
            if let Some(batch) = self.decoder.decode(&mut messages).map_err(|e| error(&e))? {
                if !messages.is_empty() {
                    return Err(error(&"a frame holds bytes after its batch"));
                }
                return Ok(Some(batch));
            }
        }
        // A batch without body bytes (no rows, or no columns) ends the frame with the decoder still
        // waiting for input: a few more bytes make it decode the empty body. They are not consumed.
        let mut nudge = Buffer::from_vec(vec![0xFFu8; 4]);
        match self.decoder.decode(&mut nudge).map_err(|e| error(&e))? {
            Some(batch) if nudge.len() == 4 => Ok(Some(batch)),
            _ => Err(error(&"a frame holds no batch")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn directories_of_processes_that_are_gone_are_removed_by_the_next_to_spill() {
        let base = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let make = |name: String, old: bool| {
            let dir = base.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("run-0.arrows"), b"left").unwrap();
            if old {
                File::open(&dir).unwrap().set_modified(hour_ago).unwrap();
            }
            dir
        };
        let stale = make(format!("{DIR_PREFIX}{gone}-abc"), true);
        let recent = make(format!("{DIR_PREFIX}{gone}-def"), false);
        let mine = make(format!("{DIR_PREFIX}{}-ghi", std::process::id()), true);
        let other = make("something-else".into(), true);
        let manager = Arc::new(SpillManager::new(Some(base.path().to_path_buf()), None));
        let batch = RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from_iter_values(0..10)) as _)]).unwrap();
        let mut w = manager.writer(&batch.schema()).unwrap();
        w.write(&batch).unwrap();
        assert!(!stale.exists(), "the directory of a process that is gone");
        assert!(recent.exists() && mine.exists() && other.exists());
        let own = std::fs::read_dir(base.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{DIR_PREFIX}{}-", std::process::id()))).count();
        assert_eq!(own, 2, "the query's own directory is named by its process");
    }

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
        w.write(&batch.slice(0, 0)).unwrap();
        let no_columns = RecordBatch::try_new_with_options(
            Arc::new(arrow::datatypes::Schema::empty()),
            vec![],
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(7)),
        )
        .unwrap();
        let mut bare = manager.writer(&no_columns.schema()).unwrap();
        bare.write(&no_columns).unwrap();
        bare.write(&no_columns).unwrap();
        let bare = bare.finish().unwrap();
        let mut r = bare.reader().unwrap();
        assert_eq!(r.next_batch().unwrap().unwrap().num_rows(), 7);
        assert_eq!(r.next_batch().unwrap().unwrap().num_rows(), 7);
        assert!(r.next_batch().unwrap().is_none());
        let file = w.finish().unwrap();
        assert_eq!(file.rows(), 1005);
        drop(bare);
        assert!(manager.bytes_spilled() > 0);
        let mut r = file.reader().unwrap();
        assert_eq!(r.next_batch().unwrap().unwrap(), batch);
        assert_eq!(r.next_batch().unwrap().unwrap(), batch.slice(10, 5));
        assert_eq!(r.next_batch().unwrap().unwrap().num_rows(), 0);
        assert!(r.next_batch().unwrap().is_none());
        let path = file.path().to_path_buf();
        drop(file);
        assert!(!path.exists());
        drop(manager);
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0, "the spill directory is removed");
    }

    #[test]
    fn a_big_spill_file_goes_past_the_page_cache_and_reads_back_frame_by_frame() {
        let base = tempfile::tempdir().unwrap();
        let manager = Arc::new(SpillManager::new(Some(base.path().to_path_buf()), None));
        let batches: Vec<RecordBatch> = (0..40)
            .map(|k| {
                let n = 1000 + 997 * k;
                RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from_iter_values(k as i64..(k + n) as i64)) as _)]).unwrap()
            })
            .collect();
        let mut w = manager.writer(&batches[0].schema()).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        let file = w.finish().unwrap();
        // Over 3 MB uncompressed: past one write chunk, so direct where the file system allows it.
        assert!(file.bytes() > 3 << 20, "{}", file.bytes());
        let mut r = file.reader().unwrap();
        for b in &batches {
            assert_eq!(&r.next_batch().unwrap().unwrap(), b);
        }
        assert!(r.next_batch().unwrap().is_none());
        // Dropped halfway, with the next frame on its way: no hang, and the file goes.
        let mut r = file.reader().unwrap();
        r.next_batch().unwrap();
        drop(r);
        let path = file.path().to_path_buf();
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn every_codec_reads_back_and_a_truncated_file_is_a_clear_error() {
        let base = tempfile::tempdir().unwrap();
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from_iter_values(0..5000)) as _),
            ("b", Arc::new(StringArray::from_iter_values((0..5000).map(|i| format!("value {}", i % 17)))) as _),
        ])
        .unwrap();
        for codec in [None, Some(CompressionType::LZ4_FRAME), Some(CompressionType::ZSTD)] {
            let manager = Arc::new(SpillManager::new(Some(base.path().to_path_buf()), codec));
            let mut w = manager.writer(&batch.schema()).unwrap();
            for _ in 0..3 {
                w.write(&batch).unwrap();
            }
            let file = w.finish().unwrap();
            let mut r = file.reader().unwrap();
            for _ in 0..3 {
                let back = r.next_batch().unwrap().unwrap();
                assert_eq!(back, batch, "{codec:?}");
                // The columns share the frame's buffer: each counts its own bytes only.
                assert_eq!(super::super::batch_bytes(&back), super::super::batch_bytes(&batch), "{codec:?}");
            }
            assert!(r.next_batch().unwrap().is_none());
            let len = std::fs::metadata(file.path()).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(file.path()).unwrap().set_len(len - 3).unwrap();
            let mut r = file.reader().unwrap();
            r.next_batch().unwrap();
            r.next_batch().unwrap();
            let err = r.next_batch().unwrap_err().to_string();
            assert!(err.contains("cannot read spill file") && err.contains(&file.path().display().to_string()), "{err}");
        }
    }
}

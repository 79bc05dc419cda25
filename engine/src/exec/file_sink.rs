//! A filesystem table as a query's sink (`INSERT INTO t SELECT …`), committed in two phases.
//!
//! Each partition writes its rows of a checkpoint epoch to a hidden file of its own
//! (`.part-<run>-<partition>-<epoch>.<ext>.pending`, unseen by table scans). At the epoch's barrier
//! the file is completed and synced (prepared); once the checkpoint is complete it is renamed to
//! `part-<run>-<partition>-<epoch>.<ext>` (committed). At the end of input the last files are
//! prepared and everything is committed once the query succeeded. Opened on a job's restart, the sink
//! commits the prepared files of epochs the last checkpoint covers and deletes those of later ones.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use riffle_formats::{AtomicWriter, FileFormat};

use super::checkpoint::{Coordinator, EpochTracker};
use super::Sink;
use crate::error::{Result, RiffleError};
use crate::message::Message;

pub struct FileSinkShared {
    dir: PathBuf,
    format: FileFormat,
    schema: SchemaRef,
    /// Tells this query's files from other queries' in the same directory.
    run: String,
    coordinator: Option<(Arc<Coordinator>, usize)>,
    /// What each partition's writer may hold of rows on their way into its file.
    writer_buffer: usize,
    state: Mutex<SinkState>,
}

struct SinkState {
    partitions: usize,
    epochs: EpochTracker,
    /// Files completed but not visible yet: (epoch, staging path, final path).
    prepared: Vec<(u64, PathBuf, PathBuf)>,
    rows: u64,
}

/// `part-…-<epoch>.<ext>` from its pending name, and the epoch.
fn pending_target(name: &str) -> Option<(String, u64)> {
    let visible = name.strip_prefix('.')?.strip_suffix(".pending")?;
    let stem = visible.split('.').next()?;
    let epoch = stem.rsplit('-').next()?.parse().ok()?;
    visible.starts_with("part-").then(|| (visible.to_string(), epoch))
}

impl FileSinkShared {
    /// A sink writing into `dir`; with a checkpoint coordinator, files left by an earlier run of the
    /// job are committed or deleted according to its last complete checkpoint.
    /// A sink into the files of `dir`; its partitions' writers hold about `writer_buffer` bytes each.
    pub fn new(
        dir: &Path,
        format: FileFormat,
        schema: SchemaRef,
        coordinator: Option<Arc<Coordinator>>,
        writer_buffer: usize,
    ) -> Result<Arc<FileSinkShared>> {
        std::fs::create_dir_all(dir).map_err(|e| RiffleError::exec(format!("cannot create '{}': {e}", dir.display())))?;
        let restored = coordinator.as_ref().map_or(0, |c| c.restored);
        if let Some(c) = &coordinator {
            let keep_to = if c.finished { u64::MAX } else { c.restored };
            recover(dir, keep_to)?;
        }
        // Unique per sink: two INSERTs of one process in the same second must not write the same names.
        static SINKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let sink = SINKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = format!("{}{:x}-{sink}", chrono::Utc::now().format("%Y%m%d%H%M%S"), std::process::id());
        let component = match &coordinator {
            Some(c) => Some((c.clone(), c.register()?)),
            None => None,
        };
        let state = SinkState { partitions: 0, epochs: EpochTracker::new(0, restored), prepared: vec![], rows: 0 };
        let shared = Arc::new(FileSinkShared { dir: dir.to_path_buf(), format, schema, run, coordinator: component, writer_buffer, state: Mutex::new(state) });
        if let Some((c, _)) = &shared.coordinator {
            c.commit_to(&shared, FileSinkShared::commit)?;
        }
        Ok(shared)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, SinkState>> {
        self.state.lock().map_err(|_| RiffleError::exec("file sink lock poisoned"))
    }

    /// The sink of root partition `p` (every partition is made before any row flows).
    pub fn partition(self: &Arc<Self>, p: usize) -> Result<Box<dyn Sink>> {
        let mut st = self.lock()?;
        st.partitions = st.partitions.max(p + 1);
        let restored = self.coordinator.as_ref().map_or(0, |(c, _)| c.restored);
        st.epochs = EpochTracker::new(st.partitions, restored);
        Ok(Box::new(FileSink { shared: self.clone(), partition: p, epoch: restored + 1, writer: None }))
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.lock().map_or(0, |st| st.rows)
    }

    /// Makes the prepared files of epochs up to `epoch` visible.
    pub fn commit(&self, epoch: u64) -> Result<()> {
        let mut st = self.lock()?;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.prepared).into_iter().partition(|(e, _, _)| *e <= epoch);
        st.prepared = later;
        drop(st);
        for (_, staging, path) in now {
            riffle_formats::commit_staged(&staging, &path)?;
        }
        Ok(())
    }

    /// Deletes what a failed query prepared.
    pub fn abort(&self) {
        if let Ok(mut st) = self.lock() {
            for (_, staging, _) in st.prepared.drain(..) {
                let _ = std::fs::remove_file(staging);
            }
        }
    }

    fn prepared(&self, p: usize, epoch: u64, file: Option<(PathBuf, PathBuf)>, passed: u64) -> Result<()> {
        let mut st = self.lock()?;
        if let Some((staging, path)) = file {
            st.prepared.push((epoch, staging, path));
        }
        let done = st.epochs.pass(p, passed);
        let all_ended = st.epochs.all_ended();
        drop(st);
        if let Some((c, component)) = &self.coordinator {
            for e in done {
                c.ack(*component, e)?;
            }
            if all_ended {
                c.retire(*component)?;
            }
        }
        Ok(())
    }
}

/// Commits the pending files of epochs up to `keep_to`, deletes the others.
fn recover(dir: &Path, keep_to: u64) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((target, epoch)) = pending_target(&name) else { continue };
        if epoch <= keep_to {
            riffle_formats::commit_staged(&entry.path(), &dir.join(target))?;
        } else {
            std::fs::remove_file(entry.path()).map_err(|e| RiffleError::exec(format!("cannot remove '{}': {e}", entry.path().display())))?;
        }
    }
    Ok(())
}

struct FileSink {
    shared: Arc<FileSinkShared>,
    partition: usize,
    /// The epoch the rows now arriving belong to.
    epoch: u64,
    writer: Option<AtomicWriter>,
}

impl FileSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.writer.is_none() {
            let s = &self.shared;
            let name = format!("part-{}-{}-{}.{}", s.run, self.partition, self.epoch, s.format.extension());
            let (path, staging) = (s.dir.join(&name), s.dir.join(format!(".{name}.pending")));
            self.writer = Some(AtomicWriter::create_staged(&s.format, &path, &staging, &s.schema)?.with_buffer_limit(s.writer_buffer));
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(batch)?;
        }
        self.shared.lock()?.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Completes this epoch's file, if any rows came.
    fn prepare(&mut self) -> Result<Option<(PathBuf, PathBuf)>> {
        match self.writer.take() {
            Some(w) => Ok(Some(w.prepare()?)),
            None => Ok(None),
        }
    }
}

impl Sink for FileSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        match msg {
            Message::Batch(b) => {
                let b = if b.schema() == self.shared.schema {
                    b
                } else {
                    RecordBatch::try_new(self.shared.schema.clone(), b.columns().to_vec())?
                };
                self.write(&b)?;
            }
            Message::Barrier(e) => {
                let file = self.prepare()?;
                self.shared.prepared(self.partition, self.epoch, file, e)?;
                self.epoch = e + 1;
            }
            Message::End => {
                let file = self.prepare()?;
                self.shared.prepared(self.partition, self.epoch, file, u64::MAX)?;
            }
            Message::Watermark(_) | Message::Idle => {}
        }
        Ok(())
    }
}

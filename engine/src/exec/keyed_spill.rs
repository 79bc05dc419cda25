//! Keyed streaming state that outgrows its memory share, on disk a bucket of keys at a time: how an
//! updating aggregate, a stream join and a session aggregate spill.
//!
//! Keys are split by hash into `BUCKETS` buckets. An operator over its share writes its biggest
//! buckets' state to a spill file each and forgets it. Input rows for a bucket on disk are held, in
//! arrival order (in memory up to `HELD_IN_MEMORY` for all buckets together, then in files, the
//! biggest first), until the bucket is loaded again: once they are as big as its state on disk
//! (reading and rewriting the state is then paid for by that much input), once the oldest has waited
//! `MAX_HELD_AGE`, and at the end of input. Loading reads the state back and applies the held rows as
//! if they came then: each key's rows are applied in order, and only the results of keys on disk come
//! out later than they would have in memory (as with Flink's mini-batches), never different ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use super::OpMetrics;
use crate::error::Result;
use crate::memory::{SpillFile, SpillManager, SpillReader, SpillWriter};

pub(super) const BUCKETS: usize = 64;

/// How long input rows of a bucket on disk may wait for it to be loaded.
pub(super) const MAX_HELD_AGE: Duration = Duration::from_secs(1);

/// Held input rows kept in memory, all buckets together, before the biggest bucket's go to a file.
pub(super) const HELD_IN_MEMORY: usize = 1 << 20;

/// Rows of state per batch when a bucket is written.
pub(super) const STATE_BATCH_ROWS: usize = 8192;

/// The bucket of an encoded key: the top bits of the hash that partitions keys (`stats::hash`).
pub(super) fn bucket_of(key: &[u8]) -> usize {
    (crate::stats::hash(key) >> (64 - BUCKETS.trailing_zeros())) as usize
}

/// The rows of `batch` by bucket (`buckets[i]` is row `i`'s): each bucket that has rows, with its
/// rows in input order, as a batch of its own.
pub(super) fn split_rows(batch: &RecordBatch, buckets: &[usize]) -> Result<Vec<(usize, RecordBatch)>> {
    super::key_partition::split_by_owner(batch, buckets, BUCKETS)
}

/// The buckets to write to disk, biggest first (`bytes[b]`: bucket `b`'s in memory; 0 for none or
/// one on disk), until about `keep` of the `total` bytes held are left.
pub(super) fn biggest_buckets(bytes: &[usize; BUCKETS], total: usize, keep: usize) -> [bool; BUCKETS] {
    let mut order: Vec<usize> = (0..BUCKETS).filter(|b| bytes[*b] > 0).collect();
    order.sort_by_key(|b| std::cmp::Reverse(bytes[*b]));
    let (mut left, mut chosen) = (total, [false; BUCKETS]);
    for b in order {
        if left <= keep {
            break;
        }
        chosen[b] = true;
        left = left.saturating_sub(bytes[b]);
    }
    chosen
}

/// Moves to a file the held rows of the bucket holding the most in memory; false if none holds any.
pub(super) fn write_biggest_held<'a>(buckets: impl Iterator<Item = &'a mut SpilledBucket>, spill: &Arc<SpillManager>, metrics: &OpMetrics) -> Result<bool> {
    match buckets.max_by_key(|b| b.held_in_memory()).filter(|b| b.held_in_memory() > 0) {
        Some(bucket) => bucket.write_held(spill, metrics).map(|_| true),
        None => Ok(false),
    }
}

/// The batches of `files`, one file after another.
pub(super) fn batches_of<'a>(files: impl IntoIterator<Item = &'a Arc<SpillFile>> + 'a) -> impl Iterator<Item = Result<RecordBatch>> + 'a {
    let mut files = files.into_iter();
    let mut reader: Option<SpillReader> = None;
    std::iter::from_fn(move || loop {
        if let Some(r) = &mut reader {
            match r.next_batch() {
                Ok(Some(b)) => return Some(Ok(b)),
                Ok(None) => reader = None,
                Err(e) => return Some(Err(e)),
            }
        }
        match files.next()?.reader() {
            Ok(r) => reader = Some(r),
            Err(e) => return Some(Err(e)),
        }
    })
}

/// Writes `batches` into one spill file (a new file whenever the schema changes).
fn write_files(batches: impl IntoIterator<Item = RecordBatch>, spill: &Arc<SpillManager>, metrics: &OpMetrics) -> Result<Vec<Arc<SpillFile>>> {
    let mut files = vec![];
    let mut writer: Option<SpillWriter> = None;
    let mut schema = None;
    for b in batches {
        if schema.as_ref() != Some(&b.schema()) {
            if let Some(w) = writer.take() {
                files.push(w.finish()?);
            }
            schema = Some(b.schema());
        }
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(spill.writer(&b.schema())?),
        };
        w.write(&b)?;
    }
    if let Some(w) = writer {
        files.push(w.finish()?);
    }
    Ok(files
        .into_iter()
        .map(|f| {
            metrics.note_spill(&f);
            Arc::new(f)
        })
        .collect())
}

/// A bucket whose state is on disk, and the input rows for its keys held since.
pub(super) struct SpilledBucket {
    state: Vec<Arc<SpillFile>>,
    /// The state is in the files of the last checkpoint already (no key in it changed since).
    pub in_checkpoint: bool,
    held_files: Vec<Arc<SpillFile>>,
    held: Vec<RecordBatch>,
    held_bytes: usize,
    /// When the oldest held row came.
    since: Option<Instant>,
}

impl SpilledBucket {
    /// Writes `state` (the bucket's state, in batches) to disk.
    pub fn write(state: Vec<RecordBatch>, in_checkpoint: bool, spill: &Arc<SpillManager>, metrics: &OpMetrics) -> Result<SpilledBucket> {
        let state = write_files(state, spill, metrics)?;
        Ok(SpilledBucket { state, in_checkpoint, held_files: vec![], held: vec![], held_bytes: 0, since: None })
    }

    pub fn state_rows(&self) -> usize {
        self.state.iter().map(|f| f.rows()).sum()
    }

    pub fn state_files(&self) -> &[Arc<SpillFile>] {
        &self.state
    }

    /// Adds `state` to the bucket's state on disk.
    pub fn add_state(&mut self, state: Vec<RecordBatch>, spill: &Arc<SpillManager>, metrics: &OpMetrics) -> Result<()> {
        self.state.extend(write_files(state, spill, metrics)?);
        Ok(())
    }

    /// Forgets the state on disk (none of it is needed any more).
    pub fn drop_state(&mut self) {
        self.state.clear();
    }

    /// Holds input rows for this bucket's keys until it is loaded.
    pub fn hold(&mut self, rows: RecordBatch) {
        self.since.get_or_insert_with(Instant::now);
        self.held_bytes += rows.get_array_memory_size();
        self.held.push(rows);
    }

    /// Bytes of held rows in memory.
    pub fn held_in_memory(&self) -> usize {
        self.held_bytes
    }

    pub fn has_held(&self) -> bool {
        self.since.is_some()
    }

    /// Moves the held rows in memory to a file.
    pub fn write_held(&mut self, spill: &Arc<SpillManager>, metrics: &OpMetrics) -> Result<()> {
        let held = std::mem::take(&mut self.held);
        self.held_files.extend(write_files(held, spill, metrics)?);
        self.held_bytes = 0;
        Ok(())
    }

    /// The held rows, to save in a checkpoint: their files, and those still in memory.
    pub fn held(&self) -> (Vec<Arc<SpillFile>>, Vec<RecordBatch>) {
        (self.held_files.clone(), self.held.clone())
    }

    /// Whether the bucket should be loaded now to apply its held rows (see the module's doc).
    pub fn due(&self, now: Instant) -> bool {
        self.has_held() && (self.waited(now) >= MAX_HELD_AGE || self.held_bytes() >= self.state_bytes())
    }

    /// Bytes of held rows, in memory and in files.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes as u64 + self.held_files.iter().map(|f| f.bytes()).sum::<u64>()
    }

    /// Bytes of the state on disk.
    pub fn state_bytes(&self) -> u64 {
        self.state.iter().map(|f| f.bytes()).sum()
    }

    /// How long the oldest held row has waited (zero: none held).
    pub fn waited(&self, now: Instant) -> Duration {
        self.since.map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// The state's batches, then the held rows', in the order they came.
    pub fn load(self) -> (Vec<Arc<SpillFile>>, Vec<Arc<SpillFile>>, Vec<RecordBatch>) {
        (self.state, self.held_files, self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::Int64Type;

    #[test]
    fn rows_split_by_bucket_keep_their_order_and_all_come_back() {
        let values: Vec<i64> = (0..1000).collect();
        let batch = RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(values.clone())) as _)]).expect("batch");
        let buckets: Vec<usize> = values.iter().map(|v| bucket_of(&v.to_le_bytes())).collect();
        let parts = split_rows(&batch, &buckets).expect("split");
        assert!(parts.len() > BUCKETS / 2, "keys spread over the buckets: {}", parts.len());
        let mut seen = vec![];
        for (b, rows) in parts {
            let v = rows.column(0).as_primitive::<Int64Type>();
            assert!(v.values().windows(2).all(|w| w[0] < w[1]), "input order within a bucket");
            assert!(v.values().iter().all(|x| buckets[*x as usize] == b));
            seen.extend(v.values().iter().copied());
            assert_eq!(v.null_count(), 0);
        }
        seen.sort();
        assert_eq!(seen, values);
    }
}

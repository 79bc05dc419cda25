//! Partial groups on disk, split by key hash into buckets, and their merge one bucket at a time
//! within the memory budget: how the hash aggregate and the window aggregates spill.
//!
//! Whatever outgrows its reservation writes its groups' partial states (keys and accumulator
//! states) by bucket and starts afresh; when the groups are due (the end of input, a window's end),
//! each bucket's parts, on disk and in memory, are merged on their own, so only one bucket's groups
//! are in memory at a time. A bucket still too big is split again by other bits of the key hash.

use std::sync::Arc;

use arrow::array::RecordBatch;

use super::aggregate::{split_by_bucket, write_by_bucket, AggSpec, GroupTable, Part, PartReader, Partial, BUCKETS, MAX_DEPTH};
use super::OpMetrics;
use crate::error::Result;
use crate::memory::{MemoryReservation, SpillFile, SpillManager, SpillWriter};

/// Partial groups written to disk, per bucket the files holding that bucket's groups (one per
/// spill that had some). The files are shared: a HOP window's slide is read by each of its windows.
#[derive(Default)]
pub(super) struct SpilledGroups {
    buckets: Vec<Vec<Arc<SpillFile>>>,
}

impl SpilledGroups {
    /// Writes the groups of `partials` (keyed as `spec`'s groups) to disk, one file per bucket.
    pub(super) fn write(
        &mut self,
        spec: &AggSpec,
        partials: impl IntoIterator<Item = Partial>,
        spill: &Arc<SpillManager>,
        metrics: &OpMetrics,
    ) -> Result<()> {
        let splitter = GroupTable::new(spec)?;
        let mut writers: Vec<Option<SpillWriter>> = (0..BUCKETS).map(|_| None).collect();
        for partial in partials {
            for (b, part) in by_bucket(&splitter, partial)? {
                let writer = match &mut writers[b] {
                    Some(w) => w,
                    None => writers[b].insert(spill.writer(&part.schema())?),
                };
                writer.write(&part)?;
            }
        }
        self.buckets.resize_with(BUCKETS, Vec::new);
        for (b, writer) in writers.into_iter().enumerate() {
            if let Some(w) = writer {
                let file = w.finish()?;
                metrics.note_spill(&file);
                self.buckets[b].push(Arc::new(file));
            }
        }
        Ok(())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buckets.iter().all(Vec::is_empty)
    }

    /// Every file, whatever its bucket.
    pub(super) fn files(&self) -> impl Iterator<Item = &Arc<SpillFile>> {
        self.buckets.iter().flatten()
    }

    /// Adds each bucket's files to that bucket's parts to merge.
    pub(super) fn add_to(&self, buckets: &mut [Vec<Part>]) {
        for (parts, files) in buckets.iter_mut().zip(&self.buckets) {
            parts.extend(files.iter().map(|f| Part::Shared(f.clone())));
        }
    }
}

/// Per bucket, the rows of `partials` (keyed as `spec`'s groups) in it, as parts to merge.
pub(super) fn memory_buckets(spec: &AggSpec, partials: impl IntoIterator<Item = Partial>) -> Result<Vec<Vec<Part>>> {
    let splitter = GroupTable::new(spec)?;
    let mut buckets: Vec<Vec<Part>> = (0..BUCKETS).map(|_| Vec::new()).collect();
    for p in partials {
        for (b, part) in by_bucket(&splitter, p)? {
            buckets[b].push(Part::Memory(part));
        }
    }
    Ok(buckets)
}

/// A partial's groups (keyed as `splitter`'s) as batches, one per bucket that has some.
pub(super) fn by_bucket(splitter: &GroupTable, partial: Partial) -> Result<Vec<(usize, RecordBatch)>> {
    if partial.num_groups() == 0 {
        return Ok(vec![]);
    }
    let of = splitter.buckets_of(partial.keys(), partial.num_groups(), 0)?;
    split_by_bucket(&partial.into_batch()?.0, &of)
}

/// Merges the partial groups of one bucket's parts and hands the merged groups to `emit`, in one
/// table or, when the bucket outgrows the budget (`merging`), in several: its groups so far and the
/// rest of its parts go to disk by other bits of the key hash (`depth`) and each sub-bucket is merged
/// on its own; past `MAX_DEPTH` splits, or with a single group left, it is merged beyond the budget.
pub(super) struct BucketMerge<'a> {
    pub(super) spec: &'a AggSpec,
    /// State columns of each accumulator, to read partials back.
    pub(super) widths: &'a [usize],
    pub(super) spill: &'a Arc<SpillManager>,
    pub(super) metrics: &'a OpMetrics,
}

impl BucketMerge<'_> {
    pub(super) fn merge(
        &self,
        parts: Vec<Part>,
        depth: usize,
        merging: &mut MemoryReservation,
        emit: &mut dyn FnMut(GroupTable) -> Result<()>,
    ) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let keys = self.spec.group.len();
        let mut input = PartReader { parts: parts.into(), current: None };
        let mut table = GroupTable::new(self.spec)?;
        while let Some(batch) = input.next_batch()? {
            table.merge(Partial::from_batch(&batch, keys, self.widths))?;
            if merging.try_resize(table.size()) {
                continue;
            }
            if depth + 1 >= MAX_DEPTH || table.num_groups() <= 1 {
                merging.grow_anyway(table.size().saturating_sub(merging.size()));
                continue;
            }
            let files = self.split(table, &batch, &mut input, depth + 1)?;
            merging.free();
            for file in files {
                self.merge(vec![Part::Shared(Arc::new(file))], depth + 1, merging, emit)?;
            }
            return Ok(());
        }
        self.metrics.note_bytes(table.size());
        if table.num_groups() > 0 {
            emit(table)?;
        }
        merging.free();
        Ok(())
    }

    /// Writes `table`'s groups and the rest of `input` to disk by bucket at `depth`.
    fn split(&self, table: GroupTable, last: &RecordBatch, input: &mut PartReader, depth: usize) -> Result<Vec<SpillFile>> {
        let keys = self.spec.group.len();
        let mut writers = (0..BUCKETS).map(|_| self.spill.writer(&last.schema())).collect::<Result<Vec<_>>>()?;
        let of = table.group_buckets(depth)?;
        let splitter = GroupTable::new(self.spec)?;
        let (groups, _) = table.into_partial()?.into_batch()?;
        write_by_bucket(&mut writers, &groups, &of)?;
        while let Some(rest) = input.next_batch()? {
            let of = splitter.buckets_of(&rest.columns()[..keys], rest.num_rows(), depth)?;
            write_by_bucket(&mut writers, &rest, &of)?;
        }
        writers
            .into_iter()
            .map(|w| {
                let file = w.finish()?;
                self.metrics.note_spill(&file);
                Ok(file)
            })
            .collect()
    }
}

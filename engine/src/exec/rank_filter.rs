//! A window's `rank() <= N` filter applied before its sort (TPC-DS q67 ranks 5.8 M rollup rows per
//! category and keeps 100 each): a row can be dropped as soon as N rows of its partition seen so far
//! come strictly before it in the window's order, for its rank can only be larger. The sort, the
//! window and the filter above still run on the rows left, so the answer is theirs; this only spares
//! them rows. Each partition of the pipeline keeps its own best keys: a row dropped on what one
//! thread saw would have been dropped on all rows too.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::row::Rows;

use super::sort::KeyEncoder;
use super::Operator;
use crate::error::Result;
use crate::logical::{Expr, SortKey};
use crate::memory::{MemoryPool, MemoryReservation};
use crate::message::Message;

pub struct RankFilterOp {
    /// The PARTITION BY keys (any order: only their equality counts) and the ORDER BY keys.
    keys: (Vec<SortKey>, Vec<SortKey>),
    limit: usize,
    dense: bool,
    /// Row encoders of `keys`, made with the first batch.
    encoders: Option<(KeyEncoder, KeyEncoder)>,
    partitions: hashbrown::HashMap<Box<[u8]>, Best>,
    /// The partitions' best keys in the pool. Once it is full, rows of partitions not seen before
    /// pass unfiltered (never wrong, only less sparing).
    reservation: MemoryReservation,
    full: bool,
}

/// A partition's best ORDER BY keys so far (row-encoded, so byte order is the window's order), each
/// with how many rows had it: just enough of them that the last is the `limit`-th rank's.
#[derive(Default)]
struct Best {
    keys: BTreeMap<Box<[u8]>, usize>,
    rows: usize,
}

impl Best {
    /// The key past which a row cannot rank within `limit`: the last one kept, once enough are.
    fn cutoff(&self, limit: usize, dense: bool) -> Option<&[u8]> {
        let enough = if dense { self.keys.len() >= limit } else { self.rows >= limit };
        if enough {
            self.keys.last_key_value().map(|(k, _)| k.as_ref())
        } else {
            None
        }
    }

    /// Counts a row with `key` (not past the cutoff), dropping keys no longer needed. Returns the
    /// change in bytes held.
    fn add(&mut self, key: &[u8], limit: usize, dense: bool) -> isize {
        let mut change = 0;
        match self.keys.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                self.keys.insert(key.into(), 1);
                change += entry_bytes(key.len());
            }
        }
        self.rows += 1;
        while let Some((last, &n)) = self.keys.last_key_value() {
            let surplus = if dense { self.keys.len() > limit } else { self.rows - n >= limit };
            if !surplus {
                break;
            }
            change -= entry_bytes(last.len());
            self.keys.pop_last();
            self.rows -= n;
        }
        change
    }
}

fn entry_bytes(key: usize) -> isize {
    (key + 48) as isize
}

impl RankFilterOp {
    pub fn new(partition_by: Vec<Expr>, order_by: Vec<SortKey>, limit: usize, dense: bool, pool: &Arc<MemoryPool>) -> RankFilterOp {
        let partition = partition_by.into_iter().map(|expr| SortKey { expr, descending: false, nulls_first: false }).collect();
        RankFilterOp {
            keys: (partition, order_by),
            limit,
            dense,
            encoders: None,
            partitions: hashbrown::HashMap::new(),
            reservation: pool.reservation("RankFilter", false),
            full: false,
        }
    }

    /// The batch's PARTITION BY and ORDER BY keys, row-encoded.
    fn rows(&mut self, batch: &RecordBatch) -> Result<(Rows, Rows)> {
        let (partition, order) = match self.encoders.take() {
            Some(encoders) => encoders,
            None => {
                let schema = batch.schema();
                (KeyEncoder::new(&schema, self.keys.0.clone())?, KeyEncoder::new(&schema, self.keys.1.clone())?)
            }
        };
        let rows = (partition.encode(batch)?, order.encode(batch)?);
        self.encoders = Some((partition, order));
        Ok(rows)
    }
}

impl Operator for RankFilterOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (partitions, keys) = self.rows(&batch)?;
        let (limit, dense) = (self.limit, self.dense);
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut held: isize = 0;
        for (partition, key) in partitions.iter().zip(keys.iter()) {
            let best = match self.partitions.get_mut(partition.as_ref()) {
                Some(best) => best,
                None if self.full => {
                    keep.push(true);
                    continue;
                }
                None => {
                    if !self.reservation.try_grow(entry_bytes(partition.as_ref().len()) as usize) {
                        self.full = true;
                        keep.push(true);
                        continue;
                    }
                    self.partitions.entry(partition.as_ref().into()).or_default()
                }
            };
            let key = key.as_ref();
            let kept = match best.cutoff(limit, dense) {
                Some(cutoff) if key > cutoff => false,
                // A tie with the cutoff changes nothing kept.
                Some(cutoff) if key == cutoff => true,
                _ => {
                    held += best.add(key, limit, dense);
                    true
                }
            };
            keep.push(kept);
        }
        if held > 0 {
            self.reservation.grow_anyway(held as usize);
        } else {
            self.reservation.shrink(held.unsigned_abs());
        }
        if keep.iter().all(|k| *k) {
            out.push(Message::Batch(batch));
        } else if keep.iter().any(|k| *k) {
            out.push(Message::Batch(filter_record_batch(&batch, &BooleanArray::from(keep))?));
        }
        Ok(())
    }
}

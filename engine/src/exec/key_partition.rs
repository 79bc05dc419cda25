//! Hash partitioning by key (Flink's keyBy): every row goes to the consumer partition that owns its
//! key, so an operator after the exchange keeps each key's state in one partition and can emit it
//! without merging the other partitions' parts. Ownership is a fixed hash of the key's row encoding,
//! the same in every run, so state saved by a checkpoint can be dealt to its owners again.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::row::{RowConverter, SortField};

use super::{Exchange, Sink};
use crate::error::Result;
use crate::eval::evaluate;
use crate::logical::Expr;
use crate::message::Message;

/// The partition (of `partitions`) owning each row's key, `keys` being the key's columns.
pub fn owners(keys: &[ArrayRef], partitions: usize) -> Result<Vec<usize>> {
    let rows = keys.first().map_or(0, |k| k.len());
    if partitions <= 1 || keys.is_empty() {
        return Ok(vec![0; rows]);
    }
    let converter = RowConverter::new(keys.iter().map(|k| SortField::new(k.data_type().clone())).collect())?;
    let encoded = converter.convert_columns(keys)?;
    Ok(encoded.iter().map(|r| (crate::stats::hash(r.as_ref()) % partitions as u64) as usize).collect())
}

/// `batch`'s rows split by owner: each part with the partition it goes to (parts without rows left out).
pub fn split_by_owner(batch: &RecordBatch, owner: &[usize], partitions: usize) -> Result<Vec<(usize, RecordBatch)>> {
    match owner.first() {
        None => return Ok(vec![]),
        Some(&first) if owner.iter().all(|o| *o == first) => return Ok(vec![(first, batch.clone())]),
        Some(_) => {}
    }
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); partitions];
    for (row, o) in owner.iter().enumerate() {
        rows[*o].push(row as u32);
    }
    rows.into_iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(p, r)| Ok((p, arrow::compute::take_record_batch(batch, &UInt32Array::from(r))?)))
        .collect()
}

/// Ends a pipeline partition in an exchange that sends each row to its key's owner.
pub struct KeyedExchangeSink {
    exchange: Arc<Exchange>,
    producer: usize,
    keys: Arc<Vec<Expr>>,
    partitions: usize,
}

impl KeyedExchangeSink {
    pub fn new(exchange: Arc<Exchange>, producer: usize, keys: Arc<Vec<Expr>>, partitions: usize) -> KeyedExchangeSink {
        KeyedExchangeSink { exchange, producer, keys, partitions }
    }
}

impl Sink for KeyedExchangeSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        match msg {
            Message::Batch(batch) if batch.num_rows() > 0 => {
                let keys = self.keys.iter().map(|k| evaluate(k, &batch)).collect::<Result<Vec<_>>>()?;
                let owner = owners(&keys, self.partitions)?;
                for (p, part) in split_by_owner(&batch, &owner, self.partitions)? {
                    self.exchange.push_to(p, part);
                }
            }
            Message::Batch(_) => {}
            control => self.exchange.push(self.producer, control),
        }
        Ok(())
    }

    fn has_capacity(&self) -> bool {
        self.exchange.has_capacity(self.producer)
    }

    fn closed(&self) -> bool {
        self.exchange.closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};

    #[test]
    fn each_key_has_one_owner_in_every_batch() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3, 1, 2, 3, 100, 200]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![3, 1, 2, 100, 1, 3, 200, 2]));
        let (oa, ob) = (owners(std::slice::from_ref(&a), 4).expect("owners"), owners(std::slice::from_ref(&b), 4).expect("owners"));
        let (x, y) = (a.as_any().downcast_ref::<Int64Array>().expect("i64"), b.as_any().downcast_ref::<Int64Array>().expect("i64"));
        for (i, owner_a) in oa.iter().enumerate() {
            for (j, owner_b) in ob.iter().enumerate() {
                if x.value(i) == y.value(j) {
                    assert_eq!(owner_a, owner_b, "key {} owned by two partitions", x.value(i));
                }
            }
        }
        // Keys spread over the partitions.
        let many: ArrayRef = Arc::new(Int64Array::from_iter_values(0..1000));
        let o = owners(&[many], 4).expect("owners");
        for p in 0..4 {
            let n = o.iter().filter(|x| **x == p).count();
            assert!((150..350).contains(&n), "partition {p} owns {n} of 1000 keys");
        }
    }

    #[test]
    fn split_keeps_every_row_once() {
        let k: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c", "a", "d"]));
        let batch = RecordBatch::try_from_iter([("k", k.clone())]).expect("batch");
        let o = owners(&[k], 3).expect("owners");
        let parts = split_by_owner(&batch, &o, 3).expect("split");
        assert_eq!(parts.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), 5);
        for (p, part) in parts {
            let owned = owners(&[part.column(0).clone()], 3).expect("owners");
            assert!(owned.iter().all(|x| *x == p));
        }
    }
}

//! Builds a batch from rows picked out of several batches (a merge's output, a sorted run).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeBinaryArray, RecordBatch};
use arrow::buffer::{Buffer, NullBuffer};
use arrow::compute::interleave;
use arrow::datatypes::DataType;

use crate::error::Result;

/// The rows `indices` = (batch, row) of `batches`, in that order, under the first batch's schema.
pub fn gather(batches: &[&RecordBatch], indices: &[(usize, usize)]) -> Result<RecordBatch> {
    let Some(first) = batches.first() else {
        return Err(crate::RiffleError::exec("gather from no batches"));
    };
    let columns = (0..first.num_columns())
        .map(|c| {
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            match first.column(c).data_type() {
                // Arrow's interleave has no fast path for fixed-size binary (sort keys, gensort records).
                DataType::FixedSizeBinary(width) => gather_fixed_size(&arrays, *width, indices),
                _ => Ok(interleave(&arrays, indices)?),
            }
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(indices.len()));
    Ok(RecordBatch::try_new_with_options(first.schema(), columns, &options)?)
}

fn gather_fixed_size(arrays: &[&dyn Array], width: i32, indices: &[(usize, usize)]) -> Result<ArrayRef> {
    let arrays: Vec<&FixedSizeBinaryArray> = arrays
        .iter()
        .map(|a| a.as_any().downcast_ref::<FixedSizeBinaryArray>())
        .collect::<Option<_>>()
        .ok_or_else(|| crate::RiffleError::exec("gather: columns of one batch list differ in type"))?;
    let mut values = Vec::with_capacity(indices.len() * width as usize);
    for &(a, i) in indices {
        values.extend_from_slice(arrays[a].value(i));
    }
    let nulls = arrays
        .iter()
        .any(|a| a.null_count() > 0)
        .then(|| NullBuffer::from_iter(indices.iter().map(|&(a, i)| arrays[a].is_valid(i))));
    Ok(Arc::new(FixedSizeBinaryArray::try_new(width, Buffer::from_vec(values), nulls)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;

    #[test]
    fn gathers_fixed_size_binary_with_nulls_like_interleave() {
        let a = FixedSizeBinaryArray::try_from_sparse_iter_with_size([Some(b"ab"), None, Some(b"cd")].into_iter(), 2).unwrap();
        let b = FixedSizeBinaryArray::try_from_iter([b"ef", b"gh"].into_iter()).unwrap();
        let batch = |k: FixedSizeBinaryArray, v: Vec<i32>| {
            RecordBatch::try_from_iter([("k", Arc::new(k) as ArrayRef), ("v", Arc::new(Int32Array::from(v)) as ArrayRef)]).unwrap()
        };
        let (x, y) = (batch(a, vec![1, 2, 3]), batch(b, vec![4, 5]));
        let idx = [(1, 1), (0, 1), (0, 0), (1, 0), (0, 2)];
        let got = gather(&[&x, &y], &idx).unwrap();
        let want = arrow::compute::interleave_record_batch(&[&x, &y], &idx).unwrap();
        assert_eq!(got, want);
    }
}

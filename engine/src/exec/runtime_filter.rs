//! Runtime filters (DuckDB's dynamic join filters, Spark's runtime filters): once a hash join's build
//! side is complete, the values of an integer key in it filter the probe side at its scan, so that
//! probe rows that cannot match leave before the other operators of the pipeline see them, and
//! Parquet row groups and pages whose min/max lie outside the build's key range are never read.
//!
//! Only a plan's shape decides where a filter goes (`crate::runtime_filter_plan`): a scan in the
//! probe's own pipeline, or, past a GROUP BY on the key or into a shared subplan, in a pipeline of
//! its own. A scan reads nothing before its filters are set, so the filter is there before the first
//! row. The filter is an optimization only: a scan that sees none passes every row, and the join
//! still does the matching.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Int64Type};

use crate::error::Result;
use crate::logical::{BinaryOp, Expr, Scalar};

/// A key range this wide always gets a bitmap (2 MiB of bits).
const SMALL_BITMAP_SPAN: u64 = 1 << 24;

/// Wider ranges get one of up to this many bits per build value (32 bytes: less than the build
/// side's hash table holds per row), so a sparse key range (TPC-H's order keys, a quarter of 60 M
/// at SF10, of which Q5's orders of a year keep 456 K) still filters the probe side exactly.
const BITMAP_BITS_PER_VALUE: u64 = 256;

/// And never more than 32 MiB of bits; wider ranges filter by min/max only.
const MAX_BITMAP_SPAN: u64 = 1 << 28;

/// Rows a scan filters before it judges the filter: past them, one that keeps more than half of the
/// rows is no longer applied to rows (its pruning of row groups stays). It copies the rows it keeps,
/// and the join it comes from drops the others anyway: with most rows kept it costs more than it saves.
const TRIAL_ROWS: u64 = 1 << 17;

/// A build side's values of one key.
#[derive(Debug)]
pub enum KeyValues {
    /// The build side has no row with a non-NULL key: no probe row can match.
    Nothing,
    /// Every value lies in `min..=max`; `bits`, when present, marks those present (bit `v - min`),
    /// absent when every value in the range is or the range is too wide for a bitmap.
    Range { min: i64, max: i64, bits: Option<Vec<u64>> },
}

impl KeyValues {
    /// The values of `keys` (an integer array).
    pub fn of(keys: &ArrayRef) -> Result<KeyValues> {
        let keys = as_i64(keys)?;
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        for v in keys.iter().flatten() {
            min = min.min(v);
            max = max.max(v);
        }
        if min > max {
            return Ok(KeyValues::Nothing);
        }
        let span = max.abs_diff(min) + 1;
        let count = (keys.len() - keys.null_count()) as u64;
        if span > SMALL_BITMAP_SPAN.max(count.saturating_mul(BITMAP_BITS_PER_VALUE)).min(MAX_BITMAP_SPAN) {
            return Ok(KeyValues::Range { min, max, bits: None });
        }
        let mut bits = vec![0u64; span.div_ceil(64) as usize];
        let mut set = 0u64;
        for v in keys.iter().flatten() {
            let i = v.abs_diff(min);
            let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
            set += u64::from(bits[word] & bit == 0);
            bits[word] |= bit;
        }
        Ok(KeyValues::Range { min, max, bits: (set < span).then_some(bits) })
    }

    /// Whether the build side has a value in `lo..=hi`.
    pub fn any_in(&self, lo: i64, hi: i64) -> bool {
        let KeyValues::Range { min, max, bits } = self else { return false };
        let (lo, hi) = (lo.max(*min), hi.min(*max));
        if lo > hi {
            return false;
        }
        let Some(bits) = bits else { return true };
        // Bits `lo - min ..= hi - min`, a word at a time.
        let (first, last) = (lo.abs_diff(*min), hi.abs_diff(*min));
        let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
        let low_mask = |b: u64| !0u64 << (b % 64);
        let high_mask = |b: u64| !0u64 >> (63 - b % 64);
        if fw == lw {
            return bits[fw] & low_mask(first) & high_mask(last) != 0;
        }
        bits[fw] & low_mask(first) != 0 || bits[fw + 1..lw].iter().any(|w| *w != 0) || bits[lw] & high_mask(last) != 0
    }

    /// Whether `v` is a value of the build side.
    #[inline]
    pub fn holds(&self, v: i64) -> bool {
        match self {
            KeyValues::Nothing => false,
            KeyValues::Range { min, max, bits } => {
                // Below `min` the difference wraps past `span`.
                let (i, span) = (v.wrapping_sub(*min) as u64, max.abs_diff(*min));
                i <= span && bits.as_ref().is_none_or(|b| b[(i / 64) as usize] & (1 << (i % 64)) != 0)
            }
        }
    }
}

/// `column` (of type `data_type`) in `min..=max`, a predicate Parquet statistics can decide.
fn between(column: usize, data_type: &DataType, min: i64, max: i64) -> Result<Expr> {
    let literal = |v: i64| -> Result<Expr> {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![v]));
        Ok(Expr::lit(Scalar(arrow::compute::cast(&a, data_type)?)))
    };
    Ok(Expr::binary(BinaryOp::GtEq, Expr::Column(column), literal(min)?).and(Expr::binary(BinaryOp::LtEq, Expr::Column(column), literal(max)?)))
}

fn as_i64(a: &ArrayRef) -> Result<Int64Array> {
    let a = if *a.data_type() == DataType::Int64 { a.clone() } else { arrow::compute::cast(a, &DataType::Int64)? };
    Ok(a.as_primitive::<Int64Type>().clone())
}

/// One runtime filter, set by the join once its build side is complete: `None` inside when the join
/// could not compute it (a build side that spilled).
#[derive(Debug, Default)]
pub struct RuntimeFilter {
    values: OnceLock<Option<KeyValues>>,
}

impl RuntimeFilter {
    pub fn set(&self, values: Option<KeyValues>) {
        let _ = self.values.set(values);
    }

    pub fn values(&self) -> Option<&KeyValues> {
        self.values.get().and_then(|v| v.as_ref())
    }
}

/// A runtime filter as a scan applies it, to its output column `column`: the filters of one or more
/// joins (the uses of a shared subplan), a row passing when any of them has its value.
pub struct ScanFilter {
    pub column: usize,
    alternatives: Vec<Arc<RuntimeFilter>>,
    /// The scan's remaining row groups were pruned by it.
    pub pruned: AtomicBool,
    rows_in: AtomicU64,
    rows_out: AtomicU64,
}

impl ScanFilter {
    pub fn new(column: usize, alternatives: Vec<Arc<RuntimeFilter>>) -> ScanFilter {
        ScanFilter { column, alternatives, pruned: AtomicBool::new(false), rows_in: AtomicU64::new(0), rows_out: AtomicU64::new(0) }
    }

    /// Whether every join it comes from has set its filter (possibly to none).
    pub fn is_set(&self) -> bool {
        self.alternatives.iter().all(|f| f.values.get().is_some())
    }

    /// The joins' build values, once all are set; none if one join could not compute them.
    fn values(&self) -> Option<Vec<&KeyValues>> {
        self.alternatives.iter().map(|f| f.values()).collect()
    }

    /// Whether the build sides' values leave gaps between their smallest and largest (a bitmap marks
    /// those present), so that a row group within that range may still hold none of them.
    pub fn sparse(&self) -> bool {
        self.values().is_some_and(|values| values.iter().any(|v| matches!(v, KeyValues::Range { bits: Some(_), .. })))
    }

    /// Whether some build side has a value in `lo..=hi` (true while the values are not known).
    pub fn meets(&self, lo: i64, hi: i64) -> bool {
        self.values().is_none_or(|values| values.iter().any(|v| v.any_in(lo, hi)))
    }

    /// `column` between the smallest and largest build value, a predicate Parquet statistics can
    /// decide: `Some(None)` when no build side has a value (nothing can match), `None` when the
    /// values are not known (yet).
    pub fn bounds(&self, data_type: &DataType) -> Result<Option<Option<Expr>>> {
        let Some(values) = self.values() else { return Ok(None) };
        let range = values.iter().fold(None, |acc: Option<(i64, i64)>, v| match (acc, v) {
            (acc, KeyValues::Nothing) => acc,
            (None, KeyValues::Range { min, max, .. }) => Some((*min, *max)),
            (Some((lo, hi)), KeyValues::Range { min, max, .. }) => Some((lo.min(*min), hi.max(*max))),
        });
        Ok(Some(range.map(|(min, max)| between(self.column, data_type, min, max)).transpose()?))
    }

    /// The share of rows it kept so far (a half before any).
    pub fn pass_rate(&self) -> f64 {
        let seen = self.rows_in.load(Ordering::Relaxed);
        if seen == 0 { 0.5 } else { self.rows_out.load(Ordering::Relaxed) as f64 / seen as f64 }
    }

    /// Clears `keep[i]` (all true when `None`) for the rows of `column` whose value no build side
    /// has, looking only at rows still kept; nothing if the filter is not set, or no longer worth
    /// its cost.
    pub fn narrow(&self, column: &ArrayRef, keep: &mut Option<Vec<bool>>) -> Result<()> {
        let Some(values) = self.values() else { return Ok(()) };
        let (seen, kept) = (self.rows_in.load(Ordering::Relaxed), self.rows_out.load(Ordering::Relaxed));
        if seen >= TRIAL_ROWS && kept * 2 > seen {
            return Ok(());
        }
        let keep = keep.get_or_insert_with(|| vec![true; column.len()]);
        let nulls = column.logical_nulls();
        let (seen, kept) = match values[..] {
            [one] => narrow_column(column, nulls.as_ref(), keep, |v| one.holds(v))?,
            _ => narrow_column(column, nulls.as_ref(), keep, |v| values.iter().any(|k| k.holds(v)))?,
        };
        self.rows_in.fetch_add(seen, Ordering::Relaxed);
        self.rows_out.fetch_add(kept, Ordering::Relaxed);
        Ok(())
    }
}

/// `ScanFilter::narrow` over an integer column: the rows looked at and those still kept.
fn narrow_column(column: &ArrayRef, nulls: Option<&NullBuffer>, keep: &mut [bool], holds: impl Fn(i64) -> bool) -> Result<(u64, u64)> {
    Ok(match column.data_type() {
        DataType::Int32 => narrow_rows(column.as_primitive::<arrow::datatypes::Int32Type>().values(), nulls, keep, holds),
        DataType::Int64 => narrow_rows(column.as_primitive::<Int64Type>().values(), nulls, keep, holds),
        _ => narrow_rows(as_i64(column)?.values(), nulls, keep, holds),
    })
}

/// `ScanFilter::narrow` over a column's values: the rows looked at and those still kept.
fn narrow_rows<T: Copy + Into<i64>>(column: &[T], nulls: Option<&NullBuffer>, keep: &mut [bool], holds: impl Fn(i64) -> bool) -> (u64, u64) {
    let (mut seen, mut kept) = (0u64, 0u64);
    for (i, k) in keep.iter_mut().enumerate() {
        if *k {
            seen += 1;
            *k = nulls.is_none_or(|n| n.is_valid(i)) && holds(column[i].into());
            kept += u64::from(*k);
        }
    }
    (seen, kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;

    fn values(v: Vec<Option<i32>>) -> KeyValues {
        KeyValues::of(&(Arc::new(Int32Array::from(v)) as ArrayRef)).unwrap()
    }

    /// What a scan filter with `k` keeps of `v`.
    fn kept(k: KeyValues, v: Vec<Option<i32>>) -> Vec<bool> {
        let filter = Arc::new(RuntimeFilter::default());
        filter.set(Some(k));
        let mut keep = None;
        ScanFilter::new(0, vec![filter]).narrow(&(Arc::new(Int32Array::from(v)) as ArrayRef), &mut keep).unwrap();
        keep.unwrap()
    }

    #[test]
    fn keeps_exactly_the_build_values() {
        let k = values(vec![Some(5), None, Some(9), Some(5), Some(-3)]);
        assert!(matches!(k, KeyValues::Range { min: -3, max: 9, bits: Some(_) }));
        assert_eq!(kept(k, vec![Some(5), Some(6), None, Some(9), Some(-3), Some(10), Some(-4), Some(i32::MIN)]), [
            true, false, false, true, true, false, false, false
        ]);
    }

    #[test]
    fn a_full_range_needs_no_bitmap_and_a_wide_one_gets_none() {
        assert!(matches!(values(vec![Some(3), Some(2), Some(4)]), KeyValues::Range { min: 2, max: 4, bits: None }));
        let wide = values(vec![Some(i32::MIN), Some(i32::MAX)]);
        assert!(matches!(wide, KeyValues::Range { bits: None, .. }));
        assert_eq!(kept(wide, vec![Some(0), None]), [true, false]);
    }

    #[test]
    fn a_range_wider_than_a_small_bitmap_gets_one_when_the_values_are_many() {
        // 200 K values over 2^25 + 1: a bitmap of 168 bits per value.
        let many: Vec<Option<i32>> = (0..200_000).map(|i| Some(i * 160)).chain([Some(1 << 25)]).collect();
        let k = values(many);
        assert!(matches!(k, KeyValues::Range { min: 0, max: 33_554_432, bits: Some(_) }));
        assert_eq!(kept(k, vec![Some(160), Some(161), Some(1 << 25), Some((1 << 25) - 1)]), [true, false, true, false]);
        // Two values over the same range: min/max only.
        assert!(matches!(values(vec![Some(0), Some(1 << 25)]), KeyValues::Range { bits: None, .. }));
    }

    #[test]
    fn a_range_between_the_keys_holds_none_of_them() {
        let k = values(vec![Some(10), Some(200), Some(75)]);
        for (lo, hi, any) in [(0, 9, false), (0, 10, true), (11, 74, false), (11, 75, true), (76, 199, false), (200, 500, true), (201, 500, false), (-5, 1000, true)] {
            assert_eq!(k.any_in(lo, hi), any, "{lo}..={hi}");
        }
        // Each value in range: no bitmap, any overlap meets one.
        let full = values(vec![Some(3), Some(4), Some(5)]);
        assert!(full.any_in(5, 9) && !full.any_in(6, 9));
    }

    #[test]
    fn no_build_key_keeps_nothing() {
        let k = values(vec![None, None]);
        assert!(matches!(k, KeyValues::Nothing));
        assert_eq!(kept(k, vec![Some(1), None]), [false, false]);
    }
}

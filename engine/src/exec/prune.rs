//! Skips Parquet row groups, and then pages inside the kept row groups, whose statistics prove a scan
//! filter false for every row.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow::array::{Array, ArrayRef, BooleanArray, Scalar as ArrowScalar};
use arrow::compute::kernels::cmp;
use arrow::datatypes::Schema;
use riffle_formats::Morsel;

use crate::error::Result;
use crate::logical::{BinaryOp, Expr};

/// A conjunct the statistics can decide: `column op constant`, the column possibly cast.
struct Bound<'a> {
    column: usize,
    cast: Option<&'a arrow::datatypes::DataType>,
    op: BinaryOp,
    value: &'a ArrayRef,
}

fn column_side(e: &Expr) -> Option<(usize, Option<&arrow::datatypes::DataType>)> {
    match e {
        Expr::Column(c) => Some((*c, None)),
        Expr::Cast { expr, to, .. } => match expr.as_ref() {
            // Casts between numeric and temporal types keep order, so min/max still bound the values.
            Expr::Column(c) => Some((*c, Some(to))),
            _ => None,
        },
        _ => None,
    }
}

fn bound(e: &Expr) -> Option<Bound<'_>> {
    let Expr::Binary { op, left, right } = e else { return None };
    if !matches!(op, BinaryOp::Eq | BinaryOp::Lt | BinaryOp::LtEq | BinaryOp::Gt | BinaryOp::GtEq) {
        return None;
    }
    match (column_side(left), right.as_ref(), column_side(right), left.as_ref()) {
        (Some((column, cast)), Expr::Literal(v), _, _) => Some(Bound { column, cast, op: *op, value: &v.0 }),
        (_, _, Some((column, cast)), Expr::Literal(v)) => Some(Bound { column, cast, op: op.swap(), value: &v.0 }),
        _ => None,
    }
}

/// Which row groups (or pages) `b` rules out, given the column's minimum and maximum in each.
fn excluded(b: &Bound, mins: &ArrayRef, maxes: &ArrayRef) -> Result<Option<BooleanArray>> {
    if b.value.is_null(0) {
        return Ok(None);
    }
    let conv = |a: &ArrayRef| -> Result<ArrayRef> {
        Ok(match b.cast {
            Some(t) if a.data_type() != t => arrow::compute::cast(a, t)?,
            _ => a.clone(),
        })
    };
    let (mins, maxes) = (conv(mins)?, conv(maxes)?);
    if mins.data_type() != b.value.data_type() {
        return Ok(None);
    }
    let v = ArrowScalar::new(b.value.clone());
    // NULL statistics compare as NULL, which never excludes.
    let out = match b.op {
        BinaryOp::Eq => arrow::compute::or_kleene(&cmp::gt(&mins, &v)?, &cmp::lt(&maxes, &v)?)?,
        BinaryOp::Lt => cmp::gt_eq(&mins, &v)?,
        BinaryOp::LtEq => cmp::gt(&mins, &v)?,
        BinaryOp::Gt => cmp::lt_eq(&maxes, &v)?,
        BinaryOp::GtEq => cmp::lt(&maxes, &v)?,
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// Drops the morsels whose row groups cannot hold a row passing `filter` (over `schema`, the scan's
/// projected columns, which are `projection` of the table). Returns the kept morsels and how many
/// were dropped.
pub fn prune_row_groups(morsels: Vec<Morsel>, filter: &Expr, table: &Schema, projection: &[usize]) -> Result<(Vec<Morsel>, usize)> {
    let conjuncts: Vec<Expr> = filter.clone().conjuncts();
    let bounds: Vec<Bound> = conjuncts.iter().filter_map(bound).collect();
    if bounds.is_empty() {
        return Ok((morsels, 0));
    }
    let names: Vec<&str> = bounds.iter().map(|b| table.field(projection[b.column]).name().as_str()).collect();
    let mut by_file: BTreeMap<PathBuf, Vec<bool>> = BTreeMap::new();
    for m in &morsels {
        if by_file.contains_key(&m.file) {
            continue;
        }
        let stats = riffle_formats::parquet_stats(&m.file, &names)?;
        let groups = stats.iter().flatten().map(|s| s.mins.len()).max().unwrap_or(0);
        let mut skip = vec![false; groups];
        for (b, s) in bounds.iter().zip(&stats) {
            let Some(s) = s else { continue };
            if let Some(ex) = excluded(b, &s.mins, &s.maxes)? {
                for (i, x) in ex.iter().enumerate() {
                    if x == Some(true) {
                        skip[i] = true;
                    }
                }
            }
        }
        by_file.insert(m.file.clone(), skip);
    }
    let before = morsels.len();
    let kept: Vec<Morsel> = morsels
        .into_iter()
        .filter(|m| {
            let skip = &by_file[&m.file];
            !m.row_groups.as_ref().is_some_and(|rgs| rgs.iter().all(|rg| skip.get(*rg).copied().unwrap_or(false)))
        })
        .collect();
    let dropped = before - kept.len();
    Ok((kept, dropped))
}

/// Narrows each morsel (one row group) to the rows of pages that may pass `filter`, using the files'
/// page index; a morsel with no such rows is dropped. Returns the morsels and how many rows were
/// skipped. Pages of different columns cover different rows, so each conjunct excludes the row
/// ranges of its own column's pages, and a row is read when no conjunct excludes it.
pub fn prune_pages(morsels: Vec<Morsel>, filter: &Expr, table: &Schema, projection: &[usize]) -> Result<(Vec<Morsel>, usize)> {
    let conjuncts: Vec<Expr> = filter.clone().conjuncts();
    let bounds: Vec<Bound> = conjuncts.iter().filter_map(bound).collect();
    if bounds.is_empty() {
        return Ok((morsels, 0));
    }
    let names: Vec<&str> = bounds.iter().map(|b| table.field(projection[b.column]).name().as_str()).collect();
    let mut metas: BTreeMap<PathBuf, Option<parquet::arrow::arrow_reader::ArrowReaderMetadata>> = BTreeMap::new();
    let (mut kept, mut skipped) = (Vec::with_capacity(morsels.len()), 0usize);
    for mut m in morsels {
        let (Some([rg]), Some(total)) = (m.row_groups.as_deref(), m.rows) else {
            kept.push(m);
            continue;
        };
        let rg = *rg;
        if !metas.contains_key(&m.file) {
            let meta = riffle_formats::parquet_metadata_with_page_index(&m.file)?;
            let has_index = meta.metadata().column_index().is_some() && meta.metadata().offset_index().is_some();
            metas.insert(m.file.clone(), has_index.then_some(meta));
        }
        let Some(meta) = &metas[&m.file] else {
            kept.push(m);
            continue;
        };
        let mut out: Vec<std::ops::Range<usize>> = Vec::new();
        for (b, name) in bounds.iter().zip(&names) {
            let Some(pages) = riffle_formats::parquet_page_stats(meta, name, rg) else { continue };
            let Some(ex) = excluded(b, &pages.mins, &pages.maxes)? else { continue };
            let mut start = 0;
            for (i, rows) in pages.row_counts.iter().enumerate() {
                if ex.is_valid(i) && ex.value(i) {
                    out.push(start..start + rows);
                }
                start += rows;
            }
        }
        if out.is_empty() {
            kept.push(m);
            continue;
        }
        let read = complement(out, total);
        let reading: usize = read.iter().map(|r| r.len()).sum();
        skipped += total - reading;
        if reading > 0 {
            m.rows_to_read = Some(read);
            m.parquet = Some(meta.clone());
            kept.push(m);
        }
    }
    Ok((kept, skipped))
}

/// The parts of `0..total` outside every range of `ranges`, in order.
fn complement(mut ranges: Vec<std::ops::Range<usize>>, total: usize) -> Vec<std::ops::Range<usize>> {
    ranges.sort_by_key(|r| r.start);
    let mut out = Vec::new();
    let mut at = 0;
    for r in ranges {
        if r.start > at {
            out.push(at..r.start.min(total));
        }
        at = at.max(r.end);
    }
    if at < total {
        out.push(at..total);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::complement;

    #[test]
    fn complement_of_overlapping_ranges() {
        assert_eq!(complement(vec![5..8, 0..2, 6..10], 12), vec![2..5, 10..12]);
        assert!(complement(vec![0..6, 6..12], 12).is_empty());
        assert_eq!(complement(vec![], 3), vec![0..3]);
    }
}

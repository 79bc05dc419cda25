//! Skips Parquet row groups, and then pages inside the kept row groups, whose statistics prove a scan
//! filter false for every row.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Scalar as ArrowScalar};
use arrow::compute::kernels::cmp;
use arrow::datatypes::Schema;
use riffle_formats::Morsel;

use crate::error::Result;
use crate::logical::{BinaryOp, Expr};

/// Whether a set of integer keys (a join's build side) has one in `min..=max`.
pub type KeysMeet<'a> = &'a (dyn Fn(i64, i64) -> bool + Sync);

/// A conjunct the statistics can decide, on `column`.
struct Bound<'a> {
    column: usize,
    test: Test<'a>,
}

enum Test<'a> {
    /// `column op constant`, the column possibly cast.
    Compare { cast: Option<&'a arrow::datatypes::DataType>, op: BinaryOp, value: &'a ArrayRef },
    /// The column's value is one of a set of integer keys.
    Keys(KeysMeet<'a>),
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
        (Some((column, cast)), Expr::Literal(v), _, _) => Some(Bound { column, test: Test::Compare { cast, op: *op, value: &v.0 } }),
        (_, _, Some((column, cast)), Expr::Literal(v)) => Some(Bound { column, test: Test::Compare { cast, op: op.swap(), value: &v.0 } }),
        _ => None,
    }
}

/// Which row groups (or pages) `b` rules out, given the column's minimum and maximum in each.
fn excluded(b: &Bound, mins: &ArrayRef, maxes: &ArrayRef) -> Result<Option<BooleanArray>> {
    let (cast, op, value) = match &b.test {
        Test::Compare { cast, op, value } => (cast, op, value),
        Test::Keys(meets) => {
            let int = |a: &ArrayRef| -> Result<arrow::array::Int64Array> {
                Ok(arrow::compute::cast(a, &arrow::datatypes::DataType::Int64)?.as_primitive::<arrow::datatypes::Int64Type>().clone())
            };
            let (mins, maxes) = (int(mins)?, int(maxes)?);
            return Ok(Some(mins.iter().zip(maxes.iter()).map(|(lo, hi)| Some(!meets(lo?, hi?))).collect()));
        }
    };
    if value.is_null(0) {
        return Ok(None);
    }
    let conv = |a: &ArrayRef| -> Result<ArrayRef> {
        Ok(match cast {
            Some(t) if a.data_type() != *t => arrow::compute::cast(a, t)?,
            // The file may hold a decimal at another width than the table stores it in.
            None if crate::types::is_decimal(a.data_type()) && a.data_type() != value.data_type() => {
                arrow::compute::cast(a, value.data_type())?
            }
            _ => a.clone(),
        })
    };
    let (mins, maxes) = (conv(mins)?, conv(maxes)?);
    if mins.data_type() != value.data_type() {
        return Ok(None);
    }
    let v = ArrowScalar::new((*value).clone());
    // NULL statistics compare as NULL, which never excludes.
    let out = match op {
        BinaryOp::Eq => arrow::compute::or_kleene(&cmp::gt(&mins, &v)?, &cmp::lt(&maxes, &v)?)?,
        BinaryOp::Lt => cmp::gt_eq(&mins, &v)?,
        BinaryOp::LtEq => cmp::gt(&mins, &v)?,
        BinaryOp::Gt => cmp::lt_eq(&maxes, &v)?,
        BinaryOp::GtEq => cmp::lt(&maxes, &v)?,
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// What pruning kept of a scan's morsels.
pub struct Pruned {
    pub morsels: Vec<Morsel>,
    /// Morsels (row groups) dropped whole.
    pub row_groups_pruned: usize,
    /// Rows inside kept row groups that will not be read.
    pub rows_skipped: usize,
}

/// One file's footer (with its page index, if it has one) and which of its row groups the filter
/// rules out.
struct FileStats {
    meta: parquet::arrow::arrow_reader::ArrowReaderMetadata,
    skip_row_group: Vec<bool>,
    has_page_index: bool,
}

/// Drops the morsels whose row groups cannot hold a row passing `filter` (over the scan's projected
/// columns, which are `projection` of `table`), then narrows each remaining morsel (one row group) to
/// the rows of pages that may pass, using the page index; a morsel left with no rows is dropped too.
/// Pages of different columns cover different rows, so each conjunct excludes the row ranges of its
/// own column's pages, and a row is read when no conjunct excludes it. Each file's footer is read once.
pub fn prune(morsels: Vec<Morsel>, filter: &Expr, table: &Schema, projection: &[usize]) -> Result<Pruned> {
    let (kept, pruned) = prune_each(morsels, filter, &[], table, projection)?;
    Ok(Pruned { morsels: kept.into_iter().flatten().collect(), ..pruned })
}

/// `prune`, morsel by morsel: each one kept (perhaps narrowed to fewer rows) or `None`, in order,
/// and the counts (`Pruned::morsels` left empty). A morsel already narrowed stays within its rows.
/// `keys`: columns whose value must also be one of a set of keys (row groups and pages holding
/// none of the keys between their min and max are skipped).
pub fn prune_each(
    morsels: Vec<Morsel>,
    filter: &Expr,
    keys: &[(usize, KeysMeet)],
    table: &Schema,
    projection: &[usize],
) -> Result<(Vec<Option<Morsel>>, Pruned)> {
    let conjuncts: Vec<Expr> = filter.clone().conjuncts();
    let mut bounds: Vec<Bound> = conjuncts.iter().filter_map(bound).collect();
    bounds.extend(keys.iter().map(|(column, meets)| Bound { column: *column, test: Test::Keys(*meets) }));
    if bounds.is_empty() {
        return Ok((morsels.into_iter().map(Some).collect(), Pruned { morsels: vec![], row_groups_pruned: 0, rows_skipped: 0 }));
    }
    let names: Vec<&str> = bounds.iter().map(|b| table.field(projection[b.column]).name().as_str()).collect();
    let mut files: BTreeMap<PathBuf, FileStats> = BTreeMap::new();
    let mut out = Vec::with_capacity(morsels.len());
    let mut counts = Pruned { morsels: vec![], row_groups_pruned: 0, rows_skipped: 0 };
    for mut m in morsels {
        if !files.contains_key(&m.file) {
            let stats = file_stats(&m, &bounds, &names)?;
            files.insert(m.file.clone(), stats);
        }
        let file = &files[&m.file];
        if m.row_groups.as_ref().is_some_and(|rgs| rgs.iter().all(|rg| file.skip_row_group.get(*rg).copied().unwrap_or(false))) {
            counts.row_groups_pruned += 1;
            out.push(None);
            continue;
        }
        let (Some([rg]), Some(total), true) = (m.row_groups.as_deref(), m.rows, file.has_page_index) else {
            out.push(Some(m));
            continue;
        };
        let excluded_rows = excluded_pages(&file.meta, &bounds, &names, *rg)?;
        if excluded_rows.is_empty() {
            out.push(Some(m));
            continue;
        }
        let mut read = complement(excluded_rows, total);
        if let Some(before) = &m.rows_to_read {
            read = intersect(before, &read);
        }
        let reading: usize = read.iter().map(|r| r.len()).sum();
        let before: usize = m.rows_to_read.as_ref().map_or(total, |r| r.iter().map(|r| r.len()).sum());
        counts.rows_skipped += before - reading;
        if reading > 0 {
            m.rows_to_read = Some(read);
            m.parquet = Some(file.meta.clone());
            out.push(Some(m));
        } else {
            out.push(None);
        }
    }
    Ok((out, counts))
}

/// Reads the footer and page index of `m`'s file (unless `m` carries them) and marks the row groups
/// some bound rules out.
fn file_stats(m: &Morsel, bounds: &[Bound], names: &[&str]) -> Result<FileStats> {
    let meta = match &m.parquet {
        Some(meta) if meta.metadata().column_index().is_some() => meta.clone(),
        _ => riffle_formats::parquet_metadata_with_page_index(&m.file)?,
    };
    let has_page_index = meta.metadata().column_index().is_some() && meta.metadata().offset_index().is_some();
    let mut skip_row_group = vec![false; meta.metadata().num_row_groups()];
    for (b, s) in bounds.iter().zip(riffle_formats::parquet_stats(&meta, names)) {
        let Some(s) = s else { continue };
        if let Some(ex) = excluded(b, &s.mins, &s.maxes)? {
            for (skip, x) in skip_row_group.iter_mut().zip(ex.iter()) {
                if x == Some(true) {
                    *skip = true;
                }
            }
        }
    }
    Ok(FileStats { meta, skip_row_group, has_page_index })
}

/// Row ranges of row group `rg` that lie in pages some bound rules out (possibly overlapping).
fn excluded_pages(
    meta: &parquet::arrow::arrow_reader::ArrowReaderMetadata,
    bounds: &[Bound],
    names: &[&str],
    rg: usize,
) -> Result<Vec<std::ops::Range<usize>>> {
    let mut out = Vec::new();
    for (b, name) in bounds.iter().zip(names) {
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
    Ok(out)
}

/// The rows in both `a` and `b`, each ascending and disjoint.
fn intersect(a: &[std::ops::Range<usize>], b: &[std::ops::Range<usize>]) -> Vec<std::ops::Range<usize>> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (start, end) = (a[i].start.max(b[j].start), a[i].end.min(b[j].end));
        if start < end {
            out.push(start..end);
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
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
    use super::{complement, intersect};

    #[test]
    fn intersect_of_ascending_ranges() {
        assert_eq!(intersect(&[0..4, 6..10], &[2..7, 9..12]), vec![2..4, 6..7, 9..10]);
        assert!(intersect(&[0..2, 5..6], &[2..4, 7..9]).is_empty());
    }

    #[test]
    fn complement_of_overlapping_ranges() {
        assert_eq!(complement(vec![5..8, 0..2, 6..10], 12), vec![2..5, 10..12]);
        assert!(complement(vec![0..6, 6..12], 12).is_empty());
        assert_eq!(complement(vec![], 3), vec![0..3]);
    }
}

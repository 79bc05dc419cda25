//! Skips Parquet row groups whose statistics prove a scan filter false for every row.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow::array::{Array, ArrayRef, BooleanArray, Scalar as ArrowScalar};
use arrow::compute::kernels::cmp;
use arrow::datatypes::Schema;
use riffle_formats::{ColumnStats, Morsel};

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

/// Which row groups `b` rules out, given the column's statistics.
fn excluded(b: &Bound, stats: &ColumnStats) -> Result<Option<BooleanArray>> {
    if b.value.is_null(0) {
        return Ok(None);
    }
    let conv = |a: &ArrayRef| -> Result<ArrayRef> {
        Ok(match b.cast {
            Some(t) if a.data_type() != t => arrow::compute::cast(a, t)?,
            _ => a.clone(),
        })
    };
    let (mins, maxes) = (conv(&stats.mins)?, conv(&stats.maxes)?);
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
            if let Some(ex) = excluded(b, s)? {
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

//! Common subexpressions: a list of expressions evaluated over the same batches computes a subtree that
//! occurs more than once only once per batch (TPC-H Q1 sums `l_extendedprice * (1 - l_discount)` alone
//! and inside `… * (1 + l_tax)`).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema};

use crate::error::Result;
use crate::eval::evaluate;
use crate::logical::Expr;

/// Expressions rewritten so each repeated subtree is read as an extra column computed first.
#[derive(Debug, Clone)]
pub struct ExprList {
    /// Repeated subtrees, smallest first; each may read the ones before it (as columns past the input's).
    shared: Vec<Expr>,
    exprs: Vec<Expr>,
}

impl ExprList {
    pub fn new(exprs: &[Expr]) -> ExprList {
        let mut counts: Vec<(Expr, usize)> = vec![];
        for e in exprs {
            count_subtrees(e, &mut counts);
        }
        let mut shared: Vec<Expr> = counts.into_iter().filter(|(_, n)| *n > 1).map(|(e, _)| e).collect();
        shared.sort_by_key(size);
        if shared.is_empty() {
            return ExprList { shared, exprs: exprs.to_vec() };
        }
        // Columns past the input's are the shared values; the input width is only known per batch, so
        // they are numbered from a base far above any real column and renumbered at evaluation.
        let rewritten_shared = shared.iter().enumerate().map(|(k, e)| replace_shared(e.clone(), &shared[..k])).collect();
        let exprs = exprs.iter().map(|e| replace_shared(e.clone(), &shared)).collect();
        ExprList { shared: rewritten_shared, exprs }
    }

    pub fn exprs(&self) -> &[Expr] {
        &self.exprs
    }

    /// Every expression's column over `batch`.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        if self.shared.is_empty() {
            return self.exprs.iter().map(|e| evaluate(e, batch)).collect();
        }
        let width = batch.num_columns();
        let at = |e: &Expr| e.clone().remap(&|i| if i >= SHARED_BASE { width + i - SHARED_BASE } else { i });
        let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
        let mut columns = batch.columns().to_vec();
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let mut extended = batch.clone();
        for (k, e) in self.shared.iter().enumerate() {
            let value = evaluate(&at(e), &extended)?;
            fields.push(Arc::new(Field::new(format!("#shared{k}"), value.data_type().clone(), true)));
            columns.push(value);
            extended = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields.clone())), columns.clone(), &options)?;
        }
        self.exprs.iter().map(|e| evaluate(&at(e), &extended)).collect()
    }
}

/// Where shared values are numbered in rewritten expressions.
const SHARED_BASE: usize = usize::MAX / 2;

fn size(e: &Expr) -> usize {
    1 + e.children().iter().map(|c| size(c)).sum::<usize>()
}

/// Counts the subtrees worth sharing: ones that compute something from columns. CASE branches and
/// their insides are left alone: a branch may only be valid for the rows that take it.
fn count_subtrees(e: &Expr, counts: &mut Vec<(Expr, usize)>) {
    if matches!(e, Expr::Column(_) | Expr::Literal(_) | Expr::Case { .. }) || e.is_volatile() {
        return;
    }
    let mut cols = vec![];
    e.columns(&mut cols);
    if cols.is_empty() {
        return;
    }
    match counts.iter_mut().find(|(c, _)| c == e) {
        Some((_, n)) => *n += 1,
        None => counts.push((e.clone(), 1)),
    }
    for c in e.children() {
        count_subtrees(c, counts);
    }
}

/// Top-down: a node equal to a shared subtree becomes a read of its column.
fn replace_shared(e: Expr, shared: &[Expr]) -> Expr {
    if let Some(k) = shared.iter().position(|s| *s == e) {
        return Expr::Column(SHARED_BASE + k);
    }
    match e.map_children::<std::convert::Infallible>(&mut |c| Ok(replace_shared(c, shared))) {
        Ok(n) => n,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::{BinaryOp, Scalar};
    use arrow::array::{Array, Int64Array};

    fn lit(v: i64) -> Expr {
        Expr::lit(Scalar(Arc::new(Int64Array::from(vec![v]))))
    }

    #[test]
    fn repeated_subtrees_are_computed_once_and_answers_unchanged() {
        let price = Expr::Column(0);
        let disc = Expr::binary(BinaryOp::Sub, lit(1), Expr::Column(1));
        let net = Expr::binary(BinaryOp::Mul, price.clone(), disc);
        let gross = Expr::binary(BinaryOp::Mul, net.clone(), Expr::binary(BinaryOp::Add, lit(1), Expr::Column(2)));
        let list = ExprList::new(&[price.clone(), net.clone(), gross.clone()]);
        // `1 - d` and `p * (1 - d)` both repeat; the larger one reads the smaller one's column.
        assert_eq!(list.shared.len(), 2);
        assert_eq!(list.exprs()[1], Expr::Column(SHARED_BASE + 1));
        assert_eq!(list.exprs()[2].column_set(), vec![2, SHARED_BASE + 1]);

        let batch = RecordBatch::try_from_iter([
            ("p", Arc::new(Int64Array::from(vec![10, 20, 30])) as ArrayRef),
            ("d", Arc::new(Int64Array::from(vec![0, 1, 2])) as ArrayRef),
            ("t", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        ])
        .unwrap();
        let got = list.evaluate(&batch).unwrap();
        let want: Vec<ArrayRef> = [price, net, gross].iter().map(|e| evaluate(e, &batch).unwrap()).collect();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.to_data(), w.to_data());
        }
    }

    #[test]
    fn case_branches_are_not_shared() {
        let div = Expr::binary(BinaryOp::IntDiv, lit(1), Expr::Column(0));
        let guarded = Expr::Case { branches: vec![(Expr::Column(1), div.clone())], otherwise: None };
        let list = ExprList::new(&[guarded.clone(), guarded]);
        assert!(list.shared.is_empty());
    }
}

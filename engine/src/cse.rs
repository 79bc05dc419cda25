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
    /// `exprs` over input batches of `input_width` columns; shared value `k` is read as column
    /// `input_width + k`.
    pub fn new(exprs: &[Expr], input_width: usize) -> ExprList {
        let mut counts: Vec<(Expr, usize)> = vec![];
        for e in exprs {
            count_subtrees(e, &mut counts);
        }
        let mut shared: Vec<Expr> = counts.into_iter().filter(|(_, n)| *n > 1).map(|(e, _)| e).collect();
        shared.sort_by_key(size);
        let rewritten_shared = shared.iter().enumerate().map(|(k, e)| replace_shared(e.clone(), &shared[..k], input_width)).collect();
        let exprs = exprs.iter().map(|e| replace_shared(e.clone(), &shared, input_width)).collect();
        ExprList { shared: rewritten_shared, exprs }
    }

    /// Every expression's column over `batch`.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let mut extended = batch.clone();
        if !self.shared.is_empty() {
            let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
            let mut columns = batch.columns().to_vec();
            let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            for (k, e) in self.shared.iter().enumerate() {
                let value = evaluate(e, &extended)?;
                fields.push(Arc::new(Field::new(format!("#shared{k}"), value.data_type().clone(), true)));
                columns.push(value);
                extended = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields.clone())), columns.clone(), &options)?;
            }
        }
        self.exprs.iter().map(|e| evaluate(e, &extended)).collect()
    }
}

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
fn replace_shared(e: Expr, shared: &[Expr], input_width: usize) -> Expr {
    if let Some(k) = shared.iter().position(|s| *s == e) {
        return Expr::Column(input_width + k);
    }
    match e.map_children::<std::convert::Infallible>(&mut |c| Ok(replace_shared(c, shared, input_width))) {
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
        let list = ExprList::new(&[price.clone(), net.clone(), gross.clone()], 3);
        // `1 - d` and `p * (1 - d)` both repeat; the larger one reads the smaller one's column.
        assert_eq!(list.shared.len(), 2);
        assert_eq!(list.exprs[1], Expr::Column(3 + 1));
        assert_eq!(list.exprs[2].column_set(), vec![2, 3 + 1]);

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
        let list = ExprList::new(&[guarded.clone(), guarded], 2);
        assert!(list.shared.is_empty());
    }
}

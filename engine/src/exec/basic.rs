//! Stateless streaming operators (filter, project) and LIMIT.

use arrow::array::{BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;

use super::Operator;
use crate::error::Result;
use crate::cse::ExprList;
use crate::eval::evaluate_predicate;
use crate::logical::Expr;
use crate::message::Message;

/// Keeps the rows passing every conjunct of a predicate. Conjuncts are evaluated in order, each on the
/// rows the previous ones left once those are few enough to be worth copying: a selective first
/// condition spares the later ones most of their work (TPC-H Q6 keeps 15% of rows after its date range).
pub struct FilterOp {
    conjuncts: Vec<Expr>,
}

impl FilterOp {
    pub fn new(predicate: Expr) -> FilterOp {
        FilterOp { conjuncts: predicate.conjuncts() }
    }
}

impl Operator for FilterOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if let Some(kept) = filter_conjuncts(&self.conjuncts, batch)? {
            out.push(Message::Batch(kept));
        }
        Ok(())
    }
}

/// The rows of `batch` passing every one of `conjuncts` (see `FilterOp`); `None` when no row does.
pub fn filter_conjuncts(conjuncts: &[Expr], batch: RecordBatch) -> Result<Option<RecordBatch>> {
    let mut batch = batch;
    // Rows of `batch` passing the conjuncts evaluated since it was last filtered.
    let mut mask: Option<BooleanArray> = None;
    for conjunct in conjuncts {
        let passed = evaluate_predicate(conjunct, &batch)?;
        let passed = match mask.take() {
            Some(m) => arrow::compute::and(&m, &passed)?,
            None => passed,
        };
        let kept = passed.true_count();
        if kept == 0 {
            return Ok(None);
        }
        if kept * 2 < batch.num_rows() {
            batch = filter_record_batch(&batch, &passed)?;
        } else if kept < batch.num_rows() {
            mask = Some(passed);
        }
    }
    if let Some(m) = mask {
        batch = filter_record_batch(&batch, &m)?;
    }
    Ok(Some(batch))
}

pub struct ProjectOp {
    pub exprs: ExprList,
    pub schema: SchemaRef,
}

impl Operator for ProjectOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let columns = self.exprs.evaluate(&batch)?;
        let columns = columns
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { Ok(arrow::compute::cast(&c, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        out.push(Message::Batch(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?));
        Ok(())
    }
}

/// OFFSET `skip` then at most `fetch` rows. Runs in a single partition so the count is global.
pub struct LimitOp {
    pub skip: usize,
    pub fetch: Option<usize>,
}

impl Operator for LimitOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let mut batch = batch;
        if self.skip > 0 {
            let n = self.skip.min(batch.num_rows());
            self.skip -= n;
            batch = batch.slice(n, batch.num_rows() - n);
        }
        if let Some(f) = &mut self.fetch {
            let n = (*f).min(batch.num_rows());
            *f -= n;
            batch = batch.slice(0, n);
        }
        if batch.num_rows() > 0 {
            out.push(Message::Batch(batch));
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.fetch == Some(0)
    }
}

//! Stateless streaming operators (filter, project) and LIMIT.

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;

use super::Operator;
use crate::error::Result;
use crate::cse::ExprList;
use crate::eval::evaluate_predicate;
use crate::logical::Expr;
use crate::message::Message;

pub struct FilterOp {
    pub predicate: Expr,
}

impl Operator for FilterOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let mask = evaluate_predicate(&self.predicate, &batch)?;
        let kept = if mask.true_count() == batch.num_rows() { batch } else { filter_record_batch(&batch, &mask)? };
        if kept.num_rows() > 0 {
            out.push(Message::Batch(kept));
        }
        Ok(())
    }
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

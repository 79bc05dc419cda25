//! Stateless streaming operators (filter, project) and LIMIT.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int32Array, RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};

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
    /// Columns a scan reads dictionary-encoded for this filter alone: decoded once it has run.
    decode: Vec<usize>,
}

impl FilterOp {
    pub fn new(predicate: Expr) -> FilterOp {
        FilterOp { conjuncts: predicate.conjuncts(), decode: vec![] }
    }

    /// The filter of a scan that reads columns `decode` dictionary-encoded for it: a condition on one
    /// of them alone is evaluated once per distinct value (TPC-H Q12's `l_shipmode IN ('MAIL',
    /// 'SHIP')` on 7 strings, not 60 M), and they are decoded for the rows kept only.
    pub fn over_dictionaries(predicate: Expr, decode: Vec<usize>) -> FilterOp {
        FilterOp { conjuncts: predicate.conjuncts(), decode }
    }
}

impl Operator for FilterOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if let Some(kept) = filter_conjuncts(&self.conjuncts, batch)? {
            out.push(Message::Batch(decoded(kept, &self.decode)?));
        }
        Ok(())
    }
}

/// `batch` with its dictionary-encoded columns among `columns` decoded to their values' type.
fn decoded(batch: RecordBatch, columns: &[usize]) -> Result<RecordBatch> {
    if !columns.iter().any(|c| matches!(batch.column(*c).data_type(), DataType::Dictionary(..))) {
        return Ok(batch);
    }
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut arrays = batch.columns().to_vec();
    for c in columns {
        if let DataType::Dictionary(_, value) = arrays[*c].data_type().clone() {
            arrays[*c] = arrow::compute::cast(&arrays[*c], &value)?;
            fields[*c] = fields[*c].clone().with_data_type(*value);
        }
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)?)
}

/// Which rows pass `conjunct`, which reads dictionary-encoded column `column` only: evaluated on the
/// dictionary's values (and one NULL, for rows without a value), then looked up by each row's key.
/// `None` when the dictionary is not smaller than half the batch (evaluating the rows costs less).
fn passed_by_dictionary(conjunct: &Expr, batch: &RecordBatch, column: usize) -> Result<Option<BooleanArray>> {
    let Some(dict) = batch.column(column).as_dictionary_opt::<Int32Type>() else { return Ok(None) };
    let values = dict.values();
    if values.len() * 2 > batch.num_rows() {
        return Ok(None);
    }
    // The values, then a NULL.
    let n = values.len() + 1;
    let with_null = arrow::compute::concat(&[values.as_ref(), arrow::array::new_null_array(values.data_type(), 1).as_ref()])?;
    let schema = batch.schema();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| if i == column { f.as_ref().clone().with_data_type(values.data_type().clone()).with_nullable(true) } else { f.as_ref().clone() })
        .collect();
    let arrays: Vec<ArrayRef> =
        fields.iter().enumerate().map(|(i, f)| if i == column { with_null.clone() } else { arrow::array::new_null_array(f.data_type(), n) }).collect();
    let options = RecordBatchOptions::new().with_row_count(Some(n));
    let per_value = evaluate_predicate(conjunct, &RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)?)?;
    let null_slot = values.len() as i32;
    let keys: Int32Array = dict.keys().iter().map(|k| Some(k.unwrap_or(null_slot))).collect();
    let passed = arrow::compute::take(&per_value, &keys, None)?;
    Ok(Some(passed.as_boolean().clone()))
}

/// The rows of `batch` passing every one of `conjuncts` (see `FilterOp`); `None` when no row does.
pub fn filter_conjuncts(conjuncts: &[Expr], batch: RecordBatch) -> Result<Option<RecordBatch>> {
    let mut batch = batch;
    // Rows of `batch` passing the conjuncts evaluated since it was last filtered.
    let mut mask: Option<BooleanArray> = None;
    for conjunct in conjuncts {
        let reads = conjunct.column_set();
        let by_dictionary = match reads[..] {
            // Once per value only if the rows would all get the same answer for it.
            [c] if !conjunct.is_volatile() => passed_by_dictionary(conjunct, &batch, c)?,
            _ => None,
        };
        let passed = match by_dictionary {
            Some(p) => p,
            None => {
                // Other conditions read the rows' values (no kernel here takes a dictionary).
                batch = decoded(batch, &reads)?;
                evaluate_predicate(conjunct, &batch)?
            }
        };
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
        // A column handed out dictionary-encoded for an aggregate above (`physical::dictionary_group_keys`)
        // passes through as it is, under its own type.
        let keeps_dictionary = |c: &ArrayRef, f: &DataType| matches!(c.data_type(), DataType::Dictionary(_, v) if v.as_ref() == f);
        let mut schema = self.schema.clone();
        if columns.iter().zip(self.schema.fields()).any(|(c, f)| keeps_dictionary(c, f.data_type())) {
            let fields: Vec<Field> = columns
                .iter()
                .zip(self.schema.fields())
                .map(|(c, f)| {
                    let t = if keeps_dictionary(c, f.data_type()) { c.data_type() } else { f.data_type() };
                    f.as_ref().clone().with_data_type(t.clone())
                })
                .collect();
            schema = Arc::new(Schema::new(fields));
        }
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { Ok(arrow::compute::cast(&c, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        out.push(Message::Batch(RecordBatch::try_new_with_options(
            schema,
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

//! Changelogs: what an updating result emits. A GROUP BY over a stream without end can never give a
//! final row per group; it emits each group's row as it changes, as Flink does: `+I` a new row, `-U`
//! the old row of an update and `+U` its new row, `-D` a row withdrawn. A changelog's batches carry
//! the kind of each row in one more column, last, named `op` (Flink's RowKind).
//!
//! Planning: [`plan`] turns the GROUP BYs of a stream into updating aggregates, passes the `op` column
//! through filters, projections and unions, and lets every other operator see final rows only, by a
//! `Materialize` below it that applies the changelog (possible only over bounded input).

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int8Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef};

use crate::error::{Result, RiffleError};
use crate::logical::Expr;
use crate::physical::PhysicalPlan;

/// The kind of a changelog row, as stored in the `op` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum RowKind {
    Insert = 0,
    UpdateBefore = 1,
    UpdateAfter = 2,
    Delete = 3,
}

impl RowKind {
    pub fn code(self) -> i8 {
        self as i8
    }

    /// How Flink prints it.
    pub fn symbol(self) -> &'static str {
        match self {
            RowKind::Insert => "+I",
            RowKind::UpdateBefore => "-U",
            RowKind::UpdateAfter => "+U",
            RowKind::Delete => "-D",
        }
    }

    fn of_code(code: i8) -> Result<RowKind> {
        Ok(match code {
            0 => RowKind::Insert,
            1 => RowKind::UpdateBefore,
            2 => RowKind::UpdateAfter,
            3 => RowKind::Delete,
            other => return Err(RiffleError::exec(format!("changelog row kind {other} is none of +I, -U, +U, -D"))),
        })
    }
}

/// The name of the row-kind column.
pub const OP_COLUMN: &str = "op";

pub fn op_field() -> Field {
    Field::new(OP_COLUMN, DataType::Int8, false)
}

/// `schema` with the row-kind column appended.
pub fn with_op(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(op_field());
    Arc::new(Schema::new(fields))
}

/// `schema` without its last (row-kind) column.
pub fn without_op(schema: &Schema) -> SchemaRef {
    let n = schema.fields().len().saturating_sub(1);
    Arc::new(Schema::new(schema.fields()[..n].iter().map(|f| f.as_ref().clone()).collect::<Vec<_>>()))
}

/// +1 for each row a changelog batch adds (`+I`, `+U`), -1 for each it takes back (`-U`, `-D`).
pub fn signs(batch: &RecordBatch) -> Result<Vec<i64>> {
    let ops = op_codes(batch)?;
    ops.values().iter().map(|c| Ok(if matches!(RowKind::of_code(*c)?, RowKind::Insert | RowKind::UpdateAfter) { 1 } else { -1 })).collect()
}

fn op_codes(batch: &RecordBatch) -> Result<&Int8Array> {
    batch
        .columns()
        .last()
        .and_then(|c| c.as_primitive_opt::<Int8Type>())
        .ok_or_else(|| RiffleError::exec("a changelog batch without its op column"))
}

/// A changelog batch as people read it: the row kind first, as `+I`/`-U`/`+U`/`-D`, then the row.
pub fn for_display(batch: &RecordBatch) -> Result<RecordBatch> {
    let kinds = op_codes(batch)?.values().iter().map(|c| RowKind::of_code(*c).map(RowKind::symbol)).collect::<Result<Vec<_>>>()?;
    let n = batch.num_columns() - 1;
    let mut fields = vec![Field::new(OP_COLUMN, DataType::Utf8, false)];
    fields.extend(batch.schema().fields()[..n].iter().map(|f| f.as_ref().clone()));
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(kinds))];
    columns.extend(batch.columns()[..n].iter().cloned());
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// Plans the updating results of a stream. With `every_group_by`, GROUP BYs over bounded input
/// update too (as in Flink's streaming mode), not only those over tables without end.
pub fn plan(plan: PhysicalPlan, every_group_by: bool) -> Result<PhysicalPlan> {
    let plan = match plan {
        PhysicalPlan::HashAggregate { input, group, aggs, window_end, schema, estimated_rows } => {
            let input = self::plan(*input, every_group_by)?;
            let input_changelog = input.changelog();
            match window_end {
                // A window aggregate's rows are final once emitted, over rows that are.
                Some(end) if !input_changelog => {
                    PhysicalPlan::HashAggregate { input: Box::new(input), group, aggs, window_end: Some(end), schema, estimated_rows }
                }
                _ if input_changelog || every_group_by || input.unbounded() => {
                    PhysicalPlan::UpdateAggregate { input: Box::new(input), group, aggs, input_changelog, schema: with_op(&schema) }
                }
                _ => PhysicalPlan::HashAggregate { input: Box::new(input), group, aggs, window_end, schema, estimated_rows },
            }
        }
        PhysicalPlan::Filter { input, predicate } => {
            PhysicalPlan::Filter { input: Box::new(self::plan(*input, every_group_by)?), predicate }
        }
        // A changelog table read as a stream hands its changes on; where final rows are needed they
        // are applied again (`final_rows`).
        PhysicalPlan::Materialize { input, .. } if matches!(input.as_ref(), PhysicalPlan::Scan { .. }) && input.changelog() => *input,
        PhysicalPlan::Project { input, mut exprs, schema } => {
            let input = self::plan(*input, every_group_by)?;
            if !input.changelog() {
                return Ok(PhysicalPlan::Project { input: Box::new(input), exprs, schema });
            }
            exprs.push(Expr::Column(input.schema().fields().len() - 1));
            PhysicalPlan::Project { input: Box::new(input), exprs, schema: with_op(&schema) }
        }
        PhysicalPlan::Union { inputs, schema } => {
            let inputs = inputs.into_iter().map(|i| self::plan(i, every_group_by)).collect::<Result<Vec<_>>>()?;
            if !inputs.iter().any(|i| i.changelog()) {
                return Ok(PhysicalPlan::Union { inputs, schema });
            }
            // Appended rows are inserts.
            let inputs = inputs.into_iter().map(|i| if i.changelog() { i } else { inserts(i) }).collect();
            PhysicalPlan::Union { inputs, schema: with_op(&schema) }
        }
        other => {
            let what = operator_words(&other);
            let mut other = other;
            for input in other.inputs_mut() {
                let planned = self::plan(input.take(), every_group_by)?;
                *input = final_rows(planned, what)?;
            }
            other
        }
    };
    Ok(plan)
}

/// What an operator is, in the words of SQL.
fn operator_words(plan: &PhysicalPlan) -> &'static str {
    match plan {
        PhysicalPlan::Sort { fetch: Some(_), .. } => "ORDER BY … LIMIT",
        PhysicalPlan::Sort { .. } => "ORDER BY",
        PhysicalPlan::Limit { .. } => "LIMIT",
        PhysicalPlan::HashJoin { .. } | PhysicalPlan::NestedLoopJoin { .. } | PhysicalPlan::StreamJoin { .. } => "a join",
        PhysicalPlan::Window { .. } | PhysicalPlan::RankFilter { .. } => "a window function (OVER)",
        PhysicalPlan::SessionTvf { .. } | PhysicalPlan::SessionAggregate { .. } => "SESSION windows",
        PhysicalPlan::WindowTvf { .. } => "a window table function",
        PhysicalPlan::HashAggregate { .. } => "a window aggregate",
        _ => "this operator",
    }
}

/// `plan`'s rows as a changelog of inserts.
pub fn inserts(plan: PhysicalPlan) -> PhysicalPlan {
    let schema = plan.schema();
    let mut exprs: Vec<Expr> = (0..schema.fields().len()).map(Expr::Column).collect();
    exprs.push(Expr::Literal(crate::logical::Scalar(Arc::new(Int8Array::from(vec![RowKind::Insert.code()])))));
    PhysicalPlan::Project { input: Box::new(plan), exprs, schema: with_op(&schema) }
}

/// The final rows of `plan` for an operator (`what`) that takes no changelog: the changelog applied,
/// which needs its end.
pub fn final_rows(plan: PhysicalPlan, what: &str) -> Result<PhysicalPlan> {
    if !plan.changelog() {
        return Ok(plan);
    }
    if plan.unbounded() {
        return Err(RiffleError::NotSupported(format!(
            "{what} over an updating result (a GROUP BY over a table without end, which emits each group's row again as it changes) \
             is not supported yet; group by an event-time window instead (TUMBLE, HOP, CUMULATE), whose rows are final once emitted"
        )));
    }
    let schema = without_op(&plan.schema());
    Ok(PhysicalPlan::Materialize { input: Box::new(plan), schema })
}

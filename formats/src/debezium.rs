//! Flink's `debezium-json` format: a changelog as JSON lines, one change per line, in Debezium's
//! envelope `{"before": row or null, "after": row or null, "op": …}`.
//!
//! In memory a changelog is the rows' columns plus a last Int8 column of row kinds, Flink's RowKind
//! byte values ([`INSERT`], [`UPDATE_BEFORE`], [`UPDATE_AFTER`], [`DELETE`]). Written, as Flink
//! writes it, an insert or an update's new row is `"op":"c"` with `after`, a delete or an update's old
//! row `"op":"d"` with `before` (Flink does not pair them into one `"u"`). Read, `"c"` and `"r"` (a
//! snapshot read) insert `after`, `"u"` takes `before` back and inserts `after`, `"d"` takes
//! `before` back; other fields of the envelope (`source`, `ts_ms`, …) are ignored.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int8Array, RecordBatch, StringArray, StructArray, UInt32Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

pub const INSERT: i8 = 0;
pub const UPDATE_BEFORE: i8 = 1;
pub const UPDATE_AFTER: i8 = 2;
pub const DELETE: i8 = 3;

/// The envelope of rows of `data`'s columns (every field nullable: a change has no `before` or no `after`).
pub fn envelope_schema(data: &Schema) -> SchemaRef {
    let row = DataType::Struct(nullable(data.fields()));
    Arc::new(Schema::new(vec![
        Field::new("before", row.clone(), true),
        Field::new("after", row, true),
        Field::new("op", DataType::Utf8, false),
    ]))
}

fn nullable(fields: &Fields) -> Fields {
    fields.iter().map(|f| f.as_ref().clone().with_nullable(true)).collect()
}

/// A changelog batch (its last column the row kinds) as envelopes.
pub fn encode(batch: &RecordBatch) -> Result<RecordBatch, String> {
    let n = batch.num_columns().checked_sub(1).ok_or("a changelog batch without its row kinds")?;
    let kinds = batch.column(n).as_primitive_opt::<arrow::datatypes::Int8Type>().ok_or("the last column of a changelog batch is not its row kinds")?;
    let schema = batch.schema();
    let fields = nullable(&Fields::from(schema.fields()[..n].to_vec()));
    let data: Vec<ArrayRef> = batch.columns()[..n].to_vec();
    let mut ops = Vec::with_capacity(kinds.len());
    let (mut before, mut after) = (Vec::with_capacity(kinds.len()), Vec::with_capacity(kinds.len()));
    for k in kinds.values() {
        let added = match *k {
            INSERT | UPDATE_AFTER => true,
            UPDATE_BEFORE | DELETE => false,
            other => return Err(format!("row kind {other} is none of +I, -U, +U, -D")),
        };
        ops.push(if added { "c" } else { "d" });
        before.push(!added);
        after.push(added);
    }
    let row = |valid: Vec<bool>| -> Result<ArrayRef, String> {
        let s = StructArray::try_new_with_length(fields.clone(), data.clone(), Some(NullBuffer::from(valid)), kinds.len()).map_err(|e| e.to_string())?;
        Ok(Arc::new(s))
    };
    let columns = vec![row(before)?, row(after)?, Arc::new(StringArray::from(ops)) as ArrayRef];
    RecordBatch::try_new(envelope_schema(&Schema::new(fields.clone())), columns).map_err(|e| e.to_string())
}

/// Envelopes read back as a changelog batch: the columns `projection` picks of the rows, then the
/// row kinds, as `out` (the projected fields and an Int8 kind column).
pub fn decode(envelopes: &RecordBatch, projection: &[usize], out: &SchemaRef) -> Result<RecordBatch, String> {
    let part = |name: &str| -> Result<&StructArray, String> {
        envelopes.column_by_name(name).and_then(|c| c.as_struct_opt()).ok_or_else(|| format!("a change without its '{name}' field"))
    };
    let (before, after) = (part("before")?, part("after")?);
    let ops = envelopes.column_by_name("op").and_then(|c| c.as_string_opt::<i32>()).ok_or("a change without its 'op' field")?;
    let rows = envelopes.num_rows();
    // Each output row: where it comes from (`before` rows first, then `after` rows) and its kind.
    let (mut take, mut kinds) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for i in 0..rows {
        let has = |s: &StructArray, side: &str| -> Result<(), String> {
            if s.is_valid(i) {
                Ok(())
            } else {
                Err(format!("change {} of the batch (op '{}') has no '{side}' row", i + 1, ops.value(i)))
            }
        };
        if ops.is_null(i) {
            return Err(format!("change {} of the batch has no 'op'", i + 1));
        }
        match ops.value(i) {
            "c" | "r" => {
                has(after, "after")?;
                take.push((rows + i) as u32);
                kinds.push(INSERT);
            }
            "u" => {
                has(before, "before")?;
                has(after, "after")?;
                take.extend([i as u32, (rows + i) as u32]);
                kinds.extend([UPDATE_BEFORE, UPDATE_AFTER]);
            }
            "d" => {
                has(before, "before")?;
                take.push(i as u32);
                kinds.push(DELETE);
            }
            other => return Err(format!("op '{other}' is none of Debezium's 'c', 'r', 'u', 'd'")),
        }
    }
    let take = UInt32Array::from(take);
    let mut columns = Vec::with_capacity(projection.len() + 1);
    for (c, want) in projection.iter().zip(out.fields()) {
        let both = arrow::compute::concat(&[before.column(*c).as_ref(), after.column(*c).as_ref()]).map_err(|e| e.to_string())?;
        let column = arrow::compute::take(&both, &take, None).map_err(|e| e.to_string())?;
        columns.push(if column.data_type() == want.data_type() { column } else { arrow::compute::cast(&column, want.data_type()).map_err(|e| e.to_string())? });
    }
    columns.push(Arc::new(Int8Array::from(kinds)));
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(take.len()));
    RecordBatch::try_new_with_options(out.clone(), columns, &options).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[test]
    fn changes_go_out_as_flink_writes_them_and_come_back() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("n", DataType::Int64, true),
            Field::new("op", DataType::Int8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 1, 1, 2])),
                Arc::new(Int64Array::from(vec![Some(5), Some(5), None, Some(7)])),
                Arc::new(Int8Array::from(vec![INSERT, UPDATE_BEFORE, UPDATE_AFTER, DELETE])),
            ],
        )
        .expect("batch");
        let env = encode(&batch).expect("encode");
        let mut text = Vec::new();
        {
            let mut w = arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow::json::writer::LineDelimited>(&mut text);
            w.write(&env).expect("write");
            w.finish().expect("finish");
        }
        let text = String::from_utf8(text).expect("utf8");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                r#"{"before":null,"after":{"k":1,"n":5},"op":"c"}"#,
                r#"{"before":{"k":1,"n":5},"after":null,"op":"d"}"#,
                r#"{"before":null,"after":{"k":1,"n":null},"op":"c"}"#,
                r#"{"before":{"k":2,"n":7},"after":null,"op":"d"}"#,
            ]
        );
        // Read back with a "u" (old and new row in one change) added.
        let text = format!("{text}{}\n", r#"{"before":{"k":3,"n":1},"after":{"k":3,"n":2},"op":"u","ts_ms":5}"#);
        let data = Schema::new(vec![Field::new("k", DataType::Int64, true), Field::new("n", DataType::Int64, true)]);
        let mut reader = arrow::json::ReaderBuilder::new(envelope_schema(&data)).build(text.as_bytes()).expect("reader");
        let env = reader.next().expect("a batch").expect("valid");
        let out = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true), Field::new("op", DataType::Int8, false)]));
        let back = decode(&env, &[1], &out).expect("decode");
        let n = back.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(n.iter().collect::<Vec<_>>(), [Some(5), Some(5), None, Some(7), Some(1), Some(2)]);
        let kinds = back.column(1).as_primitive::<arrow::datatypes::Int8Type>();
        assert_eq!(kinds.values().to_vec(), [INSERT, DELETE, INSERT, DELETE, UPDATE_BEFORE, UPDATE_AFTER]);
        let bad = r#"{"before":null,"after":null,"op":"d"}"#;
        let env = arrow::json::ReaderBuilder::new(envelope_schema(&data)).build(bad.as_bytes()).expect("reader").next().expect("batch").expect("valid");
        assert_eq!(decode(&env, &[0], &out).unwrap_err(), "change 1 of the batch (op 'd') has no 'before' row");
    }
}

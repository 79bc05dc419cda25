//! Text rendering of values and results: the `riffle sql` output contract (CSV, JSON, table).

use std::io::Write;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::{Result, RiffleError};

/// A value as text, `None` for NULL: booleans `true`/`false`, dates `YYYY-MM-DD`, timestamps
/// `YYYY-MM-DD HH:MM:SS[.ffffff]`, decimals and floats in plain notation.
pub fn format_value(array: &ArrayRef, row: usize) -> Result<Option<String>> {
    if array.is_null(row) || *array.data_type() == DataType::Null {
        return Ok(None);
    }
    Ok(Some(match array.data_type() {
        DataType::Float64 => format_float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => format_float32(array.as_primitive::<Float32Type>().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let v = array.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            match v.value_as_datetime(row) {
                Some(dt) => {
                    let base = dt.format("%Y-%m-%d %H:%M:%S").to_string();
                    let micros = v.value(row).rem_euclid(1_000_000);
                    if micros == 0 { base } else { format!("{base}.{}", format!("{micros:06}").trim_end_matches('0')) }
                }
                None => v.value(row).to_string(),
            }
        }
        DataType::Binary => {
            let b = array.as_binary::<i32>().value(row);
            b.iter()
                .map(|c| if c.is_ascii_graphic() || *c == b' ' { (*c as char).to_string() } else { format!("\\x{c:02X}") })
                .collect()
        }
        _ => {
            let opts = FormatOptions::default().with_display_error(false);
            let f = ArrayFormatter::try_new(array.as_ref(), &opts)?;
            f.value(row).to_string()
        }
    }))
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        // Rust prints the shortest representation that round-trips, never in exponent notation.
        format!("{v}")
    }
}

fn format_float32(v: f32) -> String {
    if v.is_finite() { format!("{v}") } else { format_float(v as f64) }
}

/// A CSV field per RFC 4180: quoted when it holds a delimiter, quote or line break; the empty string
/// is `""` so that it differs from NULL (an empty unquoted field).
pub fn csv_field(v: Option<&str>) -> String {
    match v {
        None => String::new(),
        Some("") => "\"\"".into(),
        Some(s) if s.contains([',', '"', '\n', '\r']) => format!("\"{}\"", s.replace('"', "\"\"")),
        Some(s) => s.to_string(),
    }
}

/// Writes a result as CSV with one header row.
pub fn write_csv(out: &mut dyn Write, schema: &arrow::datatypes::Schema, batches: &[RecordBatch]) -> Result<()> {
    let io = |e: std::io::Error| RiffleError::exec(format!("cannot write output: {e}"));
    let header: Vec<String> = schema.fields().iter().map(|f| csv_field(Some(f.name()))).collect();
    writeln!(out, "{}", header.join(",")).map_err(io)?;
    for b in batches {
        for row in 0..b.num_rows() {
            let mut fields = Vec::with_capacity(b.num_columns());
            for c in b.columns() {
                fields.push(csv_field(format_value(c, row)?.as_deref()));
            }
            writeln!(out, "{}", fields.join(",")).map_err(io)?;
        }
    }
    Ok(())
}

/// Writes a result as a JSON array of objects.
pub fn write_json(out: &mut dyn Write, batches: &[RecordBatch]) -> Result<()> {
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    let bytes = w.into_inner();
    let io = |e: std::io::Error| RiffleError::exec(format!("cannot write output: {e}"));
    if bytes.is_empty() {
        writeln!(out, "[]").map_err(io)?;
    } else {
        out.write_all(&bytes).map_err(io)?;
        writeln!(out).map_err(io)?;
    }
    Ok(())
}

/// Writes a result as an aligned table.
pub fn write_table(out: &mut dyn Write, schema: &arrow::datatypes::Schema, batches: &[RecordBatch]) -> Result<()> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| Ok(format_value(c, r)?.unwrap_or_else(|| "NULL".into())))
                    .collect::<Result<_>>()?,
            );
        }
    }
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(v.chars().count());
        }
    }
    let io = |e: std::io::Error| RiffleError::exec(format!("cannot write output: {e}"));
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!(" {c:<w$} ", w = *w)).collect();
        format!("|{}|", parts.join("|"))
    };
    let sep = format!("+{}+", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    writeln!(out, "{sep}\n{}\n{sep}", line(&header)).map_err(io)?;
    for r in &rows {
        writeln!(out, "{}", line(r)).map_err(io)?;
    }
    writeln!(out, "{sep}").map_err(io)?;
    writeln!(out, "({} row{})", rows.len(), if rows.len() == 1 { "" } else { "s" }).map_err(io)?;
    Ok(())
}

/// A duration in microseconds in its largest whole unit: `10min`, `5s`, `1500ms`.
pub fn duration(micros: i64) -> String {
    const UNITS: [(i64, &str); 6] =
        [(86_400_000_000, "d"), (3_600_000_000, "h"), (60_000_000, "min"), (1_000_000, "s"), (1_000, "ms"), (1, "us")];
    match UNITS.iter().find(|(u, _)| micros != 0 && micros % u == 0) {
        Some((u, name)) => format!("{}{name}", micros / u),
        None => "0s".to_string(),
    }
}

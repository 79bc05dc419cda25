//! Test support: Riffle as a sqllogictest database, and the modes every `.slt` file runs in.

use arrow::datatypes::DataType;
use riffle_engine::format::format_value;
use riffle_engine::{ExecConfig, RiffleError, Session};
use sqllogictest::{DBOutput, DefaultColumnType};

/// One way of running the same SQL; every mode must give the same answers.
#[derive(Debug, Clone)]
pub struct Mode {
    pub name: String,
    pub config: ExecConfig,
}

/// Threads 1 and 2 × default and tiny batches × batch and stream (bounded input fed as a stream
/// that ends, with watermarks and barriers interleaved), and a memory budget of one byte (once as a
/// batch, once as a stream), which makes every sort and grouped aggregate spill every batch; and twice
/// as a stream whose every GROUP BY updates (a changelog, applied before any operator that needs final
/// rows, and at the result), and once more so with every spillable operator forced to spill.
pub fn all_modes() -> Vec<Mode> {
    let mut modes = Vec::new();
    for stream in [false, true] {
        for threads in [1, 2] {
            for batch_size in [8192, 3] {
                let name = format!("{}-t{threads}-b{batch_size}", if stream { "stream" } else { "batch" });
                modes.push(Mode { name, config: ExecConfig { threads, batch_size, stream, test_barriers: stream, ..ExecConfig::default() } });
            }
        }
    }
    for (threads, batch_size, stream) in [(1, 8192, false), (2, 3, true)] {
        let name = format!("spill-{}-t{threads}-b{batch_size}", if stream { "stream" } else { "batch" });
        let config = ExecConfig { threads, batch_size, stream, test_barriers: stream, memory_limit: 1, ..ExecConfig::default() };
        modes.push(Mode { name, config });
    }
    for (threads, batch_size) in [(1, 8192), (2, 3)] {
        let name = format!("changelog-t{threads}-b{batch_size}");
        modes.push(Mode { name, config: ExecConfig { threads, batch_size, stream: true, changelog: true, test_barriers: true, ..ExecConfig::default() } });
    }
    // Every updating GROUP BY writes its groups to disk at every batch and holds their rows (what
    // cannot spill, such as a changelog's applied result, takes what it needs).
    let config = ExecConfig { threads: 2, batch_size: 3, stream: true, changelog: true, test_barriers: true, force_spill: true, ..ExecConfig::default() };
    modes.push(Mode { name: "spill-changelog-t2-b3".into(), config });
    modes
}

pub struct RiffleDb {
    pub session: Session,
}

impl RiffleDb {
    pub fn new(config: ExecConfig) -> RiffleDb {
        RiffleDb { session: Session::new(config) }
    }
}

/// Floats are compared to 12 significant digits: parallel sums may differ in the last bits.
fn normalize_float(s: &str) -> String {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v != 0.0 => {
            let digits = 12 - 1 - v.abs().log10().floor() as i32;
            if digits <= 0 {
                return format!("{v:.0}");
            }
            let t = format!("{v:.*}", digits as usize);
            let t = if t.contains('.') { t.trim_end_matches('0').trim_end_matches('.').to_string() } else { t };
            if t == "-0" { "0".into() } else { t }
        }
        Ok(0.0) => "0".into(),
        _ => s.to_string(),
    }
}

impl sqllogictest::DB for RiffleDb {
    type Error = RiffleError;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, RiffleError> {
        let mut results = self.session.execute(sql)?;
        let Some(last) = results.pop() else { return Ok(DBOutput::StatementComplete(0)) };
        if !last.is_query {
            return Ok(DBOutput::StatementComplete(last.num_rows() as u64));
        }
        let types = last
            .schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                t if t.is_integer() => DefaultColumnType::Integer,
                DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => DefaultColumnType::FloatingPoint,
                _ => DefaultColumnType::Text,
            })
            .collect();
        let mut rows = Vec::new();
        for b in &last.batches {
            for r in 0..b.num_rows() {
                let mut row = Vec::with_capacity(b.num_columns());
                for c in b.columns() {
                    let v = format_value(c, r)?;
                    row.push(match v {
                        None => "NULL".to_string(),
                        Some(s) if s.is_empty() => "(empty)".to_string(),
                        Some(s) if matches!(c.data_type(), DataType::Float32 | DataType::Float64) => normalize_float(&s),
                        Some(s) => s,
                    });
                }
                rows.push(row);
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    fn engine_name(&self) -> &str {
        "riffle"
    }
}

pub mod answers;

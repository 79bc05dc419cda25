//! TPC-H: the 8 tables made by `tpchgen-arrow` (a Rust port of dbgen) in parts of about 2 M rows,
//! and the 22 queries with their standard qualification parameters.

use std::path::Path;

use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator, RegionGenerator,
    SupplierGenerator,
};
use tpchgen_arrow::{CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow, SupplierArrow};

use crate::{Batches, Part, Result};

/// The 22 TPC-H queries (qualification parameters), as `(name, sql)`.
pub const QUERIES: [(&str, &str); 22] = crate::queries!(
    "tpch", q01, q02, q03, q04, q05, q06, q07, q08, q09, q10, q11, q12, q13, q14, q15, q16, q17, q18, q19, q20, q21, q22
);

/// The TPC-H tables and their rows at scale factor 1 (lineitem about four per order).
pub(crate) const TABLES: [(&str, f64); 8] = [
    ("lineitem", 6_001_215.0),
    ("orders", 1_500_000.0),
    ("partsupp", 800_000.0),
    ("part", 200_000.0),
    ("customer", 150_000.0),
    ("supplier", 10_000.0),
    ("nation", 25.0),
    ("region", 5.0),
];

/// Rows per part: parts are generated (and their files written) in parallel.
const ROWS_PER_PART: f64 = 2_000_000.0;

/// Rows of a table at `sf` (nation and region do not grow with the scale factor).
pub(crate) fn table_rows(table: &str, rows_at_sf1: f64, sf: f64) -> f64 {
    if matches!(table, "nation" | "region") {
        rows_at_sf1
    } else {
        rows_at_sf1 * sf
    }
}

pub(crate) fn parts(sf: f64, out: &Path) -> Vec<Part> {
    let mut parts = Vec::new();
    for (table, rows) in TABLES {
        let n = (table_rows(table, rows, sf) / ROWS_PER_PART).ceil().max(1.0) as i32;
        for part in 1..=n {
            parts.push(Part::new(out, table, part, n));
        }
    }
    parts
}

pub(crate) fn rows(sf: f64) -> usize {
    TABLES.iter().map(|(t, rows)| table_rows(t, *rows, sf)).sum::<f64>() as usize
}

/// The batches of one part of a table.
pub(crate) fn batches(sf: f64, p: &Part) -> Result<Batches> {
    let (part, n) = (p.part, p.parts);
    Ok(match p.table {
        "lineitem" => Box::new(LineItemArrow::new(LineItemGenerator::new(sf, part, n))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(sf, part, n))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(sf, part, n))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(sf, part, n))),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(sf, part, n))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(sf, part, n))),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(sf, part, n))),
        _ => Box::new(RegionArrow::new(RegionGenerator::new(sf, part, n))),
    })
}

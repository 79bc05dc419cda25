//! TPC-DS: the 24 tables made by `tpcdsgen-arrow` (a Rust port of dsdgen, in its C-compatible
//! mode), one file per table, and the 99 queries as DuckDB's `tpcds` extension has them (standard
//! qualification parameters).

use std::path::Path;

use tpcdsgen::config::{Scaling, Session, SessionBuilder, Table};
use tpcdsgen_arrow::*;

use crate::{Batches, GenError, Part, Result};

/// The 99 TPC-DS queries, as `(name, sql)`.
pub const QUERIES: [(&str, &str); 99] = crate::queries!(
    "tpcds", q01, q02, q03, q04, q05, q06, q07, q08, q09, q10, q11, q12, q13, q14, q15, q16, q17, q18, q19, q20, q21, q22,
    q23, q24, q25, q26, q27, q28, q29, q30, q31, q32, q33, q34, q35, q36, q37, q38, q39, q40, q41, q42, q43, q44, q45, q46,
    q47, q48, q49, q50, q51, q52, q53, q54, q55, q56, q57, q58, q59, q60, q61, q62, q63, q64, q65, q66, q67, q68, q69, q70,
    q71, q72, q73, q74, q75, q76, q77, q78, q79, q80, q81, q82, q83, q84, q85, q86, q87, q88, q89, q90, q91, q92, q93, q94,
    q95, q96, q97, q98, q99
);

/// The tables the queries read (dsdgen's dbgen_version is left out, as DuckDB does).
fn tables() -> impl Iterator<Item = Table> {
    Table::values().iter().copied().filter(|t| *t != Table::DbgenVersion)
}

fn session(sf: f64) -> Result<Session> {
    SessionBuilder::new().with_scale_factor(sf).build().map_err(|e| GenError::Generator(e.to_string()))
}

/// One part per table, the biggest first (the Arrow generators make a table in one pass).
pub(crate) fn parts(sf: f64, out: &Path) -> Vec<Part> {
    let scaling = Scaling::new(sf);
    let mut tables: Vec<Table> = tables().collect();
    tables.sort_by_key(|t| std::cmp::Reverse(scaling.get_row_count(*t)));
    tables.into_iter().map(|t| Part::new(out, t.get_name(), 1, 1)).collect()
}

pub(crate) fn rows(sf: f64) -> usize {
    let scaling = Scaling::new(sf);
    tables().map(|t| scaling.get_row_count(t) as usize).sum()
}

pub(crate) fn batches(sf: f64, p: &Part) -> Result<Batches> {
    let s = session(sf)?;
    Ok(match p.table {
        "call_center" => Box::new(CallCenterArrow::new(s)),
        "catalog_page" => Box::new(CatalogPageArrow::new(s)),
        "catalog_returns" => Box::new(CatalogReturnsArrow::new(s)),
        "catalog_sales" => Box::new(CatalogSalesArrow::new(s)),
        "customer" => Box::new(CustomerArrow::new(s)),
        "customer_address" => Box::new(CustomerAddressArrow::new(s)),
        "customer_demographics" => Box::new(CustomerDemographicsArrow::new(s)),
        "date_dim" => Box::new(DateDimArrow::new(s)),
        "household_demographics" => Box::new(HouseholdDemographicsArrow::new(s)),
        "income_band" => Box::new(IncomeBandArrow::new(s)),
        "inventory" => Box::new(InventoryArrow::new(s)),
        "item" => Box::new(ItemArrow::new(s)),
        "promotion" => Box::new(PromotionArrow::new(s)),
        "reason" => Box::new(ReasonArrow::new(s)),
        "ship_mode" => Box::new(ShipModeArrow::new(s)),
        "store" => Box::new(StoreArrow::new(s)),
        "store_returns" => Box::new(StoreReturnsArrow::new(s)),
        "store_sales" => Box::new(StoreSalesArrow::new(s)),
        "time_dim" => Box::new(TimeDimArrow::new(s)),
        "warehouse" => Box::new(WarehouseArrow::new(s)),
        "web_page" => Box::new(WebPageArrow::new(s)),
        "web_returns" => Box::new(WebReturnsArrow::new(s)),
        "web_sales" => Box::new(WebSalesArrow::new(s)),
        "web_site" => Box::new(WebSiteArrow::new(s)),
        other => return Err(GenError::Generator(format!("no TPC-DS table {other}"))),
    })
}

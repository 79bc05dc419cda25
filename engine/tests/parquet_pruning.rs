//! Scan filters skip Parquet row groups whose statistics rule them out, without changing answers.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use riffle_engine::{ExecConfig, Session};

/// 10 row groups of 100 ids each, in order: group g holds ids 100g .. 100g+99.
fn write_file(path: &std::path::Path) {
    write_ids(path, WriterProperties::builder().set_max_row_group_row_count(Some(100)).build());
}

/// Ids 0..1000 in order, tagged `t{id % 7}`.
fn write_ids(path: &std::path::Path, props: WriterProperties) {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("tag", DataType::Utf8, false)]));
    let file = std::fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).expect("writer");
    let ids: Vec<i64> = (0..1000).collect();
    let tags: Vec<String> = ids.iter().map(|i| format!("t{}", i % 7)).collect();
    let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(tags))]).expect("batch");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

fn text(s: &mut Session, sql: &str) -> String {
    let r = s.sql(sql).expect("runs");
    riffle_engine::format::format_value(r.batches[0].column(0), 0).expect("format").unwrap_or_default()
}

#[test]
fn row_groups_outside_the_filter_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("ids.parquet");
    write_file(&f);
    let f = f.display().to_string();
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    let cases = [
        ("id >= 950", "50", "row_groups=1/10 (pruned 9)"),
        ("id = 10", "1", "row_groups=1/10 (pruned 9)"),
        ("id < 250 AND id > 120", "129", "row_groups=2/10 (pruned 8)"),
        ("id BETWEEN 300 AND 399", "100", "row_groups=1/10 (pruned 9)"),
        ("id < 100.5", "101", "row_groups=2/10 (pruned 8)"),
        ("id > 5000", "0", "row_groups=0/10 (pruned 10)"),
        ("tag = 't3'", "143", "row_groups=10/10 (pruned 0)"),
    ];
    for (cond, count, groups) in cases {
        let q = format!("SELECT count(*) FROM read_parquet('{f}') WHERE {cond}");
        assert_eq!(text(&mut s, &q), count, "{cond}");
        let plan = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
        assert!(plan.contains(groups), "{cond}: {plan}");
    }
}

/// String group keys nothing else reads arrive dictionary-encoded; a key also read elsewhere does not.
#[test]
fn string_group_keys_are_read_dictionary_encoded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("ids.parquet");
    write_file(&f);
    let f = f.display().to_string();
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    let q = format!("SELECT tag, count(*), sum(id) FROM read_parquet('{f}') WHERE id > 3 GROUP BY tag ORDER BY tag");
    let plan = text(&mut s, &format!("EXPLAIN {q}"));
    assert!(plan.contains("dictionary=[tag]"), "{plan}");
    let r = s.sql(&q).expect("runs");
    let b = &r.batches[0];
    assert_eq!(b.num_rows(), 7);
    let first: Vec<String> =
        (0..3).map(|c| riffle_engine::format::format_value(b.column(c), 0).expect("format").unwrap_or_default()).collect();
    // ids ≡ 0 (mod 7) above 3: 7, 14, …, 994 → 142 of them, summing to 7·(1+…+142).
    assert_eq!(first, vec!["t0".to_string(), "142".into(), (7 * 142 * 143 / 2).to_string()]);

    // A column only the filter reads leaves the scan's output through a projection, which hands the
    // dictionary on.
    let q = format!("SELECT tag, count(*) FROM read_parquet('{f}') WHERE id > 3 GROUP BY tag ORDER BY tag");
    let plan = text(&mut s, &format!("EXPLAIN {q}"));
    assert!(plan.contains("Project: tag") && plan.contains("dictionary=[tag]"), "{plan}");
    let r = s.sql(&q).expect("runs");
    let first: Vec<String> =
        (0..2).map(|c| riffle_engine::format::format_value(r.batches[0].column(c), 0).expect("format").unwrap_or_default()).collect();
    assert_eq!(first, vec!["t0".to_string(), "142".into()]);

    let plan = text(&mut s, &format!("EXPLAIN SELECT tag, max(tag) FROM read_parquet('{f}') GROUP BY tag"));
    assert!(!plan.contains("dictionary="), "{plan}");
}

/// One row group of 1000 ids in order, in pages of 100 rows, with a page index.
fn write_paged_file(path: &std::path::Path) {
    let props = WriterProperties::builder()
        .set_data_page_row_count_limit(100)
        .set_write_batch_size(100)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Page)
        .build();
    write_ids(path, props);
}

#[test]
fn pages_outside_the_filter_are_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("paged.parquet");
    write_paged_file(&f);
    let f = f.display().to_string();
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    let cases = [
        ("id BETWEEN 300 AND 399", "100", Some("page_index_skipped_rows=900")),
        ("id >= 950", "50", Some("page_index_skipped_rows=900")),
        ("id < 150 AND tag = 't1'", "22", Some("page_index_skipped_rows=800")),
        ("id = 555 OR id = 5", "2", None),
        ("tag = 't3'", "143", None),
        ("id > 5000", "0", Some("row_groups=0/1 (pruned 1)")),
    ];
    for (cond, count, shown) in cases {
        let q = format!("SELECT count(*) FROM read_parquet('{f}') WHERE {cond}");
        assert_eq!(text(&mut s, &q), count, "{cond}");
        let plan = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
        match shown {
            Some(m) => assert!(plan.contains(m), "{cond}: {plan}"),
            None => assert!(!plan.contains("page_index_skipped_rows"), "{cond}: {plan}"),
        }
    }
    // The rows that are read come out whole and in order.
    let q = format!("SELECT min(id), max(id), sum(id) FROM read_parquet('{f}') WHERE id > 520 AND id <= 730");
    let r = s.sql(&q).expect("runs");
    let cells: Vec<String> =
        (0..3).map(|c| riffle_engine::format::format_value(r.batches[0].column(c), 0).expect("format").unwrap_or_default()).collect();
    assert_eq!(cells, vec!["521".to_string(), "730".into(), ((521..=730).sum::<i64>()).to_string()]);
}

/// A string key stored without a dictionary (plain pages) is still grouped right when read as one.
#[test]
fn plain_encoded_string_keys_group_like_dictionary_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("plain.parquet");
    write_ids(&f, WriterProperties::builder().set_dictionary_enabled(false).set_max_row_group_row_count(Some(300)).build());
    let f = f.display().to_string();
    for threads in [1, 2] {
        let mut s = Session::new(ExecConfig { threads, batch_size: 64, ..ExecConfig::default() });
        let q = format!("SELECT tag, count(*) FROM read_parquet('{f}') GROUP BY tag ORDER BY tag");
        assert!(text(&mut s, &format!("EXPLAIN {q}")).contains("dictionary=[tag]"));
        let r = s.sql(&q).expect("runs");
        let b = &r.batches[0];
        let rows: Vec<String> = (0..b.num_rows())
            .map(|i| {
                let cell = |c: usize| riffle_engine::format::format_value(b.column(c), i).expect("format").unwrap_or_default();
                format!("{}={}", cell(0), cell(1))
            })
            .collect();
        // ids 0..1000: residues 0..=5 occur 143 times, residue 6 occurs 142 times.
        assert_eq!(rows, vec!["t0=143", "t1=143", "t2=143", "t3=143", "t4=143", "t5=143", "t6=142"]);
    }
}

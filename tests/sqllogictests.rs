//! Runs every `tests/sql/**/*.slt` file in every mode (see `riffle_tests::all_modes`).
//!
//! `cargo test -p riffle-tests --test sqllogictests -- [FILTER] [--complete]`: FILTER keeps files whose
//! path contains it; `--complete` rewrites the expected results from Riffle's output in the first mode
//! (check them against DuckDB before committing: Riffle's output is not the oracle).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use riffle_tests::{all_modes, RiffleDb};

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            slt_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "slt") {
            out.push(p);
        }
    }
}

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Paths inside .slt files are relative to tests/.
    if let Err(e) = std::env::set_current_dir(root) {
        eprintln!("cannot enter {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--") || a == "--complete").collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let mut files = Vec::new();
    slt_files(&root.join("sql"), &mut files);
    files.sort();
    files.retain(|f| filters.is_empty() || filters.iter().any(|x| f.to_string_lossy().contains(x.as_str())));

    let mut modes = all_modes();
    // RIFFLE_SLT_MODES=changelog,spill runs only the modes whose names contain one of these.
    if let Ok(only) = std::env::var("RIFFLE_SLT_MODES") {
        modes.retain(|m| only.split(',').any(|o| m.name.contains(o.trim())));
    }
    if complete {
        for f in &files {
            let config = modes[0].config.clone();
            let mut runner = sqllogictest::Runner::new(move || {
                let config = config.clone();
                async move { Ok(RiffleDb::new(config)) }
            });
            let result = futures_block_on(runner.update_test_file(
                f,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            ));
            if let Err(e) = result {
                eprintln!("{}: {e}", f.display());
                return ExitCode::FAILURE;
            }
            println!("completed {}", f.display());
        }
        return ExitCode::SUCCESS;
    }

    let mut failures = 0;
    let mut runs = 0;
    for f in &files {
        for mode in &modes {
            runs += 1;
            let config = mode.config.clone();
            let mut runner = sqllogictest::Runner::new(move || {
                let config = config.clone();
                async move { Ok(RiffleDb::new(config)) }
            });
            if let Err(e) = runner.run_file(f) {
                failures += 1;
                eprintln!("FAILED {} [{}]\n{}\n", f.strip_prefix(root).unwrap_or(f).display(), mode.name, e.display(true));
            }
        }
    }
    println!("sqllogictest: {} files × {} modes = {runs} runs, {failures} failed", files.len(), modes.len());
    if failures > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// `update_test_file` is async but needs no runtime.
fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

use std::path::{Path, PathBuf};

use crate::{FormatError, Result};

/// The files a table path names: a file, every visible file of a directory (recursively), or a glob.
/// Sorted, so that scans are deterministic, with numbers in names in numeric order (`part-2` before
/// `part-10`): files written in parts hold their rows in part order, and a table sorted across its
/// parts (TPC-H's lineitem by `l_orderkey`) is then scanned in key order.
pub fn list_files(pattern: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(pattern);
    let mut files = Vec::new();
    if path.is_file() {
        files.push(path.to_path_buf());
    } else if path.is_dir() {
        walk_dir(path, &mut files)?;
    } else if pattern.contains(['*', '?', '[']) {
        let entries = glob::glob(pattern).map_err(|e| FormatError::BadPattern {
            pattern: pattern.to_string(),
            message: e.to_string(),
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| FormatError::io(e.path().to_path_buf(), e.into()))?;
            if entry.is_file() {
                files.push(entry);
            }
        }
    }
    if files.is_empty() {
        return Err(FormatError::NoFiles { pattern: pattern.to_string() });
    }
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(files)
}

/// Orders names as text, except that runs of digits compare as the numbers they write; equal numbers
/// written with more leading zeros come first, and names otherwise equal compare as plain text.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a_bytes, b_bytes) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a_bytes.len() && j < b_bytes.len() {
        if a_bytes[i].is_ascii_digit() && b_bytes[j].is_ascii_digit() {
            let digits = |s: &[u8], from: usize| from + s[from..].iter().take_while(|c| c.is_ascii_digit()).count();
            let (a_end, b_end) = (digits(a_bytes, i), digits(b_bytes, j));
            // Past the leading zeros, keeping the last digit (a run holds at least one).
            let significant = |s: &[u8], from: usize, to: usize| (from + s[from..to].iter().take_while(|c| **c == b'0').count()).min(to - 1);
            let (a_num, b_num) = (&a_bytes[significant(a_bytes, i, a_end)..a_end], &b_bytes[significant(b_bytes, j, b_end)..b_end]);
            let by_value = a_num.len().cmp(&b_num.len()).then_with(|| a_num.cmp(b_num));
            let by_zeros = (b_end - j).cmp(&(a_end - i));
            match by_value.then(by_zeros) {
                Ordering::Equal => (i, j) = (a_end, b_end),
                other => return other,
            }
        } else {
            match a_bytes[i].cmp(&b_bytes[j]) {
                Ordering::Equal => (i, j) = (i + 1, j + 1),
                other => return other,
            }
        }
    }
    (a_bytes.len() - i).cmp(&(b_bytes.len() - j)).then_with(|| a.cmp(b))
}

fn walk_dir(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| FormatError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| FormatError::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Hidden files and `_SUCCESS`-style markers are not data; staged writes start with a dot.
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk_dir(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn numbers_in_names_sort_by_value() {
        let mut names = vec!["part-10.parquet", "part-2.parquet", "part-1.parquet", "part-02.parquet", "part-1a.parquet", "a/part-3", "b/part-1", "part-.parquet", "x9y10", "x9y9", "x10y1"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["a/part-3", "b/part-1", "part-.parquet", "part-1.parquet", "part-1a.parquet", "part-02.parquet", "part-2.parquet", "part-10.parquet", "x9y9", "x9y10", "x10y1"]
        );
    }

    #[test]
    fn huge_numbers_and_zeros_compare_without_overflow() {
        use std::cmp::Ordering;
        assert_eq!(natural_cmp("f99999999999999999999999", "f100000000000000000000000"), Ordering::Less);
        assert_eq!(natural_cmp("f0", "f00"), Ordering::Greater);
        assert_eq!(natural_cmp("f0", "f0"), Ordering::Equal);
        assert_eq!(natural_cmp("f000", "f1"), Ordering::Less);
    }
}

use std::path::{Path, PathBuf};

use crate::{FormatError, Result};

/// The files a table path names: a file, every visible file of a directory (recursively), or a glob.
/// Sorted, so that scans are deterministic.
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
    files.sort();
    Ok(files)
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

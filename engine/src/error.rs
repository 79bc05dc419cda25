//! The one error type of the engine. Every message says what went wrong, where, and when it can, how
//! to fix it.

use arrow::error::ArrowError;
use riffle_formats::FormatError;

pub type Result<T, E = RiffleError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RiffleError {
    /// SQL that does not parse or does not bind; `position` is (line, column), 1-based, when known.
    #[error("{}", render_sql_error(message, sql, *position))]
    Sql { message: String, sql: String, position: Option<(u64, u64)> },
    #[error("{0}")]
    Plan(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("{0}")]
    Execution(String),
    /// The memory limit was reached where nothing could be spilled.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{0}")]
    Arrow(#[from] ArrowError),
}

impl RiffleError {
    pub fn plan(message: impl Into<String>) -> Self {
        RiffleError::Plan(message.into())
    }

    pub fn exec(message: impl Into<String>) -> Self {
        RiffleError::Execution(message.into())
    }

    /// Attaches the statement text so the error can point into it.
    pub fn with_sql(self, text: &str) -> Self {
        match self {
            RiffleError::Sql { message, sql, position } if sql.is_empty() => {
                RiffleError::Sql { message, sql: text.to_string(), position }
            }
            other => other,
        }
    }
}

/// A bind-time error pointing at a place in the SQL text (position from the parser's spans).
pub fn sql_error(message: impl Into<String>, position: Option<(u64, u64)>) -> RiffleError {
    RiffleError::Sql { message: message.into(), sql: String::new(), position }
}

/// `message`, then PostgreSQL-style `LINE n: <text>` with a caret under the column.
fn render_sql_error(message: &str, sql: &str, position: Option<(u64, u64)>) -> String {
    let Some((line, col)) = position.filter(|(l, c)| *l > 0 && *c > 0) else {
        return message.to_string();
    };
    let Some(text) = sql.lines().nth(line as usize - 1) else {
        return message.to_string();
    };
    let prefix = format!("LINE {line}: ");
    let caret_at = prefix.chars().count() + text.chars().take(col as usize - 1).count();
    format!("{message}\n{prefix}{text}\n{}^", " ".repeat(caret_at))
}

/// The candidate closest to `name` (edit distance), if it is close enough to be a plausible typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&name, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 2).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_points_at_column() {
        let e = sql_error("syntax error at 'frm'", Some((1, 10))).with_sql("SELECT 1 frm t");
        assert_eq!(e.to_string(), "syntax error at 'frm'\nLINE 1: SELECT 1 frm t\n                 ^");
    }

    #[test]
    fn closest_name() {
        assert_eq!(closest("l_quantty", ["l_quantity", "l_tax"]), Some("l_quantity"));
        assert_eq!(closest("zzz", ["l_quantity"]), None);
    }
}

//! Flink SQL syntax that sqlparser does not parse, rewritten before parsing so that a Flink job runs
//! as written:
//! - `WATERMARK FOR ts AS <expr>` inside `CREATE TABLE (…)` is taken out of the column list and
//!   returned beside the statement;
//! - `TABLE t` as an argument of a window table function (`TUMBLE(TABLE t, …)`,
//!   `HOP(DATA => TABLE t, …)`) becomes plain `t`;
//! - `SESSION(TABLE t PARTITION BY k, …)` becomes `SESSION(t, SESSION_KEYS(k), …)`.
//!
//! Removed text is replaced by spaces (newlines kept), so parser errors still point at the line and
//! column the user wrote.

use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::error::{sql_error, Result};

/// A `WATERMARK FOR column AS expr` clause of the `statement`-th statement (0-based).
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkClause {
    pub statement: usize,
    pub column: String,
    /// The expression's SQL text, as written.
    pub expr: String,
    /// Line and column of `WATERMARK`, for errors.
    pub position: (u64, u64),
}

/// Names of the window table functions whose first argument may be `TABLE t`.
const WINDOW_FUNCTIONS: [&str; 4] = ["TUMBLE", "HOP", "CUMULATE", "SESSION"];

/// The SQL to parse (unchanged unless it used the syntax above) and the watermark clauses taken out.
pub fn rewrite(sql: &str) -> Result<(String, Vec<WatermarkClause>)> {
    let upper = sql.to_ascii_uppercase();
    if !upper.contains("WATERMARK") && !upper.contains("TABLE") {
        return Ok((sql.to_string(), vec![]));
    }
    // Text the tokenizer rejects is left for the parser to report.
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return Ok((sql.to_string(), vec![]));
    };
    let code: Vec<&TokenWithSpan> = tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).collect();
    let mut blank: Vec<(Location, Location)> = Vec::new();
    // Text replaced by other text (the column after shifts a little on that line).
    let mut replace: Vec<(Location, Location, String)> = Vec::new();
    let mut clauses = Vec::new();
    let (mut statement, mut depth, mut statement_is_create) = (0usize, 0usize, false);
    let mut i = 0;
    while i < code.len() {
        let t = &code[i].token;
        let previous = i.checked_sub(1).map(|p| &code[p].token);
        match t {
            Token::SemiColon => {
                statement += 1;
                depth = 0;
                statement_is_create = false;
            }
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w) if w.keyword == Keyword::CREATE && previous.is_none_or(|p| *p == Token::SemiColon) => {
                statement_is_create = true;
            }
            Token::Word(w) if w.keyword == Keyword::TABLE && is_table_argument(&code, i) => {
                blank.push((code[i].span.start, code[i].span.end));
            }
            Token::Word(w)
                if w.keyword == Keyword::PARTITION
                    && matches!(code.get(i + 1).map(|t| &t.token), Some(Token::Word(b)) if b.keyword == Keyword::BY)
                    && matches!(code.get(i.wrapping_sub(2)).map(|t| &t.token), Some(Token::Word(t)) if t.keyword == Keyword::TABLE) =>
            {
                // `PARTITION BY k` or `PARTITION BY (k1, k2)` after the session window's table.
                let first = i + 2;
                let last = match code.get(first).map(|t| &t.token) {
                    Some(Token::LParen) => {
                        let mut depth = 0usize;
                        let mut j = first;
                        while let Some(t) = code.get(j) {
                            match t.token {
                                Token::LParen => depth += 1,
                                Token::RParen => {
                                    depth -= 1;
                                    if depth == 0 {
                                        break;
                                    }
                                }
                                _ => {}
                            }
                            j += 1;
                        }
                        j
                    }
                    _ => {
                        // A name, possibly qualified: words joined by periods.
                        let mut j = first;
                        while matches!(code.get(j + 1).map(|t| &t.token), Some(Token::Period)) {
                            j += 2;
                        }
                        j
                    }
                };
                if let Some(end) = code.get(last) {
                    replace.push((code[i].span.start, code[i + 1].span.end, ", SESSION_KEYS(".to_string()));
                    replace.push((end.span.end, end.span.end, ")".to_string()));
                    i = last + 1;
                    continue;
                }
            }
            Token::Word(w)
                if statement_is_create
                    && depth == 1
                    && w.value.eq_ignore_ascii_case("WATERMARK")
                    && matches!(code.get(i + 1).map(|t| &t.token), Some(Token::Word(f)) if f.keyword == Keyword::FOR) =>
            {
                let (clause, end) = watermark_clause(sql, &code, i, statement)?;
                // Take out the clause with the comma that separated it from its neighbours.
                let start = match previous {
                    Some(Token::Comma) => code[i - 1].span.start,
                    _ => code[i].span.start,
                };
                let stop = match code.get(end).map(|t| &t.token) {
                    Some(Token::Comma) if !matches!(previous, Some(Token::Comma)) => code[end].span.end,
                    _ => code[end - 1].span.end,
                };
                blank.push((start, stop));
                clauses.push(clause);
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if blank.is_empty() && replace.is_empty() {
        return Ok((sql.to_string(), clauses));
    }
    Ok((edit(sql, &blank, &replace), clauses))
}

/// `TABLE` followed by a name, as an argument: after `WINDOW_FN(`, after a comma or after `=>`.
fn is_table_argument(code: &[&TokenWithSpan], i: usize) -> bool {
    if !matches!(code.get(i + 1).map(|t| &t.token), Some(Token::Word(_))) {
        return false;
    }
    match i.checked_sub(1).map(|p| &code[p].token) {
        Some(Token::Comma | Token::RArrow) => true,
        Some(Token::LParen) => matches!(
            i.checked_sub(2).map(|p| &code[p].token),
            Some(Token::Word(f)) if WINDOW_FUNCTIONS.iter().any(|n| f.value.eq_ignore_ascii_case(n))
        ),
        _ => false,
    }
}

/// Parses `WATERMARK FOR col AS expr` starting at `code[at]`; returns the clause and the index of the
/// token after the expression (the `,` or `)` that ends it).
fn watermark_clause(sql: &str, code: &[&TokenWithSpan], at: usize, statement: usize) -> Result<(WatermarkClause, usize)> {
    let position = (code[at].span.start.line, code[at].span.start.column);
    let usage = "expected WATERMARK FOR <column> AS <expression>, e.g. WATERMARK FOR ts AS ts - INTERVAL '5' SECOND";
    let column = match code.get(at + 2).map(|t| &t.token) {
        Some(Token::Word(w)) => w.value.clone(),
        _ => return Err(sql_error(format!("syntax error: {usage}"), Some(position))),
    };
    if !matches!(code.get(at + 3).map(|t| &t.token), Some(Token::Word(w)) if w.keyword == Keyword::AS) {
        return Err(sql_error(format!("syntax error: {usage}"), Some(position)));
    }
    let first = at + 4;
    let mut depth = 0usize;
    let mut end = first;
    while let Some(t) = code.get(end) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen if depth == 0 => break,
            Token::RParen => depth -= 1,
            Token::Comma if depth == 0 => break,
            Token::SemiColon | Token::EOF => break,
            _ => {}
        }
        end += 1;
    }
    if end == first || !matches!(code.get(end).map(|t| &t.token), Some(Token::Comma | Token::RParen)) {
        return Err(sql_error(format!("syntax error: {usage}"), Some(position)));
    }
    let expr = slice(sql, code[first].span.start, code[end - 1].span.end).trim().to_string();
    Ok((WatermarkClause { statement, column, expr, position }, end))
}

/// Byte offset of a tokenizer location (1-based line and character column).
fn offset(sql: &str, loc: Location) -> usize {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in sql.char_indices() {
        if line == loc.line && column == loc.column {
            return i;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    sql.len()
}

fn slice(sql: &str, start: Location, end: Location) -> &str {
    let (a, b) = (offset(sql, start), offset(sql, end));
    sql.get(a..b.max(a)).unwrap_or("")
}

/// `sql` with the characters of every `blank` range replaced by spaces (newlines kept), and every
/// `replace` range by its text.
fn edit(sql: &str, blank: &[(Location, Location)], replace: &[(Location, Location, String)]) -> String {
    let blank: Vec<(usize, usize)> = blank.iter().map(|(s, e)| (offset(sql, *s), offset(sql, *e))).collect();
    let replace: Vec<(usize, usize, &str)> = replace.iter().map(|(s, e, t)| (offset(sql, *s), offset(sql, *e), t.as_str())).collect();
    let mut out = String::with_capacity(sql.len() + 16);
    for (i, c) in sql.char_indices() {
        for (_, _, text) in replace.iter().filter(|(s, _, _)| *s == i) {
            out.push_str(text);
        }
        if replace.iter().any(|(s, e, _)| i >= *s && i < *e) {
            continue;
        }
        out.push(if c != '\n' && blank.iter().any(|(s, e)| i >= *s && i < *e) { ' ' } else { c });
    }
    for (_, _, text) in replace.iter().filter(|(s, _, _)| *s >= sql.len()) {
        out.push_str(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_clause_is_taken_out_of_the_column_list() {
        let sql = "CREATE TABLE b (a INT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH ('connector'='x')";
        let (text, clauses) = rewrite(sql).expect("rewrites");
        assert_eq!(text.len(), sql.len());
        assert!(text.starts_with("CREATE TABLE b (a INT, ts TIMESTAMP(3)"));
        assert!(!text.contains("WATERMARK"));
        assert_eq!(clauses.len(), 1);
        assert_eq!((clauses[0].column.as_str(), clauses[0].expr.as_str()), ("ts", "ts - INTERVAL '5' SECOND"));
        crate::session::parse_sql(&text).expect("parses");
    }

    #[test]
    fn watermark_first_in_the_list_and_in_a_later_statement() {
        let sql = "SELECT 1; CREATE TABLE b (WATERMARK FOR ts AS ts, ts TIMESTAMP)";
        let (text, clauses) = rewrite(sql).expect("rewrites");
        assert_eq!(clauses[0].statement, 1);
        assert_eq!(clauses[0].expr, "ts");
        crate::session::parse_sql(&text).expect("parses");
    }

    #[test]
    fn table_arguments_of_window_functions_lose_the_keyword() {
        let sql = "SELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' MINUTES))";
        let (text, _) = rewrite(sql).expect("rewrites");
        assert_eq!(text, "SELECT * FROM TABLE(TUMBLE(      bids, DESCRIPTOR(ts), INTERVAL '10' MINUTES))");
        let named = "SELECT * FROM TABLE(HOP(DATA => TABLE bids, TIMECOL => DESCRIPTOR(ts), SLIDE => INTERVAL '1' MINUTE, SIZE => INTERVAL '2' MINUTE))";
        let (text, _) = rewrite(named).expect("rewrites");
        assert!(text.contains("DATA =>       bids"));
        // Other uses of TABLE stay.
        let create = "CREATE TABLE t (a INT); DROP TABLE t";
        assert_eq!(rewrite(create).expect("rewrites").0, create);
    }

    #[test]
    fn session_partition_keys_become_an_argument() {
        let sql = "SELECT * FROM TABLE(SESSION(TABLE bids PARTITION BY item, DESCRIPTOR(ts), INTERVAL '5' MINUTES))";
        let (text, _) = rewrite(sql).expect("rewrites");
        assert_eq!(text, "SELECT * FROM TABLE(SESSION(      bids , SESSION_KEYS( item), DESCRIPTOR(ts), INTERVAL '5' MINUTES))");
        let many = "SELECT * FROM TABLE(SESSION(TABLE bids PARTITION BY (item, b.x), DESCRIPTOR(ts), INTERVAL '5' MINUTES))";
        assert!(rewrite(many).expect("rewrites").0.contains("bids , SESSION_KEYS( (item, b.x)), DESCRIPTOR"));
        crate::session::parse_sql(&rewrite(many).expect("rewrites").0).expect("parses");
    }

    #[test]
    fn incomplete_watermark_clause_is_a_positioned_error() {
        let err = rewrite("CREATE TABLE b (ts TIMESTAMP, WATERMARK FOR ts)").expect_err("no AS");
        assert!(err.to_string().contains("WATERMARK FOR <column> AS"), "{err}");
    }
}

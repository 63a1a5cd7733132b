//! Errors of a query, located in its text.

use std::fmt;

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::tokenizer::Span;

/// What is wrong with a query, and where in its text (as DataFusion or the SQL parser
/// tell it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlError {
    /// What is wrong.
    pub message: String,
    /// Line and column (1-based) in the text the user wrote.
    pub position: Option<(u64, u64)>,
}

impl SqlError {
    /// An error at `span` of the planned text.
    pub(crate) fn at(message: impl Into<String>, span: Option<Span>) -> Self {
        SqlError {
            message: message.into(),
            position: span
                .filter(|s| s.start.line > 0)
                .map(|s| (s.start.line, s.start.column)),
        }
    }

    /// DataFusion's error, at the span of its diagnostic or at the line and column its
    /// parser wrote into the message.
    pub(crate) fn from_df(e: DataFusionError) -> Self {
        let start = e.diagnostic().and_then(|d| d.span).map(|s| s.start);
        let message = e.find_root().strip_backtrace();
        let position = start
            .filter(|s| s.line > 0)
            .map(|s| (s.line, s.column))
            .or_else(|| parser_position(&message));
        SqlError { message, position }
    }

    /// This error with its position moved from the planned text (a query built around
    /// the user's text) back to the user's text, which starts at column `column` of the
    /// planned text's first line.
    pub(crate) fn shifted(mut self, column: u64) -> Self {
        self.position = self.position.map(|(line, col)| match line {
            1 => (1, col.saturating_sub(column).max(1)),
            _ => (line, col),
        });
        self
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

/// `Line: L, Column: C` of sqlparser's messages.
fn parser_position(message: &str) -> Option<(u64, u64)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + "Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parsers_position() {
        assert_eq!(
            parser_position(
                "sql parser error: Expected: an expression, found: FROM at Line: 2, Column: 8"
            ),
            Some((2, 8))
        );
        assert_eq!(parser_position("no position"), None);
    }
}

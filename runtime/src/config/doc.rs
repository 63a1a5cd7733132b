//! The pipeline file as text: where each key and value is, errors placed at the
//! line:col of what they are about (inside a SQL string too), suggestions for
//! misspelt names, and the TOML tree turned into JSON with those places recorded.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;

use serde_json::{Map, Value};
use toml::de::{DeTable, DeValue};

use super::ConfigError;
use crate::interpolate;

/// The pipeline file's text, with where each key and value is.
pub(super) struct Doc {
    pub(super) file: PathBuf,
    pub(super) text: String,
    /// Where each key is.
    pub(super) spans: HashMap<String, Range<usize>>,
    /// Where each key's value is.
    pub(super) values: HashMap<String, Range<usize>>,
    pub(super) secrets: Vec<String>,
}

impl Doc {
    pub(super) fn error_at(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        let mut message = message.into();
        for s in &self.secrets {
            message = message.replace(s.as_str(), "****");
        }
        ConfigError {
            file: self.file.clone(),
            position: span.map(|s| line_col(&self.text, s.start)),
            message,
            hint,
        }
    }

    /// `e`, an error in the SQL text of the string at `path`, at its place in the file.
    pub(super) fn sql_error(
        &self,
        path: &str,
        e: &sluice_sql::SqlError,
        hint: Option<String>,
    ) -> ConfigError {
        let mut err = self.error_at(None, format!("`{path}`: {e}"), hint);
        err.position = match self.values.get(path) {
            Some(span) => {
                let at = e.position.map_or((1, 1), |(l, c)| (l as usize, c as usize));
                Some(string_place(&self.text, span.start, at))
            }
            None => self.span_of(path).map(|s| line_col(&self.text, s.start)),
        };
        err
    }

    /// The span of the key at `path`, or of the closest enclosing key.
    pub(super) fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut p = path.to_string();
        loop {
            if let Some(s) = self.spans.get(&p) {
                return Some(s.clone());
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }

    /// A serde error at `path` (relative to `prefix`), with a suggestion for unknown keys.
    pub(super) fn serde_error(&self, prefix: &str, path: &str, message: &str) -> ConfigError {
        let mut full = join(prefix, path);
        let mut hint = None;
        if let Some(unknown) = between(message, "unknown field `", "`") {
            if !full.ends_with(&unknown) {
                full = join(&full, &unknown);
            }
            let expected = expected_list(message);
            hint = suggest(&unknown, &expected).map(|s| format!("did you mean `{s}`?"));
        } else if let Some(unknown) = between(message, "unknown variant `", "`") {
            let expected = expected_list(message);
            hint = suggest(&unknown, &expected).map(|s| format!("did you mean \"{s}\"?"));
        }
        let what = if full.is_empty() {
            String::new()
        } else {
            format!("`{full}`: ")
        };
        self.error_at(self.span_of(&full), format!("{what}{message}"), hint)
    }
}

pub(super) fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty() || path == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => path.to_string(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

pub(super) fn between(s: &str, start: &str, end: &str) -> Option<String> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(s[i..j].to_string())
}

pub(super) fn expected_list(message: &str) -> Vec<String> {
    let Some(i) = message.find("expected") else {
        return Vec::new();
    };
    message[i..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The closest candidate within a small edit distance.
pub fn suggest(word: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, col)
}

/// Line and column in the file of the character at `at` (1-based line and column in
/// the string's text) of the string value whose opening quote is at `offset`. The
/// text starts after the quote (and after the newline that may follow `"""` or
/// `'''`); in a basic string an escape (`\"`, `\n`, `\u00e9`) is the one character
/// it stands for, and a line-ending backslash none.
pub(super) fn string_place(text: &str, offset: usize, at: (usize, usize)) -> (usize, usize) {
    let rest = &text[offset.min(text.len())..];
    let multi = rest.starts_with("\"\"\"") || rest.starts_with("'''");
    let basic = rest.starts_with('"');
    let mut i = match multi {
        true if rest[3..].starts_with("\r\n") => 5,
        true if rest[3..].starts_with('\n') => 4,
        true => 3,
        false => 1,
    };
    let (mut line, mut col) = (1, 1);
    // a line-ending backslash before the place stands for nothing: passed over too
    while let Some(c) = rest[i..].chars().next() {
        let (raw, stands_for) = match (basic, c) {
            (true, '\\') => match rest[i + 1..].chars().next() {
                Some('u') => (6, Some('u')),
                Some('U') => (10, Some('U')),
                Some('n') => (2, Some('\n')),
                Some(w) if w.is_whitespace() => {
                    let after = rest[i + 1..].trim_start();
                    (rest.len() - i - after.len(), None)
                }
                Some(e) => (1 + e.len_utf8(), Some(e)),
                None => (1, None),
            },
            _ => (c.len_utf8(), Some(c)),
        };
        if stands_for.is_some() && (line, col) >= at {
            break;
        }
        match stands_for {
            Some('\n') => (line, col) = (line + 1, 1),
            Some(_) => col += 1,
            None => {}
        }
        i = (i + raw).min(rest.len());
    }
    line_col(text, offset + i)
}

pub(super) fn to_json(
    value: &DeValue<'_>,
    path: &str,
    doc: &mut Doc,
    span: Range<usize>,
) -> Result<Value, ConfigError> {
    Ok(match value {
        DeValue::String(s) => match interpolate::resolve(s) {
            Ok(r) => {
                doc.secrets.extend(r.secrets);
                Value::String(r.text)
            }
            Err(e) => return Err(doc.error_at(Some(span), format!("`{path}`: {e}"), None)),
        },
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            let n =
                i64::from_str_radix(digits.trim_start_matches('+'), i.radix()).map_err(|_| {
                    doc.error_at(
                        Some(span.clone()),
                        format!("`{path}`: integer out of range"),
                        None,
                    )
                })?;
            Value::from(n)
        }
        DeValue::Float(f) => {
            let x: f64 = f.as_str().replace('_', "").parse().unwrap_or(f64::NAN);
            serde_json::Number::from_f64(x)
                .map(Value::Number)
                .ok_or_else(|| {
                    doc.error_at(
                        Some(span.clone()),
                        format!("`{path}`: {} is not a finite number", f.as_str()),
                        None,
                    )
                })?
        }
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                doc.spans.insert(p.clone(), item.span());
                out.push(to_json(item.get_ref(), &p, doc, item.span())?);
            }
            Value::Array(out)
        }
        DeValue::Table(table) => Value::Object(table_to_json(table, path, doc)?),
    })
}

pub(super) fn table_to_json(
    table: &DeTable<'_>,
    prefix: &str,
    doc: &mut Doc,
) -> Result<Map<String, Value>, ConfigError> {
    let mut out = Map::new();
    for (k, v) in table.iter() {
        let key = k.get_ref().to_string();
        let path = join(prefix, &key);
        doc.spans.insert(path.clone(), k.span());
        doc.values.insert(path.clone(), v.span());
        out.insert(key, to_json(v.get_ref(), &path, doc, v.span())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::string_place;

    #[test]
    fn a_place_in_a_string_counts_escapes_as_what_they_stand_for() {
        // `amout` is column 13 of the query, 24 of the file (two `\"` before it)
        let text = "query = \"SELECT \\\"a\\\", amout FROM input\"";
        assert_eq!(string_place(text, 8, (1, 13)), (1, 24));
        // the text of a multi-line string starts on the line after `\"\"\"`; `\u0041` is
        // one character, a line-ending backslash none
        let text = "q = \"\"\"\nSELECT \\u0041, \\\n   amout\nFROM input\"\"\"";
        assert_eq!(string_place(text, 4, (1, 1)), (2, 1));
        assert_eq!(string_place(text, 4, (1, 11)), (3, 4));
        assert_eq!(string_place(text, 4, (2, 1)), (4, 1));
        // literal strings have no escapes
        let text = "q = \'SELECT \\x, y\'";
        assert_eq!(string_place(text, 4, (1, 12)), (1, 17));
    }
}

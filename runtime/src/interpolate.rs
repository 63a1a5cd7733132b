//! Explicit references in pipeline files: `${env:VAR}`, `${env:VAR:-default}` and
//! `${file:PATH}`. Applied to config string values only, never to data. `$${` writes a
//! literal `${`.

/// A string with its references resolved, and the resolved values (to redact them).
pub struct Resolved {
    /// The text with every reference replaced.
    pub text: String,
    /// The values that were substituted (secrets, possibly).
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the text may hold secrets
        write!(
            f,
            "Resolved {{ {} chars, {} references }}",
            self.text.len(),
            self.secrets.len()
        )
    }
}

/// Resolves the references in `input`; an error names the reference.
pub fn resolve(input: &str) -> Result<Resolved, String> {
    let mut out = String::with_capacity(input.len());
    let mut secrets = Vec::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            continue;
        }
        let end = after.find('}').ok_or_else(|| {
            format!(
                "unterminated reference \"{}\"",
                after.chars().take(30).collect::<String>()
            )
        })?;
        let reference = &after[2..end];
        let value = lookup(reference)?;
        if !value.is_empty() {
            secrets.push(value.clone());
        }
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Resolved { text: out, secrets })
}

fn lookup(reference: &str) -> Result<String, String> {
    if let Some(var) = reference.strip_prefix("env:") {
        let (name, default) = match var.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (var, None),
        };
        if name.is_empty() {
            return Err("${env:} needs a variable name".into());
        }
        return match (std::env::var(name), default) {
            (Ok(v), _) => Ok(v),
            (Err(_), Some(d)) => Ok(d.to_string()),
            (Err(_), None) => Err(format!(
                "environment variable {name} is not set (referenced as ${{env:{name}}}; give a default with ${{env:{name}:-value}})"
            )),
        };
    }
    if let Some(path) = reference.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read ${{file:{path}}}: {e}"));
    }
    Err(format!(
        "unknown reference \"${{{reference}}}\"; use ${{env:VAR}}, ${{env:VAR:-default}} or ${{file:PATH}}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_env_default_and_escape() {
        std::env::set_var("SLUICE_TEST_INTERP", "s3cret");
        let r = resolve("a=${env:SLUICE_TEST_INTERP} b=${env:SLUICE_NOPE_X:-dflt} c=$${env:X} $5")
            .unwrap();
        assert_eq!(r.text, "a=s3cret b=dflt c=${env:X} $5");
        assert_eq!(r.secrets, vec!["s3cret".to_string(), "dflt".to_string()]);
    }

    #[test]
    fn missing_env_var_is_named() {
        let err = resolve("${env:SLUICE_SURELY_MISSING}").unwrap_err();
        assert!(err.contains("SLUICE_SURELY_MISSING is not set"), "{err}");
    }

    #[test]
    fn reads_file_reference() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "pw\n").unwrap();
        let r = resolve(&format!("${{file:{}}}", p.display())).unwrap();
        assert_eq!(r.text, "pw");
    }
}

//! Reading YAML files safely: size limit, UTF-8 check, a parse budget against
//! alias bombs and deep nesting, duplicate keys refused, and every parse error
//! turned into a located [`Diagnostic`].

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Diagnostic, Loc};

/// A section written with every key commented out (`cache:` alone) is
/// empty, not an error.
pub fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// Largest YAML file amimake reads; a template is a few KiB.
pub const MAX_YAML_BYTES: u64 = 1024 * 1024;

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = 64;
    budget.max_documents = 1;
    budget.max_nodes = 100_000;
    budget.max_total_scalar_bytes = MAX_YAML_BYTES as usize;
    budget.max_recorded_anchor_events = 20_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::Error;
    options
}

/// Reads `path` (shown to the user as `display`) and deserializes it.
pub fn read_yaml_file<T: DeserializeOwned>(path: &Path, display: &str) -> Result<T, Diagnostic> {
    parse_yaml_str(&read_text(path, display)?, display)
}

/// Reads a YAML file as text: size limit, UTF-8 check, located errors.
pub fn read_text(path: &Path, display: &str) -> Result<String, Diagnostic> {
    let here = || Loc::file_start(display);
    let meta = std::fs::metadata(path)
        .map_err(|e| Diagnostic::new(here(), format!("cannot read file: {e}")))?;
    if meta.len() > MAX_YAML_BYTES {
        return Err(Diagnostic::new(
            here(),
            format!(
                "file is {} bytes, over the {} byte limit for a YAML file",
                meta.len(),
                MAX_YAML_BYTES
            ),
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Diagnostic::new(here(), format!("cannot read file: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        Diagnostic::new(
            here(),
            format!(
                "file is not valid UTF-8 (invalid byte at offset {}); save it as UTF-8",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Deserializes YAML text; `display` names the file in errors.
pub fn parse_yaml_str<T: DeserializeOwned>(text: &str, display: &str) -> Result<T, Diagnostic> {
    if text.trim().is_empty() {
        return Err(Diagnostic::new(Loc::file_start(display), "file is empty"));
    }
    serde_saphyr::from_str_with_options::<T>(text, options()).map_err(|e| {
        let loc = e
            .location()
            .map(|l| Loc::from_yaml(display, &l))
            .unwrap_or_else(|| Loc::file_start(display));
        Diagnostic::new(loc, clean_message(&e.to_string()))
    })
}

/// Strips the parser's own ` at line N, column M` suffix (we print the
/// location first) and rewords messages aimed at Rust developers.
fn clean_message(raw: &str) -> String {
    let first_line = raw.lines().next().unwrap_or(raw);
    let msg = match first_line.rfind(" at line ") {
        Some(i) if first_line[i..].contains("column") => &first_line[..i],
        _ => first_line,
    };
    if let Some(detail) = msg.split("budget breached:").nth(1) {
        let detail = detail.trim();
        if detail.starts_with("Documents") {
            return "a template file holds one YAML document; found more than one (`---`)"
                .to_string();
        }
        let what = detail
            .split([' ', '{'])
            .next()
            .unwrap_or(detail)
            .to_lowercase();
        return format!(
            "document exceeds the parse budget for a template ({what}: {}); aliases, nesting and size are limited",
            detail.split_once('{').map(|(_, r)| r.trim_end_matches('}').trim()).unwrap_or("")
        );
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((key, expected)) = rest.split_once("`, expected one of ") {
            let options: Vec<&str> = expected.split(", ").map(|o| o.trim_matches('`')).collect();
            let mut out = format!("unknown key `{key}`");
            if let Some(s) = crate::template::resolve::did_you_mean(key, options.iter().copied()) {
                out.push_str(&format!("; did you mean `{s}`?"));
            }
            out.push_str(&format!(" (allowed here: {})", options.join(", ")));
            return out;
        }
    }
    if msg.starts_with("cannot deserialize null into string") {
        return "expected a string, found an empty value".to_string();
    }
    msg.replace(", set DuplicateKeyPolicy in Options if acceptable", "")
        .replace("duplicate mapping key:", "duplicate key:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn alias_bomb_is_refused_within_budget() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let r: Result<BTreeMap<String, serde_saphyr::Spanned<Vec<serde_json_like::Any>>>, _> =
            parse_yaml_str(&doc, "bomb.yaml");
        let err = r.unwrap_err();
        assert_eq!(err.loc.file, "bomb.yaml");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = format!("x: {}{}\n", "[".repeat(500), "]".repeat(500));
        let r: Result<BTreeMap<String, serde_json_like::Any>, _> =
            parse_yaml_str(&doc, "deep.yaml");
        assert!(r.is_err());
    }

    #[test]
    fn duplicate_keys_are_located() {
        let r: Result<BTreeMap<String, String>, _> = parse_yaml_str("a: 1\na: 2\n", "d.yaml");
        let err = r.unwrap_err();
        assert_eq!((err.loc.line, err.loc.col), (2, 1));
        assert!(err.message.contains("duplicate key"), "{}", err.message);
    }

    /// A tiny "accept anything" type for budget tests.
    mod serde_json_like {
        #[derive(Debug)]
        pub struct Any;
        impl<'de> serde::Deserialize<'de> for Any {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                serde::de::IgnoredAny::deserialize(d).map(|_| Any)
            }
        }
    }
}

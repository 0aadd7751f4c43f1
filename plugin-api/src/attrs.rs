//! Typed step attributes: the parsers a plugin uses to read them, and the schema a
//! plugin declares so that the host checks them before calling the plugin.
//!
//! Attributes arrive as strings (BuildKit's `attrs` map). A TOML array in a build
//! definition arrives as the JSON text of a list of strings. Use the typed readers on
//! [`crate::Request`] ([`Request::attr_u64`](crate::Request::attr_u64),
//! [`attr_bool`](crate::Request::attr_bool), [`attr_octal`](crate::Request::attr_octal),
//! [`attr_list`](crate::Request::attr_list), [`deny_unknown`](crate::Request::deny_unknown))
//! instead of parsing by hand: they share one syntax with the host's schema check,
//! and their errors name the attribute and the value.
//!
//! ## The schema
//!
//! A plugin that implements [`crate::Plugin::attributes`] declares every attribute it
//! accepts ([`AttrSpec`]: name, [`AttrType`], description). The host then refuses,
//! before calling the plugin, a step that sets an attribute the plugin did not declare
//! or a value that does not parse as its type, and `kiln plugins show ID` prints the
//! list. A name ending in `.*` declares a family (`http.header.*`).
//!
//! The schema travels in [`crate::abi::PluginDescriptor::extra`], one entry per
//! attribute (key `attr:<name>`, value `<type>:<description>`), so the ABI layout did
//! not change and an older host simply ignores it.

use std::fmt;

use crate::abi::KeyValue;

/// The key prefix of a schema entry in [`crate::abi::PluginDescriptor::extra`].
pub const SCHEMA_KEY_PREFIX: &str = "attr:";

/// The type of an attribute's value.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttrType {
    /// Any text.
    String,
    /// `true`/`false` with Go's `strconv.ParseBool` spellings (`1`, `t`, `TRUE`, `0`, …).
    Bool,
    /// A non-negative integer with Go's `strconv.ParseInt(v, 0, 64)` base prefixes
    /// (`42`, `0x2a`, `0o52`, `052`).
    U64,
    /// A file mode in `0..=0o7777`, read like [`AttrType::U64`] (`0644` is octal, as in
    /// BuildKit's `http.perm`).
    Octal,
    /// A JSON list of strings (`["a", "b"]`; `null` means unset).
    List,
}

impl AttrType {
    /// The name used in schemas and listings: `string`, `bool`, `u64`, `octal`, `list`.
    pub fn name(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Bool => "bool",
            AttrType::U64 => "u64",
            AttrType::Octal => "octal",
            AttrType::List => "list",
        }
    }

    /// The type named `name`, if this plugin-api knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "string" => AttrType::String,
            "bool" => AttrType::Bool,
            "u64" => AttrType::U64,
            "octal" => AttrType::Octal,
            "list" => AttrType::List,
            _ => return None,
        })
    }

    /// Checks that `value` parses as this type; the error says what was expected.
    pub fn check(self, value: &str) -> Result<(), String> {
        match self {
            AttrType::String => Ok(()),
            AttrType::Bool => parse_bool(value).map(drop),
            AttrType::U64 => parse_u64(value).map(drop),
            AttrType::Octal => parse_mode(value).map(drop),
            AttrType::List => parse_list(value).map(drop),
        }
    }
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One declared attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrSpec {
    /// The full name (`http.perm`), or a family (`http.header.*`).
    pub name: String,
    /// The type of its value.
    pub ty: AttrType,
    /// One line for users.
    pub description: String,
}

impl AttrSpec {
    /// A declaration.
    pub fn new(name: impl Into<String>, ty: AttrType, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ty,
            description: description.into(),
        }
    }

    /// Whether this declaration covers attribute `key` (exactly, or as a `.*` family).
    pub fn matches(&self, key: &str) -> bool {
        match self.name.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('.') => {
                key.len() > prefix.len() && key.starts_with(prefix)
            }
            _ => self.name == key,
        }
    }

    /// The descriptor entry that carries this declaration.
    pub fn to_extra(&self) -> KeyValue {
        KeyValue::new(
            format!("{SCHEMA_KEY_PREFIX}{}", self.name),
            format!("{}:{}", self.ty.name(), self.description),
        )
    }
}

/// The schema a descriptor's `extra` entries carry, in declaration order. `None` when
/// the plugin declares none (the host then checks nothing). An entry with a type this
/// plugin-api does not know reads as [`AttrType::String`].
pub fn schema_from_extra(extra: &[KeyValue]) -> Option<Vec<AttrSpec>> {
    let specs: Vec<AttrSpec> = extra
        .iter()
        .filter_map(|kv| {
            let name = kv.key.as_str().strip_prefix(SCHEMA_KEY_PREFIX)?;
            let (ty, description) = kv.value.as_str().split_once(':').unwrap_or(("string", ""));
            Some(AttrSpec::new(
                name,
                AttrType::from_name(ty).unwrap_or(AttrType::String),
                description,
            ))
        })
        .collect();
    (!specs.is_empty()).then_some(specs)
}

/// Checks a step's attributes against a schema: every key must be declared and every
/// value must parse as its type. The error names the attribute, the value's problem,
/// and the declared names.
pub fn check_attrs<'a>(
    schema: &[AttrSpec],
    attrs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    for (key, value) in attrs {
        match schema.iter().find(|s| s.matches(key)) {
            Some(spec) => spec
                .ty
                .check(value)
                .map_err(|e| format!("attribute {key}: {e}"))?,
            None => {
                let known: Vec<&str> = schema.iter().map(|s| s.name.as_str()).collect();
                return Err(format!(
                    "unknown attribute {key} (this source accepts: {})",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("expected a boolean (true or false), got {v:?}")),
    }
}

/// Go's `strconv.ParseInt(v, 0, 64)`: an optional sign, then `0x`, `0o`, `0b` or a
/// leading `0` (octal) select the base; underscores only after a base prefix.
pub fn parse_go_int(v: &str) -> Result<i64, String> {
    let err = || format!("expected an integer, got {v:?}");
    let (neg, body) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    if body.is_empty() {
        return Err(err());
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower.as_str(), true)
    } else {
        (10, lower.as_str(), false)
    };
    if digits.contains('_')
        && (!prefixed || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__"))
    {
        return Err(err());
    }
    let digits = digits.replace('_', "");
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return Err(err());
    }
    let n = i64::from_str_radix(&digits, radix).map_err(|_| err())?;
    Ok(if neg { -n } else { n })
}

/// A non-negative integer, read like [`parse_go_int`].
pub fn parse_u64(v: &str) -> Result<u64, String> {
    let n = parse_go_int(v)?;
    u64::try_from(n).map_err(|_| format!("expected a non-negative integer, got {v:?}"))
}

/// A file mode in `0..=0o7777`, read like [`parse_go_int`] (`0644` is octal).
pub fn parse_mode(v: &str) -> Result<u32, String> {
    let n = parse_go_int(v).map_err(|_| format!("expected a file mode such as 0644, got {v:?}"))?;
    if !(0..=0o7777).contains(&n) {
        return Err(format!("mode {v:?} is outside 0..07777"));
    }
    Ok(n as u32)
}

/// A JSON list of strings; `null` is `None`.
pub fn parse_list(v: &str) -> Result<Option<Vec<String>>, String> {
    serde_json::from_str::<Option<Vec<String>>>(v)
        .map_err(|e| format!("expected a JSON list of strings like [\"a\", \"b\"], got {v:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").unwrap_err().contains("\"yes\""));
        assert_eq!(parse_u64("0x10"), Ok(16));
        assert_eq!(parse_u64("42"), Ok(42));
        assert!(parse_u64("-1").is_err());
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("420"), Ok(0o644));
        assert!(parse_mode("010000").is_err());
        assert!(parse_mode("rw").is_err());
        assert_eq!(parse_go_int("0_644"), Ok(420));
        assert!(parse_go_int("1_0").is_err());
        assert!(parse_go_int("089").is_err());
        assert!(parse_go_int("0x").is_err());
    }

    #[test]
    fn lists() {
        assert_eq!(
            parse_list(r#"["a","b"]"#),
            Ok(Some(vec!["a".to_string(), "b".to_string()]))
        );
        assert_eq!(parse_list("null"), Ok(None));
        assert!(parse_list("[1]").is_err());
        assert!(parse_list("a,b").unwrap_err().contains("JSON list"));
    }

    #[test]
    fn schema_round_trips_and_checks() {
        let schema = vec![
            AttrSpec::new("x.n", AttrType::U64, "a number: with a colon"),
            AttrSpec::new("x.flag", AttrType::Bool, "a flag"),
            AttrSpec::new("x.h.*", AttrType::String, "headers"),
        ];
        let extra: Vec<KeyValue> = schema.iter().map(AttrSpec::to_extra).collect();
        let back = schema_from_extra(&extra).unwrap();
        assert_eq!(back, schema);
        assert!(schema_from_extra(&[KeyValue::new("other", "v")]).is_none());

        assert!(check_attrs(&schema, [("x.n", "3"), ("x.h.accept", "a")]).is_ok());
        let e = check_attrs(&schema, [("x.n", "three")]).unwrap_err();
        assert!(
            e.contains("attribute x.n") && e.contains("\"three\""),
            "{e}"
        );
        let e = check_attrs(&schema, [("y.n", "1")]).unwrap_err();
        assert!(
            e.contains("unknown attribute y.n") && e.contains("x.flag"),
            "{e}"
        );
        assert!(check_attrs(&schema, [("x.h.", "1")]).is_err());
    }
}

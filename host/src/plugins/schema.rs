//! A plugin's attribute schema on the host side: read from its descriptor, checked
//! against every step's attributes before the plugin is called, and shown by
//! `kiln plugins list --json` and `kiln plugins show`.

use kiln_plugin_api::abi::KeyValue;
use kiln_plugin_api::attrs::{check_attrs, schema_from_extra};
use kiln_plugin_api::{AttrSpec, Request};

/// The attributes a plugin declares, in its order; `None`: it declares none, and the
/// host checks nothing for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema(pub Option<Vec<AttrSpec>>);

impl Schema {
    /// The schema carried by a descriptor's `extra` entries.
    pub fn from_extra(extra: &[KeyValue]) -> Self {
        Self(schema_from_extra(extra))
    }

    /// Checks `request`'s attributes. The error is one sentence naming the identifier
    /// (credentials redacted), the attribute, what is wrong, and the plugin.
    pub fn check(&self, plugin_id: &str, request: &Request) -> Result<(), String> {
        let Some(specs) = &self.0 else {
            return Ok(());
        };
        check_attrs(
            specs,
            request.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|e| {
            let shown = crate::source_manager::redact_userinfo(&format!(
                "{}://{}",
                request.scheme, request.reference
            ));
            format!("source {shown}: {e} (checked against the schema of plugin {plugin_id})")
        })
    }

    /// The schema as JSON: `null`, or `[{"name", "type", "description"}, …]`.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.0 {
            None => serde_json::Value::Null,
            Some(specs) => specs
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name,
                        "type": s.ty.name(),
                        "description": s.description,
                    })
                })
                .collect(),
        }
    }
}

impl serde::Serialize for Schema {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_api::AttrType;

    #[test]
    fn checks_only_with_a_schema() {
        let req = Request::new("https://u:pw@h/f").with_attr("x.n", "many");
        assert!(Schema(None).check("p", &req).is_ok());
        let s = Schema(Some(vec![AttrSpec::new("x.n", AttrType::U64, "n")]));
        let e = s.check("io.example.p", &req).unwrap_err();
        assert!(
            e.starts_with("source https://xxxxx:xxxxx@h/f: attribute x.n"),
            "{e}"
        );
        assert!(e.contains("io.example.p") && !e.contains("pw"), "{e}");
        assert_eq!(s.to_json()[0]["type"], "u64");
    }
}

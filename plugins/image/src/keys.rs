//! BuildKit's two image cache keys, byte for byte: the manifest key (index 0) and the
//! chain ID of the layers' diff IDs (index 1).

use kiln_plugin_api::gojson::push_string;
use kiln_plugin_api::platform::Platform;
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The manifest key: sha256 of Go's JSON of
/// `{Digest, OS, Arch, Variant?, OSVersion?, OSFeatures?, Limit?}`
/// (`source/containerimage/pull.go` `mainManifestKey`).
pub fn manifest_key(top_digest: &str, platform: &Platform, limit: Option<u32>) -> String {
    let mut j = String::from("{\"Digest\":");
    push_string(&mut j, top_digest);
    j.push_str(",\"OS\":");
    push_string(&mut j, &platform.os);
    j.push_str(",\"Arch\":");
    push_string(&mut j, &platform.architecture);
    if let Some(v) = platform.variant.as_deref().filter(|v| !v.is_empty()) {
        j.push_str(",\"Variant\":");
        push_string(&mut j, v);
    }
    if let Some(l) = limit {
        j.push_str(&format!(",\"Limit\":{l}"));
    }
    j.push('}');
    sha256_digest(j.as_bytes())
}

/// containerd's `identity.ChainID`: the first diff ID, then
/// `sha256(previous + " " + next)` for each further one.
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        chain = sha256_digest(format!("{chain} {d}").as_bytes());
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_key_json() {
        // The JSON Go writes for BuildKit's struct, hashed independently here.
        let d = format!("sha256:{}", "a".repeat(64));
        let p = Platform::parse("linux/arm/v7").unwrap();
        let want =
            format!(r#"{{"Digest":"{d}","OS":"linux","Arch":"arm","Variant":"v7","Limit":2}}"#);
        assert_eq!(
            manifest_key(&d, &p, Some(2)),
            sha256_digest(want.as_bytes())
        );
        let p = Platform::parse("linux/amd64").unwrap();
        let want = format!(r#"{{"Digest":"{d}","OS":"linux","Arch":"amd64"}}"#);
        assert_eq!(manifest_key(&d, &p, None), sha256_digest(want.as_bytes()));
    }

    #[test]
    fn chain_ids() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        assert_eq!(
            chain_id(&[a.clone(), b.clone()]),
            Some(sha256_digest(format!("{a} {b}").as_bytes()))
        );
    }
}

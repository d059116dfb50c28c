//! Encryption context: a string map bound to a ciphertext as associated data,
//! with one unambiguous byte encoding (sorted keys, every string length-prefixed).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::KmsError;

/// A map of non-secret strings bound to a ciphertext. Decrypt must be given
/// exactly the same map; it is compared through its canonical encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct EncryptionContext(pub BTreeMap<String, String>);

impl EncryptionContext {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context with one pair.
    pub fn with(key: &str, value: &str) -> Self {
        let mut m = BTreeMap::new();
        m.insert(key.to_string(), value.to_string());
        Self(m)
    }

    /// Canonical encoding used as AAD: a u32 count, then for each pair in
    /// sorted key order a u32 key length, the key, a u32 value length, the
    /// value (all lengths big-endian). Two different maps never encode alike,
    /// unlike schemes that concatenate `k=v` strings.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    /// Parses the command-line forms: JSON (`{"k":"v"}`) or `k=v,k2=v2`.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        let t = s.trim();
        if t.starts_with('{') {
            let map = serde_json::from_str::<UniqueMap>(t)
                .map_err(|e| {
                    KmsError::invalid(format!(
                        "encryption context is not a JSON object of strings with distinct keys: {e}"
                    ))
                })?
                .0;
            return Self::validated(map);
        }
        let mut map = BTreeMap::new();
        for pair in t.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                KmsError::invalid(format!(
                    "encryption context entry {pair:?} is not of the form key=value"
                ))
            })?;
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(KmsError::invalid(format!(
                    "encryption context key {k:?} appears twice"
                )));
            }
        }
        Self::validated(map)
    }

    fn validated(map: BTreeMap<String, String>) -> Result<Self, KmsError> {
        if map.keys().any(|k| k.is_empty()) {
            return Err(KmsError::invalid(
                "encryption context keys must not be empty".into(),
            ));
        }
        Ok(Self(map))
    }
}

/// A JSON object of strings that refuses a repeated key (serde_json's own maps
/// keep the last one silently: `{"file":"a","file":"b"}` would mean "b").
struct UniqueMap(BTreeMap<String, String>);

impl<'de> serde::Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<UniqueMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("key {k:?} appears twice")));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_unambiguous() {
        // "a=b,c" vs "a" -> "b,c=": concatenating schemes confuse these.
        let x = EncryptionContext::parse("a=b").unwrap();
        let mut m = BTreeMap::new();
        m.insert("a=".to_string(), "b".to_string());
        let y = EncryptionContext(m);
        assert_ne!(x.encode(), y.encode());
        let mut m1 = BTreeMap::new();
        m1.insert("ab".to_string(), "c".to_string());
        let mut m2 = BTreeMap::new();
        m2.insert("a".to_string(), "bc".to_string());
        assert_ne!(
            EncryptionContext(m1).encode(),
            EncryptionContext(m2).encode()
        );
    }

    #[test]
    fn order_does_not_matter() {
        let a = EncryptionContext::parse("x=1,y=2").unwrap();
        let b = EncryptionContext::parse(r#"{"y":"2","x":"1"}"#).unwrap();
        assert_eq!(a.encode(), b.encode());
    }

    #[test]
    fn bad_forms_are_refused() {
        assert!(EncryptionContext::parse("novalue").is_err());
        assert!(EncryptionContext::parse("=v").is_err());
        assert!(EncryptionContext::parse("a=1,a=2").is_err());
        assert!(EncryptionContext::parse("{not json").is_err());
        assert!(EncryptionContext::parse(r#"{"a":1}"#).is_err());
        // A repeated JSON key is refused, not last-wins.
        let e = EncryptionContext::parse(r#"{"file":"a","file":"b"}"#).unwrap_err();
        assert!(e.to_string().contains("\"file\" appears twice"), "{e}");
        assert!(EncryptionContext::parse(r#"{"a":"1","b":"2"}"#).is_ok());
        assert!(EncryptionContext::parse(r#"["a"]"#).is_err());
        assert_eq!(
            EncryptionContext::parse("").unwrap(),
            EncryptionContext::new()
        );
    }
}

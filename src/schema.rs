//! The model's inputs: feature names, their aliases and physical ranges.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::FeatureSpec;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemaError {
    #[error("the feature list is empty; add at least one [[features]] entry to the configuration")]
    Empty,
    #[error("the name or alias {name:?} is used by both {first:?} and {second:?}; give each feature distinct names")]
    DuplicateName {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "the name {name:?} is reserved for record metadata; rename the feature or drop the alias"
    )]
    Reserved { name: String },
}

/// JSON keys that carry record metadata and so cannot name a feature.
pub const RESERVED_KEYS: [&str; 2] = ["device_id", "ts"];

/// Ordered feature list with an alias lookup; index `i` is column `i` of every window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "Vec<FeatureSpec>", into = "Vec<FeatureSpec>")]
pub struct FeatureSchema {
    features: Vec<FeatureSpec>,
    #[serde(skip)]
    lookup: HashMap<String, usize>,
}

impl FeatureSchema {
    pub fn new(features: Vec<FeatureSpec>) -> Result<Self, SchemaError> {
        if features.is_empty() {
            return Err(SchemaError::Empty);
        }
        let mut lookup = HashMap::new();
        for (index, feature) in features.iter().enumerate() {
            let names = std::iter::once(&feature.name).chain(feature.aliases.iter());
            for name in names {
                if RESERVED_KEYS.contains(&name.as_str()) {
                    return Err(SchemaError::Reserved { name: name.clone() });
                }
                if let Some(previous) = lookup.insert(name.clone(), index) {
                    if previous != index {
                        return Err(SchemaError::DuplicateName {
                            name: name.clone(),
                            first: features[previous].name.clone(),
                            second: feature.name.clone(),
                        });
                    }
                }
            }
        }
        Ok(Self { features, lookup })
    }

    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    pub fn features(&self) -> &[FeatureSpec] {
        &self.features
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|f| f.name.as_str())
    }

    /// Returns the column index of a canonical name or alias (exact, case-sensitive).
    pub fn index_of(&self, key: &str) -> Option<usize> {
        self.lookup.get(key).copied()
    }
}

impl TryFrom<Vec<FeatureSpec>> for FeatureSchema {
    type Error = SchemaError;

    fn try_from(features: Vec<FeatureSpec>) -> Result<Self, Self::Error> {
        Self::new(features)
    }
}

impl From<FeatureSchema> for Vec<FeatureSpec> {
    fn from(schema: FeatureSchema) -> Self {
        schema.features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, aliases: &[&str]) -> FeatureSpec {
        FeatureSpec {
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            min: None,
            max: None,
        }
    }

    #[test]
    fn aliases_resolve_to_column() {
        let schema = FeatureSchema::new(vec![
            spec("Temperature", &["temperatura"]),
            spec("Humidity", &["umidade"]),
        ])
        .unwrap();
        assert_eq!(schema.index_of("Temperature"), Some(0));
        assert_eq!(schema.index_of("temperatura"), Some(0));
        assert_eq!(schema.index_of("umidade"), Some(1));
        assert_eq!(schema.index_of("temperature"), None);
    }

    #[test]
    fn shared_alias_is_rejected() {
        let error = FeatureSchema::new(vec![spec("A", &["x"]), spec("B", &["x"])]).unwrap_err();
        assert!(matches!(error, SchemaError::DuplicateName { .. }));
    }

    #[test]
    fn reserved_key_is_rejected() {
        let error = FeatureSchema::new(vec![spec("A", &["ts"])]).unwrap_err();
        assert_eq!(error, SchemaError::Reserved { name: "ts".into() });
    }
}

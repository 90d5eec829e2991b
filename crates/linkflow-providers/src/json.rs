//! Reading a JSON payload field by field, leniently: a field of an unexpected type or value is
//! never an error. The reader keeps what it can, notes a [`Warning`] naming the JSON path, and
//! the payload text stays whole in the stored record.

use serde_json::{Map, Value};

use crate::Warning;

/// The JSON type of a value, for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The warnings one payload's decoding collects.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    pub warnings: Vec<Warning>,
}

/// The most warnings kept per payload: a payload with hundreds of odd fields reports the first
/// ones (its text is stored whole anyway).
pub(crate) const MAX_WARNINGS: usize = 16;

impl Notes {
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(Warning {
                path: path.into(),
                message: message.into(),
            });
        }
    }

    fn wrong_type(&mut self, path: &str, expected: &str, found: &Value) {
        self.warn(
            path,
            format!(
                "expected {expected}, found {}; kept in the raw payload",
                type_name(found)
            ),
        );
    }
}

/// An object and its JSON path, to read fields from.
#[derive(Clone)]
pub(crate) struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    /// The payload's root, if it is an object.
    pub fn root(value: &'a Value) -> Option<Self> {
        value.as_object().map(|map| Obj {
            map,
            path: "$".into(),
        })
    }

    /// The JSON path of `key` in this object.
    pub fn path_of(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// A field as a raw value, if present and not null.
    pub fn value(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    /// The first of `keys` that is present (not null), with its key.
    pub fn first_of(&self, keys: &[&'static str]) -> Option<(&'static str, &'a Value)> {
        keys.iter()
            .find_map(|key| self.value(key).map(|value| (*key, value)))
    }

    /// A text field: a string as is; a number or boolean as its JSON text (with a warning); an
    /// object or array is not text (a warning; `None`).
    pub fn text(&self, key: &str, notes: &mut Notes) -> Option<String> {
        let value = self.value(key)?;
        as_text(value, &self.path_of(key), notes)
    }

    /// The first of `keys` that holds text (`text` rules), for fields that SDKs spell
    /// differently (`request_id`, `requestId`).
    pub fn text_of(&self, keys: &[&'static str], notes: &mut Notes) -> Option<String> {
        let (key, value) = self.first_of(keys)?;
        as_text(value, &self.path_of(key), notes)
    }

    /// The path and text of the first of `keys` that is present (`text` rules): where an id
    /// was found, for [`crate::session_for`]'s messages.
    pub fn found_text(&self, keys: &[&'static str], notes: &mut Notes) -> Option<(String, String)> {
        let (key, _) = self.first_of(keys)?;
        Some((self.path_of(key), self.text(key, notes)?))
    }

    /// An id: a non-empty string or an integer. Anything else is noted and skipped.
    pub fn id_of(&self, keys: &[&'static str], notes: &mut Notes) -> Option<String> {
        let (key, value) = self.first_of(keys)?;
        match value {
            Value::String(text) if !text.is_empty() => Some(text.clone()),
            Value::Number(number) if number.is_u64() || number.is_i64() => Some(number.to_string()),
            other => {
                notes.wrong_type(
                    &self.path_of(key),
                    "a non-empty string or an integer",
                    other,
                );
                None
            }
        }
    }

    /// A nested object; anything else under `key` is noted and skipped.
    pub fn obj(&self, key: &str, notes: &mut Notes) -> Option<Obj<'a>> {
        match self.value(key)? {
            Value::Object(map) => Some(Obj {
                map,
                path: self.path_of(key),
            }),
            other => {
                notes.wrong_type(&self.path_of(key), "an object", other);
                None
            }
        }
    }
}

/// A value as text: strings as they are, numbers and booleans as their JSON text (noted).
pub(crate) fn as_text(value: &Value, path: &str, notes: &mut Notes) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(_) | Value::Bool(_) => {
            notes.warn(
                path,
                format!(
                    "expected a string, found {}; read as text",
                    type_name(value)
                ),
            );
            Some(value.to_string())
        }
        other => {
            notes.wrong_type(path, "a string", other);
            None
        }
    }
}

/// `ids[].id` of an array field, when present: an array of objects with string or integer
/// `id`s. Entries that are not are noted and skipped.
pub(crate) fn ids_in(object: &Obj<'_>, key: &str, notes: &mut Notes) -> Vec<String> {
    let Some(value) = object.value(key) else {
        return Vec::new();
    };
    let path = object.path_of(key);
    let Some(items) = value.as_array() else {
        notes.wrong_type(&path, "an array", value);
        return Vec::new();
    };
    let mut ids = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let at = format!("{path}[{index}]");
        match item.as_object() {
            Some(map) => {
                let entry = Obj {
                    map,
                    path: at.clone(),
                };
                if let Some(id) = entry.id_of(&["id"], notes) {
                    ids.push(id);
                }
            }
            None => notes.wrong_type(&at, "an object", item),
        }
    }
    ids
}

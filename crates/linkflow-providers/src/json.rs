//! Reading a JSON payload field by field, with the JSON path of every problem.

use serde_json::{Map, Value};

use crate::error::DecodeError;

/// A value and where it is in the payload (`$.meta.timestamp`).
#[derive(Clone, Copy)]
pub(crate) struct At<'a> {
    pub value: &'a Value,
    pub path: &'a str,
}

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

pub(crate) fn child(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

impl<'a> At<'a> {
    pub fn root(value: &'a Value) -> Self {
        At { value, path: "$" }
    }

    pub fn object(&self) -> Result<&'a Map<String, Value>, DecodeError> {
        self.value
            .as_object()
            .ok_or_else(|| DecodeError::wrong_type(self.path, "an object", self.value))
    }
}

/// An object and its path, to read fields from.
pub(crate) struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub path: String,
}

impl<'a> Obj<'a> {
    pub fn new(at: At<'a>) -> Result<Self, DecodeError> {
        Ok(Obj {
            map: at.object()?,
            path: at.path.to_owned(),
        })
    }

    fn field(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    /// A string field that must be there.
    pub fn str(&self, key: &str) -> Result<&'a str, DecodeError> {
        match self.field(key) {
            None => Err(DecodeError::Missing {
                path: child(&self.path, key),
            }),
            Some(Value::String(text)) => Ok(text),
            Some(other) => Err(DecodeError::wrong_type(
                &child(&self.path, key),
                "a string",
                other,
            )),
        }
    }

    /// A string field that may be absent or null.
    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, DecodeError> {
        match self.field(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(DecodeError::wrong_type(
                &child(&self.path, key),
                "a string",
                other,
            )),
        }
    }

    /// An id that providers send as a string or a number (Knot's merchant id is a number).
    pub fn id(&self, key: &str) -> Result<String, DecodeError> {
        match self.field(key) {
            None => Err(DecodeError::Missing {
                path: child(&self.path, key),
            }),
            Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
            Some(Value::Number(number)) if number.is_u64() || number.is_i64() => {
                Ok(number.to_string())
            }
            Some(other) => Err(DecodeError::wrong_type(
                &child(&self.path, key),
                "a non-empty string or an integer",
                other,
            )),
        }
    }

    /// An optional id, string or integer.
    pub fn opt_id(&self, key: &str) -> Result<Option<String>, DecodeError> {
        match self.field(key) {
            None => Ok(None),
            Some(_) => self.id(key).map(Some),
        }
    }

    /// A nested object that must be there.
    pub fn obj(&self, key: &str) -> Result<Obj<'a>, DecodeError> {
        let path = child(&self.path, key);
        match self.field(key) {
            None => Err(DecodeError::Missing { path }),
            Some(Value::Object(map)) => Ok(Obj { map, path }),
            Some(other) => Err(DecodeError::wrong_type(&path, "an object", other)),
        }
    }

    /// A nested object that may be absent or null.
    pub fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, DecodeError> {
        match self.field(key) {
            None => Ok(None),
            Some(_) => self.obj(key).map(Some),
        }
    }

    /// A field as a raw value, if present and not null.
    pub fn value(&self, key: &str) -> Option<&'a Value> {
        self.field(key)
    }

    pub fn path_of(&self, key: &str) -> String {
        child(&self.path, key)
    }
}

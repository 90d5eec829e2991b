//! Tokens are withheld from stored payloads: an integrator that forwards a callback whole
//! (Benji's `AUTH_SUCCESS` metadata carries an access and a refresh token; MoneyKit's and
//! Knot's success callbacks carry exchangeable tokens; Plaid's `onSuccess` and
//! `SESSION_FINISHED` carry public tokens, its webhooks the link token) must not turn linkflow's log into a
//! store of credentials. The field stays, its value becomes [`WITHHELD`].

use serde_json::Value;

/// What a withheld token's value becomes.
pub const WITHHELD: &str = "[withheld]";

/// Keys whose values are credentials, as the providers' SDKs name them.
const SECRET_KEYS: [&str; 12] = [
    "token",
    "access_token",
    "refresh_token",
    "public_token",
    "public_tokens",
    "link_token",
    "exchangeable_token",
    "accessToken",
    "refreshToken",
    "publicToken",
    "exchangeableToken",
    "linkToken",
];

/// The most nesting searched: payloads are shallow; a deeper one is not walked further (its
/// depth is bounded by the JSON parser's own recursion limit anyway).
const MAX_DEPTH: usize = 32;

/// Replaces every secret value in `value` with [`WITHHELD`]; returns the JSON paths of the
/// replaced values.
pub(crate) fn withhold(value: &mut Value) -> Vec<String> {
    let mut paths = Vec::new();
    walk(value, "$", 0, &mut paths);
    paths
}

fn walk(value: &mut Value, path: &str, depth: usize, paths: &mut Vec<String>) {
    if depth >= MAX_DEPTH {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let child_path = format!("{path}.{key}");
                let secret = SECRET_KEYS.contains(&key.as_str())
                    && !child.is_null()
                    && *child != Value::String(WITHHELD.into());
                if secret {
                    *child = Value::String(WITHHELD.into());
                    paths.push(child_path);
                } else {
                    walk(child, &child_path, depth + 1, paths);
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{path}[{index}]"), depth + 1, paths);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_anywhere_are_withheld_and_named() {
        let mut value = serde_json::json!({
            "metadata": {"token": {"access_token": "a", "refresh_token": "r"}, "action": "connect"},
            "items": [{"public_token": "p"}],
            "token": null
        });
        let paths = withhold(&mut value);
        assert_eq!(paths, vec!["$.items[0].public_token", "$.metadata.token"]);
        assert_eq!(value["metadata"]["token"], WITHHELD);
        assert_eq!(value["metadata"]["action"], "connect");
        assert!(value["token"].is_null());
        // Withholding twice changes nothing more.
        assert!(withhold(&mut value).is_empty());
    }
}

//! Checks of the values a result carries, for readers of files written elsewhere: a strategy must be
//! one kepoch has, and no count or latency can be negative or at or above 2^63 (a counter that wrapped
//! below zero and was written as unsigned).

use serde_json::Value;

/// The strategies a result may name.
pub const STRATEGIES: [&str; 3] = ["eager", "lazy", "callback"];

/// Keys whose values are identifiers, not counts or latencies (any 64-bit value is valid).
const IDENTIFIERS: [&str; 1] = ["seed"];

/// The smallest value that is no count: 2^63.
const WRAPPED: f64 = 9_223_372_036_854_775_808.0;

/// Checks one result (a round): its `strategy`, its `loaded` flag and every number in it. `Err` names
/// the field (`first_enter_ns.hist[3][0]`) and what is wrong with it.
pub fn check_result(result: &Value) -> Result<(), String> {
    match result.get("strategy") {
        Some(Value::String(s)) if STRATEGIES.contains(&s.as_str()) => {}
        Some(Value::String(s)) => {
            return Err(format!(
                "strategy: unknown strategy `{s}` (expected {})",
                STRATEGIES.join(", ")
            ))
        }
        Some(other) => return Err(format!("strategy: {other} is not a strategy name")),
        None => return Err("no \"strategy\"".into()),
    }
    match result.get("loaded") {
        None | Some(Value::Bool(_)) => {}
        Some(other) => return Err(format!("loaded: {other} is not true or false")),
    }
    check_numbers(result, &mut String::new())
}

/// Walks `value`, checking every number; `path` is where `value` sits.
fn check_numbers(value: &Value, path: &mut String) -> Result<(), String> {
    match value {
        Value::Number(n) => {
            let bad = |why: &str| Err(format!("{path} is {n}: {why}"));
            if n.as_i64().is_some_and(|v| v < 0) || n.as_f64().is_some_and(|v| v < 0.0) {
                return bad("a count or latency cannot be negative");
            }
            if n.as_u64().is_some_and(|v| v >= 1 << 63) || n.as_f64().is_some_and(|v| v >= WRAPPED)
            {
                return bad("at or above 2^63, a counter that wrapped below zero");
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_numbers(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map {
                if IDENTIFIERS.contains(&key.as_str()) {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                check_numbers(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "strategy": "lazy", "loaded": true, "seed": u64::MAX, "cpus_prepared": 4,
            "first_enter_ns": {"p50": 380.5, "count": 2, "samples": [300, 461], "hist": [[300, 1]]},
            "hot_add": {"start": 0, "complete": 0}, "load_error": null,
        })
    }

    #[test]
    fn a_sound_result_passes() {
        check_result(&good()).unwrap();
    }

    #[test]
    fn impossible_values_are_named_with_their_field() {
        let cases: [(&[&str], Value, &str); 6] = [
            (
                &["first_enter_ns", "p50"],
                json!(-5),
                "first_enter_ns.p50 is -5",
            ),
            (&["cpus_prepared"], json!(-3), "cpus_prepared is -3"),
            (
                &["hot_add", "start"],
                json!(u64::MAX),
                "hot_add.start is 18446744073709551615: at or above 2^63",
            ),
            (&["cpus_prepared"], json!(1u64 << 63), "at or above 2^63"),
            (&["cpus_prepared"], json!(1e19), "at or above 2^63"),
            (
                &["loaded"],
                json!("yes"),
                "loaded: \"yes\" is not true or false",
            ),
        ];
        for (path, value, needle) in cases {
            let mut r = good();
            let mut cur = &mut r;
            for p in path {
                cur = &mut cur[*p];
            }
            *cur = value;
            let e = check_result(&r).unwrap_err();
            assert!(e.contains(needle), "{path:?}: {e}");
        }
        let mut r = good();
        r["first_enter_ns"]["hist"] = json!([[300, 1], [-1, 2]]);
        let e = check_result(&r).unwrap_err();
        assert!(e.contains("first_enter_ns.hist[1][0] is -1"), "{e}");
    }

    #[test]
    fn unknown_strategies_are_refused() {
        for (strategy, needle) in [
            (json!("unknown-9"), "unknown strategy `unknown-9`"),
            (json!("Lazy"), "unknown strategy `Lazy`"),
            (json!(1), "1 is not a strategy name"),
        ] {
            let mut r = good();
            r["strategy"] = strategy;
            let e = check_result(&r).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        let mut r = good();
        r.as_object_mut().unwrap().remove("strategy");
        assert!(check_result(&r).is_err());
    }
}

//! Python `repr()` of JSON values, for the `argsrepr`/`kwargsrepr` headers, logs and events
//! (Flower and `celery events` display these strings as a Python worker would write them).

use serde_json::{Map, Value};

/// Celery truncates reprs in headers (`argsrepr_maxsize` / `kwargsrepr_maxsize`, 1024 chars).
pub const MAX_REPR: usize = 1024;

pub fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

/// `repr(tuple(args))`: `(1, 2)`, `(1,)`, `()`.
pub fn repr_args(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, v) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(&mut out, v);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    out
}

pub fn repr_kwargs(kwargs: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_dict(&mut out, kwargs);
    out
}

/// Truncates a repr like Celery's `saferepr(maxlen)`: cut and finish with `...`.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.chars().count() > max {
        s = s.chars().take(max).collect();
        s.push_str("...");
    }
    s
}

fn write_repr(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                out.push_str(&repr_float(f));
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, v);
            }
            out.push(']');
        }
        Value::Object(map) => write_dict(out, map),
    }
}

fn write_dict(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, k);
        out.push_str(": ");
        write_repr(out, v);
    }
    out.push('}');
}

fn repr_float(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf".into() } else { "-inf".into() }
    } else if f == f.trunc() && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// Python's string repr: single quotes unless the text contains a single quote and no double.
fn write_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reprs_match_python() {
        assert_eq!(repr_args(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(repr_args(&[json!(7)]), "(7,)");
        assert_eq!(repr_args(&[]), "()");
        assert_eq!(repr(&json!(null)), "None");
        assert_eq!(
            repr(&json!([true, false, 1.5, 2.0])),
            "[True, False, 1.5, 2.0]"
        );
        assert_eq!(repr(&json!("it's")), "\"it's\"");
        assert_eq!(repr(&json!("a'\"b")), "'a\\'\"b'");
        assert_eq!(repr(&json!("ünï\n")), "'ünï\\n'");
        assert_eq!(
            repr_kwargs(json!({"x": "ünï", "y": 1}).as_object().unwrap()),
            "{'x': 'ünï', 'y': 1}"
        );
        assert_eq!(truncate("abcdef".into(), 3), "abc...");
    }
}

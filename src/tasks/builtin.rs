//! Built-in tasks: Celery's `celery.accumulate`, and the `astroworker.diag.*` tasks (enabled by
//! `--diagnostic-tasks`) that exercise every path of the worker from a Python producer.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Args, Registry, RetryRequest, TaskContext, TaskDef, TaskError, TaskOptions, TaskResult,
};
use crate::backend::ExceptionInfo;

pub fn register(registry: &mut Registry, diagnostics: bool) {
    registry.register(TaskDef::new("celery.accumulate", accumulate));
    if diagnostics {
        registry.register(TaskDef::new("astroworker.diag.echo", echo));
        registry.register(TaskDef::new("astroworker.diag.sleep", sleep));
        registry.register(TaskDef::new("astroworker.diag.fail", fail));
        registry.register(TaskDef::new("astroworker.diag.retry", retry).with_options(
            TaskOptions {
                max_retries: None,
                ..TaskOptions::default()
            },
        ));
        registry.register(TaskDef::new("astroworker.diag.progress", progress));
        registry.register(TaskDef::new("astroworker.diag.add", add));
        registry.register(TaskDef::new("astroworker.diag.tsum", tsum));
    }
}

/// Celery's `accumulate(*args, index=None)`: `args[index]` if an index is given, else `args`.
fn accumulate(_: &TaskContext, a: Args) -> TaskResult {
    if let Some((key, _)) = a.kwargs.iter().find(|(k, _)| k.as_str() != "index") {
        return Err(TaskError::type_error(format!(
            "celery.accumulate() got an unexpected keyword argument '{key}'"
        )));
    }
    match a.kwargs.get("index") {
        None | Some(Value::Null) => Ok(Value::Array(a.args)),
        Some(index) => {
            let len = a.args.len() as i64;
            let i = index
                .as_i64()
                .ok_or_else(|| TaskError::type_error("tuple indices must be integers or slices"))?;
            let pos = if i < 0 { len + i } else { i };
            usize::try_from(pos)
                .ok()
                .and_then(|p| a.args.get(p).cloned())
                .ok_or_else(|| {
                    TaskError::exception(ExceptionInfo::builtin(
                        "IndexError",
                        "tuple index out of range",
                    ))
                })
        }
    }
}

fn echo(_: &TaskContext, a: Args) -> TaskResult {
    #[derive(Deserialize)]
    struct P {
        value: Value,
    }
    let p: P = a.bind("astroworker.diag.echo", &["value"])?;
    Ok(p.value)
}

/// `x + y` (integers stay integers): the arithmetic step of canvas tests.
fn add(_: &TaskContext, a: Args) -> TaskResult {
    #[derive(Deserialize)]
    struct P {
        x: serde_json::Number,
        y: serde_json::Number,
    }
    let p: P = a.bind("astroworker.diag.add", &["x", "y"])?;
    Ok(number_sum([&p.x, &p.y]))
}

/// `sum(values)`: the chord callback of canvas tests.
fn tsum(_: &TaskContext, a: Args) -> TaskResult {
    #[derive(Deserialize)]
    struct P {
        values: Vec<serde_json::Number>,
    }
    let p: P = a.bind("astroworker.diag.tsum", &["values"])?;
    Ok(number_sum(&p.values))
}

/// Python's `sum` of numbers: an int while every term is one.
fn number_sum<'a>(terms: impl IntoIterator<Item = &'a serde_json::Number>) -> Value {
    let mut int: Option<i64> = Some(0);
    let mut float = 0.0;
    for t in terms {
        int = int.and_then(|acc| t.as_i64().and_then(|v| acc.checked_add(v)));
        float += t.as_f64().unwrap_or(f64::NAN);
    }
    int.map_or_else(|| json!(float), |i| json!(i))
}

fn sleep(ctx: &TaskContext, a: Args) -> TaskResult {
    #[derive(Deserialize)]
    struct P {
        seconds: f64,
    }
    let p: P = a.bind("astroworker.diag.sleep", &["seconds"])?;
    if !(p.seconds.is_finite() && p.seconds >= 0.0) {
        return Err(TaskError::value_error(
            "seconds must be a finite number >= 0",
        ));
    }
    ctx.sleep(Duration::from_secs_f64(p.seconds))?;
    Ok(json!(p.seconds))
}

fn fail(_: &TaskContext, a: Args) -> TaskResult {
    #[derive(Deserialize)]
    struct P {
        message: String,
    }
    let p: P = a.bind("astroworker.diag.fail", &["message"])?;
    Err(TaskError::exception(ExceptionInfo::new(
        "DiagnosticError",
        "astroworker.errors",
        p.message,
    )))
}

fn retry(ctx: &TaskContext, a: Args) -> TaskResult {
    #[derive(Deserialize)]
    struct P {
        times: u32,
        #[serde(default)]
        countdown: f64,
    }
    let p: P = a.bind("astroworker.diag.retry", &["times", "countdown"])?;
    if ctx.request.retries < p.times {
        return Err(ctx.retry(RetryRequest {
            countdown: Some(p.countdown),
            max_retries: Some(Some(p.times)),
            exc: Some(ExceptionInfo::new(
                "DiagnosticRetry",
                "astroworker.errors",
                format!("retry {} of {}", ctx.request.retries + 1, p.times),
            )),
        }));
    }
    Ok(json!(ctx.request.retries))
}

fn progress(ctx: &TaskContext, a: Args) -> TaskResult {
    #[derive(Deserialize)]
    struct P {
        steps: u64,
        #[serde(default)]
        delay: f64,
    }
    let p: P = a.bind("astroworker.diag.progress", &["steps", "delay"])?;
    if !(p.delay.is_finite() && p.delay >= 0.0) {
        return Err(TaskError::value_error("delay must be a finite number >= 0"));
    }
    for i in 0..p.steps {
        ctx.update_state("PROGRESS", json!({"current": i, "total": p.steps}));
        ctx.sleep(Duration::from_secs_f64(p.delay))?;
    }
    Ok(json!(p.steps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn run(name: &str, args: Value, kwargs: Value) -> TaskResult {
        let mut reg = Registry::default();
        register(&mut reg, true);
        let def = reg.get(name).unwrap();
        let ctx = TaskContext::local(name);
        def.run(
            &ctx,
            Args::new(
                args.as_array().unwrap().clone(),
                kwargs.as_object().cloned().unwrap_or_else(Map::new),
            ),
        )
    }

    #[test]
    fn accumulate_matches_celery() {
        assert_eq!(
            run("celery.accumulate", json!([1, "a", null]), json!({})).unwrap(),
            json!([1, "a", null])
        );
        assert_eq!(
            run("celery.accumulate", json!([1, 2, 3]), json!({"index": -1})).unwrap(),
            json!(3)
        );
        assert!(run("celery.accumulate", json!([1]), json!({"index": 5})).is_err());
    }

    #[test]
    fn diagnostics() {
        assert_eq!(
            run("astroworker.diag.echo", json!([{"k": [1, 2]}]), json!({})).unwrap(),
            json!({"k": [1, 2]})
        );
        assert_eq!(
            run("astroworker.diag.sleep", json!([0.01]), json!({})).unwrap(),
            json!(0.01)
        );
        match run("astroworker.diag.fail", json!(["bad"]), json!({})) {
            Err(TaskError::Exception { exc, .. }) => {
                assert_eq!(exc.exc_type, "DiagnosticError");
                assert_eq!(exc.message(), "bad");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            run("astroworker.diag.retry", json!([2]), json!({})),
            Err(TaskError::Retry(RetryRequest {
                countdown: Some(0.0),
                ..
            }))
        ));
        assert_eq!(
            run("astroworker.diag.retry", json!([0]), json!({})).unwrap(),
            json!(0)
        );
        assert_eq!(
            run("astroworker.diag.progress", json!([3]), json!({})).unwrap(),
            json!(3)
        );
        assert_eq!(
            run("astroworker.diag.add", json!([2, 3]), json!({})).unwrap(),
            json!(5)
        );
        assert_eq!(
            run("astroworker.diag.add", json!([2, 0.5]), json!({})).unwrap(),
            json!(2.5)
        );
        assert_eq!(
            run("astroworker.diag.tsum", json!([[1, 2, 3]]), json!({})).unwrap(),
            json!(6)
        );
        assert_eq!(
            run("astroworker.diag.tsum", json!([[]]), json!({})).unwrap(),
            json!(0)
        );
        assert!(run("astroworker.diag.sleep", json!([-1]), json!({})).is_err());
    }
}

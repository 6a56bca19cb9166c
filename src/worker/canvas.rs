//! Canvas on the worker side, as Celery's tracer and Redis backend do it (PROTOCOL.md §10–12):
//!
//! - on success, link callbacks and then the next chain step are published (with the result
//!   as first argument) *before* the SUCCESS state, whose `children` names the next step;
//! - a header task's final state goes into its chord's join set; the task that completes the
//!   chord publishes the body with the ordered results, or fails it with `ChordError`;
//! - on failure, every remaining chain step gets the same FAILURE, chord parts are returned and
//!   link_error errbacks are published with the failed task's id as argument.
//!
//! Chain steps that are themselves canvases (`celery.chain`, `celery.group`, `celery.chord`, as
//! in `a | group(b, c) | d`) are applied here, like Python's `Signature.apply_async` would.

use serde_json::{Value, json};

use super::Shared;
use crate::backend::chord::ChordProgress;
use crate::backend::{ExceptionInfo, State, TaskMeta};
use crate::protocol::Request;
use crate::protocol::signature::{Placement, Sender, Signature, task_message};

impl Shared {
    fn sender<'a>(&'a self, req: &'a Request) -> Sender<'a> {
        Sender {
            parent_id: &req.id,
            root_id: req.root_id.as_deref().unwrap_or(&req.id),
            origin: &self.origin,
        }
    }

    /// Publishes link callbacks and the next chain step for a successful request; returns the
    /// `children` of its SUCCESS result.
    pub(crate) async fn on_success(&self, req: &Request, value: &Value) -> Vec<Value> {
        let sender = self.sender(req);
        let mut children = Vec::new();
        for cb in req.embed.callbacks.iter().flatten() {
            let place = Placement {
                partial_args: vec![value.clone()],
                ..Placement::default()
            };
            if let Some(id) = self.apply(cb, place, &sender).await {
                children.push(json!([[id, null], null]));
            }
        }
        let mut chain = req.embed.chain.clone().unwrap_or_default();
        if let Some(next) = chain.pop() {
            let place = Placement {
                partial_args: vec![value.clone()],
                chain: Some(chain),
                ..Placement::default()
            };
            if let Some(id) = self.apply(&next, place, &sender).await {
                children.push(json!([[id, null], null]));
            }
        }
        children
    }

    /// After a final state (SUCCESS, FAILURE, REVOKED): returns the part of a chord header task.
    pub(crate) async fn on_ready(&self, req: &Request, state: State, result: &Value) {
        let (Some(body), Some(gid)) = (&req.embed.chord, &req.group) else {
            return;
        };
        self.chord_part(gid, &req.id, req.group_index, body, &state, result, req)
            .await;
    }

    /// After a FAILURE: chord part, the rest of the chain failed too, errbacks published.
    pub(crate) async fn on_failure(
        &self,
        req: &Request,
        exc: &ExceptionInfo,
        traceback: Option<&str>,
        call_errbacks: bool,
    ) {
        self.on_ready(req, State::Failure, &exc.to_json()).await;
        self.fail_chain(
            req.embed.chain.clone().unwrap_or_default(),
            exc,
            traceback,
            req,
        )
        .await;
        if call_errbacks {
            self.call_errbacks(req.embed.errbacks.as_deref().unwrap_or(&[]), &req.id, req)
                .await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn chord_part(
        &self,
        gid: &str,
        tid: &str,
        group_index: Option<i64>,
        body: &Value,
        state: &State,
        result: &Value,
        req: &Request,
    ) {
        let Some(backend) = &self.backend else { return };
        let progress = match backend
            .chord_part_return(gid, tid, group_index, state, result)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(task_id = %tid, "could not return chord part of group {gid}: {e}");
                return;
            }
        };
        let Some(body) = Signature::from_json(body) else {
            tracing::error!(task_id = %tid, "chord {gid}: the body is not a signature");
            return;
        };
        match progress {
            ChordProgress::Pending => {}
            ChordProgress::Complete { results, token } => {
                let place = Placement {
                    partial_args: vec![Value::Array(results)],
                    ..Placement::default()
                };
                if self
                    .apply(&body.to_json(), place, &self.sender(req))
                    .await
                    .is_none()
                {
                    let exc = ExceptionInfo::new(
                        "ChordError",
                        "celery.exceptions",
                        "Callback error: could not publish the chord body",
                    );
                    self.fail_chord_body(&body, &exc, req).await;
                }
                match backend.chord_cleanup(gid, &token).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        "Chord callback claim for {gid:?} was lost before cleanup; chord data was left for expiry"
                    ),
                    Err(e) => tracing::warn!("could not clean up chord {gid}: {e}"),
                }
            }
            ChordProgress::Failed(exc) => {
                tracing::error!("Chord {gid:?} raised: {}", exc.repr());
                self.fail_chord_body(&body, &exc, req).await;
                if let Err(e) = backend.chord_forget_size(gid).await {
                    tracing::warn!("could not drop the size of chord {gid}: {e}");
                }
            }
        }
    }

    /// Celery's `chord_error_from_stack`: the body's id gets FAILURE, its errbacks run.
    async fn fail_chord_body(&self, body: &Signature, exc: &ExceptionInfo, req: &Request) {
        let id = body
            .task_id()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), String::from);
        let tb = format!("celery.exceptions.ChordError: {}\n", exc.message());
        self.store_for(&id, body, exc, Some(&tb)).await;
        self.call_errbacks(&body.link_errors(), &id, req).await;
    }

    /// Celery's `_fail_chain`: every remaining step (and a chord step's body) gets the failure.
    async fn fail_chain(
        &self,
        chain: Vec<Value>,
        exc: &ExceptionInfo,
        traceback: Option<&str>,
        req: &Request,
    ) {
        let mut pending: std::collections::VecDeque<Value> = chain.into();
        while let Some(elem) = pending.pop_front() {
            let Some(sig) = Signature::from_json(&elem) else {
                continue;
            };
            if sig.task_id().is_some() {
                self.store_for(sig.task_id().unwrap_or_default(), &sig, exc, traceback)
                    .await;
            }
            if let (Some(body), Some(gid), Some(id)) = (
                sig.options.get("chord"),
                sig.options.get("group_id").and_then(Value::as_str),
                sig.task_id(),
            ) {
                let index = sig.options.get("group_index").and_then(Value::as_i64);
                Box::pin(self.chord_part(
                    gid,
                    id,
                    index,
                    body,
                    &State::Failure,
                    &exc.to_json(),
                    req,
                ))
                .await;
            }
            if sig.subtask_type.as_deref() == Some("chord")
                && let Some(body) = sig.kwargs.get("body")
            {
                pending.push_back(body.clone());
            }
        }
    }

    /// Stores FAILURE for a task that never ran (a later chain step, a chord body).
    async fn store_for(
        &self,
        id: &str,
        sig: &Signature,
        exc: &ExceptionInfo,
        traceback: Option<&str>,
    ) {
        let Some(backend) = &self.backend else { return };
        let mut meta = TaskMeta::new(id, State::Failure, exc.to_json());
        meta.traceback = traceback.map(String::from);
        meta.group_id = sig.options.get("group_id").and_then(Value::as_str);
        if let Err(e) = backend.store(&meta).await {
            tracing::error!(task_id = %id, "could not store FAILURE result: {e}");
        }
    }

    /// Publishes link_error errbacks as tasks called with the failed task's id, as Celery does
    /// for errbacks it cannot call in-process (astroworker never calls Python code inline).
    async fn call_errbacks(&self, errbacks: &[Value], failed_id: &str, req: &Request) {
        let sender = Sender {
            parent_id: failed_id,
            root_id: req.root_id.as_deref().unwrap_or(&req.id),
            origin: &self.origin,
        };
        for errback in errbacks {
            let place = Placement {
                partial_args: vec![json!(failed_id)],
                ..Placement::default()
            };
            self.apply(errback, place, &sender).await;
        }
    }

    /// Publishes a signature (a plain task or a canvas); returns the id of the published task
    /// (the first one for a canvas), `None` when nothing could be published.
    async fn apply(&self, sig: &Value, place: Placement, sender: &Sender<'_>) -> Option<String> {
        let Some(sig) = Signature::from_json(sig) else {
            tracing::error!("cannot publish {sig}: not a signature");
            return None;
        };
        match (sig.subtask_type.as_deref(), sig.task.as_str()) {
            (Some("chain"), _) | (_, "celery.chain") => {
                let mut tasks = sig.tasks();
                if tasks.is_empty() {
                    return None;
                }
                let first = tasks.remove(0);
                // The chain list is reversed (next step last): the outer steps run after ours.
                let mut chain = place.chain.clone().unwrap_or_default();
                chain.extend(tasks.iter().rev().map(Signature::to_json));
                let place = Placement {
                    chain: Some(chain),
                    ..place
                };
                Box::pin(self.apply(&first.to_json(), place, sender)).await
            }
            (Some("group"), _) | (_, "celery.group") => {
                let gid = sig
                    .task_id()
                    .map_or_else(|| uuid::Uuid::new_v4().to_string(), String::from);
                self.apply_members(&sig.tasks(), &gid, None, &place, sender)
                    .await
            }
            (Some("chord"), _) | (_, "celery.chord") => {
                let header = sig.nested("header")?;
                let mut body = sig.nested("body")?;
                if let Some(chain) = place.chain.clone().filter(|c| !c.is_empty()) {
                    body.options.insert("chain".into(), Value::Array(chain));
                }
                let gid = header
                    .task_id()
                    .or(sig.task_id())
                    .map_or_else(|| uuid::Uuid::new_v4().to_string(), String::from);
                let tasks = header.tasks();
                if tasks.is_empty() {
                    let place = Placement {
                        partial_args: vec![json!([])],
                        ..Placement::default()
                    };
                    return self.publish(&body, &place, sender).await;
                }
                let backend = self.backend.as_ref()?;
                if let Err(e) = backend.set_chord_size(&gid, tasks.len()).await {
                    tracing::error!("could not start chord {gid}: {e}");
                    return None;
                }
                self.apply_members(&tasks, &gid, Some(body.to_json()), &place, sender)
                    .await
            }
            _ => self.publish(&sig, &place, sender).await,
        }
    }

    /// Publishes the members of a group (or chord header) with their group id and index.
    async fn apply_members(
        &self,
        tasks: &[Signature],
        gid: &str,
        chord: Option<Value>,
        place: &Placement,
        sender: &Sender<'_>,
    ) -> Option<String> {
        let mut first = None;
        for (i, task) in tasks.iter().enumerate() {
            let member = Placement {
                partial_args: place.partial_args.clone(),
                chain: None,
                group: Some((gid.to_string(), i as i64)),
                chord: chord.clone(),
            };
            let id = self.publish(task, &member, sender).await;
            first = first.or(id);
        }
        first
    }

    async fn publish(
        &self,
        sig: &Signature,
        place: &Placement,
        sender: &Sender<'_>,
    ) -> Option<String> {
        let out = task_message(sig, place, sender);
        match self
            .broker
            .publish(&out.envelope, &out.exchange, &out.routing_key)
            .await
        {
            Ok(()) => Some(out.id),
            Err(e) => {
                tracing::error!(task_id = %out.id, "could not publish {}: {e}", sig.task);
                None
            }
        }
    }
}

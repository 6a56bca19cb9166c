//! Celery remote control ("pidbox") over Redis: what makes `celery inspect …` and
//! `celery control …` work against astroworker, and astroworker's own `inspect`/`control`
//! subcommands work against any Celery worker.
//!
//! - [`message`]: the request and reply envelopes (PROTOCOL.md §18, golden `pidbox_*`).
//! - [`node`]: the worker's mailbox — PSUBSCRIBE `/{db}.celery.pidbox`, the binding in
//!   `_kombu.binding.celery.pidbox`, replies LPUSHed through `_kombu.binding.reply.celery.pidbox`.
//! - [`commands`]: the commands and their Celery 5.5 reply shapes; [`stats`]: `stats`/`conf`.
//! - [`clock`]: kombu's Lamport clock; [`client`]: the caller's side.

pub mod client;
pub mod clock;
pub mod commands;
pub mod message;
pub(crate) mod node;
pub(crate) mod stats;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Message(#[from] message::MessageError),
}

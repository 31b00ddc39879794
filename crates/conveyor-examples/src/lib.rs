//! The seeds' applications (`../shared/seeds/`: teams that moved their job queues from Redis to
//! Kafka or Redpanda) written on conveyor, one binary each in `src/bin/`, each with a "Run with"
//! line at its top and exercised by a test in `tests/`:
//!
//! | binary | what it shows |
//! |---|---|
//! | `orders` | HTTP `POST /orders` -> topic -> worker pool -> PostgreSQL rows through the inbox |
//! | `cv_eval` | a job whose result is written back as an event in the same transaction |
//! | `agents` | one task topic per agent, a shared responses topic, request/reply between agents |
//! | `waitlist` | job topics plus event-sourcing topics; a projection rebuilt by replaying events |
//!
//! This library holds what the binaries share: opening the backend a binary was asked for.

pub mod agents;
pub mod backend;
pub mod waitlist;

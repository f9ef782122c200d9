//! observe: one light service for product analytics, errors, API request logs, custom metrics
//! and uptime monitors.
//!
//! # Following one request through the system
//!
//! A request reaches the actix-web server that [`startup::Application`] bound. Before any
//! route sees it, [`middleware::request_context`] gives it an id (the client's `X-Request-Id`
//! if it is plain, else a fresh UUIDv7) and opens a tracing span carrying that id, so every log
//! line the request causes, in any layer, names it.
//!
//! The router then picks a handler in [`routes`]. Handlers read shared handles from
//! [`state::AppState`]: the PostgreSQL and Redis pools and metrics from `observe-core`, and the
//! [`observe_actors::Supervisor`] through which they reach actors. Actors own every concern that
//! has state over time (an ingest buffer per project, a timer per monitor, cron jobs); a route
//! sends them a message with `try_send`, so a full mailbox becomes a 503 with `Retry-After`
//! rather than unbounded memory, and a 2xx is only sent once the actor reports the data stored.
//!
//! Whatever the handler returns, on the way out the middleware turns any error (the handler's
//! own [`error::ApiError`], a JSON extractor failure, actix's 404 or 405, even a panic) into the
//! one JSON error shape with the request id, echoes `X-Request-Id`, records the request under
//! its route *template* in `/metrics`, and logs one `request completed` line. Headers and bodies
//! are never logged, which is how tokens and keys stay out of the logs.
//!
//! If an actor fails meanwhile (a handler panics, or it stops itself on an error), its
//! supervisor logs one `actor restarted` line, counts it in `observe_actor_restarts_total`, and
//! starts a fresh one after a backoff; the HTTP side keeps serving. On SIGTERM the server stops
//! accepting connections, finishes in-flight requests, and the supervisor sends `Drain` to every
//! buffering actor and waits for their replies before the process exits.
//!
//! # Layers
//!
//! `observe-core` (config, store, Redis, metrics) ← `observe-actors` (supervised actors) ←
//! this crate (HTTP and `main`). Crate boundaries enforce it: nothing lower can name anything
//! higher.

pub mod error;
pub mod middleware;
pub mod openapi;
pub mod query;
pub mod routes;
pub mod session;
pub mod startup;
pub mod state;
pub mod validate;

//! The durable email outbox (filled by the Mailer work).

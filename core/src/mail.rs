//! Outgoing email: messages, templates and providers (filled by the Mailer work).

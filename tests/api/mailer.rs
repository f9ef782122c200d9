//! Mailer end to end (filled by the Mailer work).

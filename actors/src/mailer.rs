//! The Mailer actor (filled by the Mailer work).

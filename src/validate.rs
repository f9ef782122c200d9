//! Checks of user input that collect every problem, so a 422 lists all of them at once.

use crate::error::{ApiError, FieldError};

#[derive(Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, field: &str, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    /// `Ok` when nothing was wrong, else the 422.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }

    /// An email address, trimmed and lowercased.
    pub fn email(&mut self, field: &str, value: &str) -> String {
        let email = value.trim().to_lowercase();
        let plausible = email.len() <= 254
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            });
        if !plausible {
            self.add(field, "must be an email address like name@example.com");
        }
        email
    }

    /// A password of at least `min` characters (and at most 1024, which bounds hashing work).
    pub fn password(&mut self, field: &str, value: &str, min: usize) {
        let len = value.chars().count();
        if len < min {
            self.add(field, format!("must be at least {min} characters"));
        } else if len > 1024 {
            self.add(field, "must be at most 1024 characters");
        } else if value.trim().is_empty() {
            self.add(field, "must not be only whitespace");
        }
    }

    /// A display name: 1 to `max` characters after trimming.
    pub fn name(&mut self, field: &str, value: &str, max: usize) -> String {
        let name = value.trim().to_string();
        if name.is_empty() {
            self.add(field, "must not be empty");
        } else if name.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        } else if name.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_problem() {
        let mut p = Problems::default();
        assert_eq!(p.email("email", "  Ada@Example.COM "), "ada@example.com");
        p.email("email2", "not-an-email");
        p.email("email3", "nul\u{0}@example.com");
        p.password("password", "short", 10);
        p.name("name", "   ", 100);
        match p.finish() {
            Err(ApiError::Validation(fields)) => {
                let names: Vec<_> = fields.iter().map(|f| f.field.as_str()).collect();
                assert_eq!(names, vec!["email2", "email3", "password", "name"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepts_good_input() {
        let mut p = Problems::default();
        p.email("email", "a.b+c@mail.example.org");
        p.password("password", "correct horse battery", 10);
        p.name("name", "Ada Lovelace", 100);
        assert!(p.finish().is_ok());
    }
}

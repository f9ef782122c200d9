//! Operator-wide counts for `GET /admin/stats`. Each later feature adds its own figures here.

use serde::Serialize;

use super::{GenericClient, StoreError};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub users: i64,
    pub organisations_hobby: i64,
    pub organisations_pro: i64,
    pub organisations_team: i64,
    pub projects: i64,
    pub api_keys_active: i64,
    pub api_keys_revoked: i64,
    pub emails_pending: i64,
    pub emails_sent: i64,
    pub emails_failed: i64,
    /// Items accepted this calendar month (UTC), all organisations.
    pub events_this_month: i64,
    pub errors_this_month: i64,
    pub api_requests_this_month: i64,
}

pub async fn counts(client: &impl GenericClient) -> Result<Counts, StoreError> {
    let row = client
        .query_one(
            "SELECT
                (SELECT count(*) FROM users),
                (SELECT count(*) FROM organisations WHERE tier = 'hobby'),
                (SELECT count(*) FROM organisations WHERE tier = 'pro'),
                (SELECT count(*) FROM organisations WHERE tier = 'team'),
                (SELECT count(*) FROM projects),
                (SELECT count(*) FROM api_keys WHERE revoked_at IS NULL),
                (SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL),
                (SELECT count(*) FROM email_outbox WHERE status = 'pending'),
                (SELECT count(*) FROM email_outbox WHERE status = 'sent'),
                (SELECT count(*) FROM email_outbox WHERE status = 'failed'),
                (SELECT coalesce(sum(count), 0)::int8 FROM usage
                  WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date AND category = 'events'),
                (SELECT coalesce(sum(count), 0)::int8 FROM usage
                  WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date AND category = 'errors'),
                (SELECT coalesce(sum(count), 0)::int8 FROM usage
                  WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date AND category = 'api_requests')",
            &[],
        )
        .await?;
    Ok(Counts {
        users: row.get(0),
        organisations_hobby: row.get(1),
        organisations_pro: row.get(2),
        organisations_team: row.get(3),
        projects: row.get(4),
        api_keys_active: row.get(5),
        api_keys_revoked: row.get(6),
        emails_pending: row.get(7),
        emails_sent: row.get(8),
        emails_failed: row.get(9),
        events_this_month: row.get(10),
        errors_this_month: row.get(11),
        api_requests_this_month: row.get(12),
    })
}

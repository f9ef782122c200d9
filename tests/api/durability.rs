//! Durability of acknowledged items: kill -9, PostgreSQL outages, Redis outages.

-- The observe instances running monitors, each leased like a shard: the live ones share the
-- shards (each takes at most shards ÷ live instances), so an instance that holds no shard yet
-- still counts. Replaces the presence rows 0004's first engine kept in `monitor_shards` under
-- negative shard numbers.
CREATE TABLE monitor_instances (
    id          text        PRIMARY KEY,
    lease_until timestamptz NOT NULL
);

DELETE FROM monitor_shards WHERE shard < 0;

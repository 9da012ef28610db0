-- The repmgr catalog. Table and column names, types and order match repmgr 5.x so that
-- existing monitoring queries and scripts keep working.

CREATE TABLE repmgr.nodes (
  node_id          INTEGER     PRIMARY KEY,
  upstream_node_id INTEGER     NULL REFERENCES repmgr.nodes (node_id) DEFERRABLE,
  active           BOOLEAN     NOT NULL DEFAULT TRUE,
  node_name        TEXT        NOT NULL,
  type             TEXT        NOT NULL CHECK (type IN ('primary', 'standby', 'witness')),
  location         TEXT        NOT NULL DEFAULT 'default',
  priority         INT         NOT NULL DEFAULT 100,
  conninfo         TEXT        NOT NULL,
  repluser         VARCHAR(63) NOT NULL,
  slot_name        TEXT        NULL,
  config_file      TEXT        NOT NULL
);

-- No foreign key to nodes: the history of a node outlives its registration.
CREATE TABLE repmgr.events (
  node_id          INTEGER     NOT NULL,
  event            TEXT        NOT NULL,
  successful       BOOLEAN     NOT NULL DEFAULT TRUE,
  event_timestamp  TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
  details          TEXT        NULL
);

CREATE TABLE repmgr.monitoring_history (
  primary_node_id           INTEGER     NOT NULL,
  standby_node_id           INTEGER     NOT NULL,
  last_monitor_time         TIMESTAMPTZ NOT NULL,
  last_apply_time           TIMESTAMPTZ,
  last_wal_primary_location PG_LSN      NOT NULL,
  last_wal_standby_location PG_LSN,
  replication_lag           BIGINT      NOT NULL,
  apply_lag                 BIGINT      NOT NULL
);

CREATE INDEX idx_monitoring_history_time
  ON repmgr.monitoring_history (last_monitor_time, standby_node_id);

CREATE TABLE repmgr.voting_term (
  term INT NOT NULL
);

-- At most one row, and it cannot be deleted.
CREATE UNIQUE INDEX voting_term_restrict ON repmgr.voting_term ((TRUE));
CREATE RULE voting_term_delete AS ON DELETE TO repmgr.voting_term DO INSTEAD NOTHING;

-- The synchronous quorum the primary promises (repmgr.synchronous_standbys), written only by
-- its monitoring worker, read by standbys before they stand for election. At most one row.
-- Not dumped: it describes a running cluster, not its configuration.
CREATE TABLE repmgr.synchronous_quorum (
  primary_node_id INT NOT NULL,
  num_sync INT NOT NULL CHECK (num_sync >= 0),
  members INT[] NOT NULL,
  published_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
  -- The WAL position it was written at: a node that has it has at least that much WAL.
  version BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX synchronous_quorum_single ON repmgr.synchronous_quorum ((TRUE));

-- The failover protocol's view of who votes: the active nodes, the list before its last
-- change and who made it, with a version that only grows (a WAL position taken when the list
-- changed). Written by the trigger on repmgr.nodes (see repmgr.nodes_changed()); a primary
-- counts the old list too until enough voters have the new one, so that no election can be
-- won under a list it no longer counts. One row. Not dumped: it describes a running cluster.
CREATE TABLE repmgr.membership (
  version    BIGINT NOT NULL,
  voters     INT[]  NOT NULL,
  previous   INT[]  NOT NULL,
  changed_by INT    NULL
);
CREATE UNIQUE INDEX membership_single ON repmgr.membership ((TRUE));
INSERT INTO repmgr.membership VALUES (0, '{}', '{}', NULL);

-- The catalog's contents belong in pg_dump output, like user data.
SELECT pg_catalog.pg_extension_config_dump('repmgr.nodes', '');
SELECT pg_catalog.pg_extension_config_dump('repmgr.events', '');
SELECT pg_catalog.pg_extension_config_dump('repmgr.monitoring_history', '');
SELECT pg_catalog.pg_extension_config_dump('repmgr.voting_term', '');

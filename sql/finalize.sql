-- Objects that depend on the extension's functions, and the privilege model.

CREATE VIEW repmgr.show_nodes AS
  SELECT n.node_id,
         n.node_name,
         n.active,
         n.upstream_node_id,
         un.node_name AS upstream_node_name,
         n.type,
         n.priority,
         repmgr.mask_conninfo(n.conninfo) AS conninfo
    FROM repmgr.nodes n
    LEFT JOIN repmgr.nodes un ON un.node_id = n.upstream_node_id;

CREATE VIEW repmgr.replication_status AS
  SELECT m.primary_node_id,
         m.standby_node_id,
         n.node_name AS standby_name,
         n.type AS node_type,
         n.active,
         m.last_monitor_time,
         CASE WHEN n.type = 'standby' THEN m.last_wal_primary_location ELSE NULL END
           AS last_wal_primary_location,
         m.last_wal_standby_location,
         CASE WHEN n.type = 'standby' THEN pg_catalog.pg_size_pretty(m.replication_lag) ELSE NULL END
           AS replication_lag,
         CASE WHEN n.type = 'standby' THEN
                CASE WHEN m.replication_lag > 0
                     THEN pg_catalog.age(pg_catalog.now(), m.last_apply_time)
                     ELSE '0'::pg_catalog.interval
                END
              ELSE NULL
         END AS replication_time_lag,
         CASE WHEN n.type = 'standby' THEN pg_catalog.pg_size_pretty(m.apply_lag) ELSE NULL END
           AS apply_lag,
         pg_catalog.age(pg_catalog.now(),
                        CASE WHEN pg_catalog.pg_is_in_recovery()
                             THEN repmgr.standby_get_last_updated()
                             ELSE m.last_monitor_time
                        END) AS communication_time_lag
    FROM repmgr.monitoring_history m
    JOIN repmgr.nodes n ON m.standby_node_id = n.node_id
   WHERE (m.standby_node_id, m.last_monitor_time) IN (
           SELECT m1.standby_node_id, pg_catalog.max(m1.last_monitor_time)
             FROM repmgr.monitoring_history m1
            GROUP BY 1);

-- Every change of the voters goes through the failover protocol before it commits: on a
-- primary, repmgr.membership_changed() makes the lease count the new list (and the old one
-- until enough voters have the new), saved to disk, or refuses while an earlier change is still
-- settling. It runs as the extension's owner, whoever changes the nodes.
CREATE FUNCTION repmgr.nodes_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  now_voters INT[] := ARRAY(SELECT node_id FROM repmgr.nodes WHERE active ORDER BY node_id);
  m repmgr.membership;
BEGIN
  SELECT * INTO m FROM repmgr.membership;
  IF m.voters IS NOT DISTINCT FROM now_voters THEN
    RETURN NULL;
  END IF;
  UPDATE repmgr.membership
     SET version = repmgr.membership_changed(
           GREATEST(m.version + 1, (pg_current_wal_insert_lsn() - '0/0')::BIGINT), now_voters),
         previous = m.voters,
         voters = now_voters,
         changed_by = NULLIF(NULLIF(current_setting('repmgr.node_id', true), ''), '0')::INT;
  RETURN NULL;
END
$$;

CREATE TRIGGER nodes_membership
  AFTER INSERT OR UPDATE OR DELETE ON repmgr.nodes
  FOR EACH STATEMENT EXECUTE FUNCTION repmgr.nodes_changed();
CREATE TRIGGER nodes_membership_truncate
  AFTER TRUNCATE ON repmgr.nodes
  FOR EACH STATEMENT EXECUTE FUNCTION repmgr.nodes_changed();

-- Nothing here is for PUBLIC: functions are executable by PUBLIC by default, so take that
-- back. A DBA grants what a management or monitoring role needs (see the README).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA repmgr FROM PUBLIC;

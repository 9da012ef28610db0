-- repmgr 0.1.0 to 0.2.0 (ALTER EXTENSION repmgr UPDATE, on the primary once every node runs
-- the 0.2.0 library). Each statement is what a fresh 0.2.0 install creates: the upgrade test
-- compares the two catalogs.

-- The library a server runs, which during a rolling upgrade may differ from the catalog's
-- version (node_check() compares them).
CREATE FUNCTION "library_version"() RETURNS TEXT
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'library_version_wrapper';

-- As for every function of the extension: nothing for PUBLIC.
REVOKE ALL ON FUNCTION "library_version"() FROM PUBLIC;

-- repmgr 0.2.0 to 0.3.0 (ALTER EXTENSION repmgr UPDATE, on the primary once every node runs
-- the 0.3.0 library). Each statement is what a fresh 0.3.0 install creates: the upgrade test
-- compares the two catalogs.

-- promote() takes allow_slot_loss: from PostgreSQL 17 it refuses a standby whose copies of
-- the failover slots are not usable, unless told to. Under a new C symbol: the library still
-- serves promote_wrapper, with two arguments, to catalogs not yet updated.
DROP FUNCTION "promote"(bool, bool);
CREATE  FUNCTION "promote"(
	"force" bool DEFAULT false, /* Option < bool > */
	"allow_data_loss" bool DEFAULT false, /* Option < bool > */
	"allow_slot_loss" bool DEFAULT false /* Option < bool > */
) RETURNS TEXT /* String */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'promote_checking_slots_wrapper';

-- As for every function of the extension: nothing for PUBLIC.
REVOKE ALL ON FUNCTION "promote"(bool, bool, bool) FROM PUBLIC;

-- primary_exited(): the orphaned worker of a primary whose postmaster was killed tells the
-- voters, which then need not wait for its lease to run out.
CREATE  FUNCTION "primary_exited"(
	"node_id" INT, /* i32 */
	"term" bigint, /* i64 */
	"incarnation" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'primary_exited_wrapper';
REVOKE ALL ON FUNCTION "primary_exited"(int, bigint, bigint) FROM PUBLIC;

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

-- request_vote() takes failover_slots, the candidate's usable copies of the failover slots: a
-- voter that may stand itself grants a candidate holding more of them up to its
-- max_lag_on_failover. Under a new C symbol: the library still serves request_vote_wrapper,
-- with nine arguments, to catalogs not yet updated (and candidates retry so when the new
-- form does not exist yet).
DROP FUNCTION "request_vote"(bigint, int, bigint, bool, bigint, bigint, bigint, bigint, bigint);
CREATE  FUNCTION "request_vote"(
	"term" bigint, /* Option < i64 > */
	"candidate" INT, /* Option < i32 > */
	"lsn" bigint, /* Option < i64 > */
	"manual" bool DEFAULT false, /* Option < bool > */
	"fence_us" bigint DEFAULT NULL, /* Option < i64 > */
	"version" bigint DEFAULT 0, /* Option < i64 > */
	"quorum_version" bigint DEFAULT 0, /* Option < i64 > */
	"timeline" bigint DEFAULT 0, /* Option < i64 > */
	"timeline_start" bigint DEFAULT 0, /* Option < i64 > */
	"failover_slots" INT DEFAULT 0 /* Option < i32 > */
) RETURNS TABLE (
	"term" bigint,  /* i64 */
	"granted" bool,  /* bool */
	"reason" TEXT  /* String */
)
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'request_vote_with_slots_wrapper';
REVOKE ALL ON FUNCTION "request_vote"(bigint, int, bigint, bool, bigint, bigint, bigint, bigint, bigint, int) FROM PUBLIC;

//! A small libpq client that never blocks past a deadline.
//!
//! Why libpq (through `pq-sys`) and not the `postgres` crate: this client runs inside
//! PostgreSQL backends and the background worker, where no thread may call into the server and
//! every wait must also watch the process latch so that cancel requests and SIGTERM are served.
//! libpq's asynchronous API (`PQconnectStartParams`/`PQconnectPoll`, `PQsendQueryParams`,
//! `PQconsumeInput`) is plain single-threaded C, exactly what PostgreSQL's own `dblink` and
//! walreceiver use, and it lets the caller own every wait through the [`Waiter`] trait. The
//! `postgres` crate blocks inside a tokio runtime that cannot be interrupted, spawns a thread
//! for host name lookups, and has no query deadline of its own.
//!
//! Every operation takes an absolute deadline. When it passes, the connection is abandoned
//! (a frozen server would never answer a cancel request either) and the caller reconnects.
//! One limit remains: libpq resolves host names with a blocking `getaddrinfo`, so peers should
//! be addressed by IP (`hostaddr=` or a numeric `host=`) where name service may hang.

use std::ffi::{CStr, CString, c_char, c_int};
use std::fmt;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use pq_sys as ffi;

/// What a wait is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

/// The caller asked to stop waiting (shutdown, query cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

/// Waits for socket readiness. Implementations return when the socket may be ready, when the
/// timeout passes (both are `Ok`: the client re-checks), or with `Err(Interrupted)`.
pub trait Waiter {
    fn wait(&mut self, fd: RawFd, interest: Interest, timeout: Duration) -> Result<(), Interrupted>;
}

/// A [`Waiter`] for ordinary programs, built on `poll(2)`.
pub struct PollWaiter;

impl Waiter for PollWaiter {
    fn wait(&mut self, fd: RawFd, interest: Interest, timeout: Duration) -> Result<(), Interrupted> {
        let events = match interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
        };
        let mut pfd = libc::pollfd { fd, events, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as c_int;
        // EINTR and timeouts both return to the caller, which re-checks its deadline.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection string is not valid.
    Conninfo,
    /// The server could not be reached or refused the connection.
    Connect,
    /// The deadline passed; the connection has been abandoned.
    Timeout,
    /// The server reported an error for a statement.
    Query,
    /// The wait was interrupted by the caller.
    Interrupted,
}

/// A failure, with the server's SQLSTATE and fields when it sent them.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub sqlstate: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Error {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), sqlstate: None, detail: None, hint: None }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

fn cstr_lossy(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().trim_end().to_string())
}

fn cstring(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::new(ErrorKind::Conninfo, "connection parameter contains a NUL byte"))
}

/// Checks a connection string with libpq's own parser. The error text never quotes the input.
pub fn check_conninfo(conninfo: &str) -> Result<(), String> {
    let c = CString::new(conninfo).map_err(|_| "it contains a NUL byte".to_string())?;
    let mut err: *mut c_char = ptr::null_mut();
    let opts = unsafe { ffi::PQconninfoParse(c.as_ptr(), &mut err) };
    if opts.is_null() {
        let msg = cstr_lossy(err).unwrap_or_else(|| "out of memory".into());
        unsafe { ffi::PQfreemem(err.cast()) };
        return Err(msg);
    }
    unsafe { ffi::PQconninfoFree(opts) };
    Ok(())
}

/// What a ping found, in the sense of libpq's `PQping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    /// The server accepted a connection.
    Up,
    /// The server answered but refused the connection (starting up, too many clients, bad
    /// credentials): it is alive.
    Rejected(String),
    /// Nothing answered in time, or nothing listens.
    NoResponse(String),
}

/// Checks whether a server answers, by opening and closing a connection.
pub fn ping(
    conninfo: &str,
    defaults: &[(&str, &str)],
    forced: &[(&str, &str)],
    deadline: Instant,
    waiter: &mut dyn Waiter,
) -> Result<Ping, Interrupted> {
    match Conn::connect(conninfo, defaults, forced, deadline, waiter) {
        Ok(_) => Ok(Ping::Up),
        Err(e) if e.kind == ErrorKind::Interrupted => Err(Interrupted),
        // libpq prefixes what the server itself said with its severity.
        Err(e) if e.kind == ErrorKind::Connect && e.message.contains("FATAL:") => Ok(Ping::Rejected(e.message)),
        Err(e) => Ok(Ping::NoResponse(e.message)),
    }
}

/// Result rows in text form.
#[derive(Debug, Default, Clone)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    /// The value at (row, column), if both exist and it is not NULL.
    pub fn get(&self, row: usize, col: usize) -> Option<&str> {
        self.rows.get(row)?.get(col)?.as_deref()
    }
}

/// An open connection. Dropping it closes the socket.
pub struct Conn {
    raw: NonNull<ffi::PGconn>,
    broken: bool,
}

// A PGconn may move between threads as long as one thread uses it at a time.
unsafe impl Send for Conn {}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { None } else { Some(left) }
}

impl Conn {
    /// Connects. `defaults` apply unless the connection string sets them; `forced` always win.
    pub fn connect(
        conninfo: &str,
        defaults: &[(&str, &str)],
        forced: &[(&str, &str)],
        deadline: Instant,
        waiter: &mut dyn Waiter,
    ) -> Result<Conn, Error> {
        let mut keys = Vec::new();
        let mut vals = Vec::new();
        for (k, v) in defaults.iter().chain([("dbname", conninfo)].iter()).chain(forced.iter()) {
            keys.push(cstring(k)?);
            vals.push(cstring(v)?);
        }
        let mut kp: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let mut vp: Vec<*const c_char> = vals.iter().map(|v| v.as_ptr()).collect();
        kp.push(ptr::null());
        vp.push(ptr::null());
        let raw = unsafe { ffi::PQconnectStartParams(kp.as_ptr(), vp.as_ptr(), 1) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::new(ErrorKind::Connect, "out of memory"))?;
        let conn = Conn { raw, broken: false };
        if conn.status_bad() {
            return Err(conn.failure(ErrorKind::Connect));
        }
        let mut state = ffi::PostgresPollingStatusType::PGRES_POLLING_WRITING;
        loop {
            let interest = match state {
                ffi::PostgresPollingStatusType::PGRES_POLLING_OK => break,
                ffi::PostgresPollingStatusType::PGRES_POLLING_FAILED => {
                    return Err(conn.failure(ErrorKind::Connect));
                }
                ffi::PostgresPollingStatusType::PGRES_POLLING_READING => Interest::Read,
                _ => Interest::Write,
            };
            let left = remaining(deadline).ok_or_else(|| Error::new(ErrorKind::Timeout, "timed out while connecting"))?;
            waiter
                .wait(conn.socket(), interest, left)
                .map_err(|_| Error::new(ErrorKind::Interrupted, "interrupted while connecting"))?;
            state = unsafe { ffi::PQconnectPoll(conn.raw.as_ptr()) };
        }
        if unsafe { ffi::PQsetnonblocking(conn.raw.as_ptr(), 1) } != 0 {
            return Err(conn.failure(ErrorKind::Connect));
        }
        Ok(conn)
    }

    fn socket(&self) -> RawFd {
        unsafe { ffi::PQsocket(self.raw.as_ptr()) }
    }

    fn status_bad(&self) -> bool {
        let status = unsafe { ffi::PQstatus(self.raw.as_ptr()) };
        status == ffi::ConnStatusType::CONNECTION_BAD
    }

    fn failure(&self, kind: ErrorKind) -> Error {
        let msg = cstr_lossy(unsafe { ffi::PQerrorMessage(self.raw.as_ptr()) }).unwrap_or_default();
        Error::new(kind, if msg.is_empty() { "connection failed".to_string() } else { msg })
    }

    /// False once the connection has failed or been abandoned after a timeout.
    pub fn is_usable(&self) -> bool {
        !self.broken && !self.status_bad()
    }

    /// The server's version number (e.g. 150004).
    pub fn server_version(&self) -> i32 {
        unsafe { ffi::PQserverVersion(self.raw.as_ptr()) }
    }

    /// Runs one statement with text parameters (`None` is SQL NULL) and returns text rows.
    pub fn query(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        deadline: Instant,
        waiter: &mut dyn Waiter,
    ) -> Result<Rows, Error> {
        if !self.is_usable() {
            return Err(Error::new(ErrorKind::Connect, "the connection is no longer usable"));
        }
        let result = self.query_inner(sql, params, deadline, waiter);
        if let Err(e) = &result
            && e.kind != ErrorKind::Query {
                // Mid-protocol state is unknown: never reuse this connection.
                self.broken = true;
            }
        result
    }

    fn query_inner(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        deadline: Instant,
        waiter: &mut dyn Waiter,
    ) -> Result<Rows, Error> {
        let sql_c = cstring(sql)?;
        let owned: Vec<Option<CString>> = params.iter().map(|p| p.map(cstring).transpose()).collect::<Result<_, _>>()?;
        let ptrs: Vec<*const c_char> = owned.iter().map(|p| p.as_ref().map_or(ptr::null(), |c| c.as_ptr())).collect();
        let conn = self.raw.as_ptr();
        let sent = unsafe {
            ffi::PQsendQueryParams(
                conn,
                sql_c.as_ptr(),
                ptrs.len() as c_int,
                ptr::null(),
                ptrs.as_ptr(),
                ptr::null(),
                ptr::null(),
                0,
            )
        };
        if sent != 1 {
            return Err(self.failure(ErrorKind::Connect));
        }
        let timeout = || Error::new(ErrorKind::Timeout, "timed out waiting for the server to answer");
        let interrupted = || Error::new(ErrorKind::Interrupted, "interrupted while waiting for the server");
        loop {
            match unsafe { ffi::PQflush(conn) } {
                0 => break,
                1 => {
                    let left = remaining(deadline).ok_or_else(timeout)?;
                    waiter.wait(self.socket(), Interest::Write, left).map_err(|_| interrupted())?;
                }
                _ => return Err(self.failure(ErrorKind::Connect)),
            }
        }
        let mut rows = Rows::default();
        let mut error: Option<Error> = None;
        loop {
            if unsafe { ffi::PQconsumeInput(conn) } == 0 {
                return Err(self.failure(ErrorKind::Connect));
            }
            while unsafe { ffi::PQisBusy(conn) } == 0 {
                let res = unsafe { ffi::PQgetResult(conn) };
                if res.is_null() {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                let r = ResultGuard(res);
                match unsafe { ffi::PQresultStatus(res) } {
                    ffi::ExecStatusType::PGRES_TUPLES_OK | ffi::ExecStatusType::PGRES_COMMAND_OK => {
                        rows = r.rows();
                    }
                    _ => {
                        if error.is_none() {
                            error = Some(r.error());
                        }
                    }
                }
            }
            let left = remaining(deadline).ok_or_else(timeout)?;
            waiter.wait(self.socket(), Interest::Read, left).map_err(|_| interrupted())?;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        unsafe { ffi::PQfinish(self.raw.as_ptr()) };
    }
}

struct ResultGuard(*mut ffi::PGresult);

impl ResultGuard {
    fn field(&self, code: u8) -> Option<String> {
        cstr_lossy(unsafe { ffi::PQresultErrorField(self.0, c_int::from(code)) })
    }

    fn error(&self) -> Error {
        let message = self
            .field(ffi::PG_DIAG_MESSAGE_PRIMARY)
            .or_else(|| cstr_lossy(unsafe { ffi::PQresultErrorMessage(self.0) }))
            .unwrap_or_else(|| "unknown server error".into());
        Error {
            kind: ErrorKind::Query,
            message,
            sqlstate: self.field(ffi::PG_DIAG_SQLSTATE),
            detail: self.field(ffi::PG_DIAG_MESSAGE_DETAIL),
            hint: self.field(ffi::PG_DIAG_MESSAGE_HINT),
        }
    }

    fn rows(&self) -> Rows {
        let (n, m) = unsafe { (ffi::PQntuples(self.0), ffi::PQnfields(self.0)) };
        let columns = (0..m).map(|c| cstr_lossy(unsafe { ffi::PQfname(self.0, c) }).unwrap_or_default()).collect();
        let rows = (0..n)
            .map(|r| {
                (0..m)
                    .map(|c| unsafe {
                        if ffi::PQgetisnull(self.0, r, c) == 1 {
                            None
                        } else {
                            let v = ffi::PQgetvalue(self.0, r, c);
                            Some(CStr::from_ptr(v).to_string_lossy().into_owned())
                        }
                    })
                    .collect()
            })
            .collect();
        Rows { columns, rows }
    }
}

impl Drop for ResultGuard {
    fn drop(&mut self) {
        unsafe { ffi::PQclear(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn conninfo_errors_do_not_quote_the_input() {
        assert!(check_conninfo("host=a port=5432").is_ok());
        let e = check_conninfo("host=a password='s3cret").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(check_conninfo("nonsense_key=1").is_err());
    }

    fn connect_port(port: u16, timeout: Duration) -> Error {
        Conn::connect("host=127.0.0.1 dbname=x user=x", &[], &[("port", &port.to_string())], Instant::now() + timeout, &mut PollWaiter)
            .err()
            .expect("no server to complete a handshake")
    }

    /// A listener that accepts TCP and never answers must not hold a connect past its deadline.
    #[test]
    fn silent_server_hits_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let t0 = Instant::now();
        let err = connect_port(l.local_addr().unwrap().port(), Duration::from_millis(300));
        let took = t0.elapsed();
        assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn ping_tells_silence_from_refusal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port().to_string();
        let got = ping("host=127.0.0.1", &[], &[("port", &port)], Instant::now() + Duration::from_millis(200), &mut PollWaiter);
        assert!(matches!(got, Ok(Ping::NoResponse(_))), "{got:?}");
    }

    #[test]
    fn refused_connection_is_a_connect_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = connect_port(port, Duration::from_secs(5));
        assert_eq!(err.kind, ErrorKind::Connect, "{err}");
    }
}

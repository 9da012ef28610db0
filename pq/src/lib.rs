//! A small libpq client that never blocks past a deadline.
//!
//! Why libpq (loaded at run time, see [`ffi`]) and not the `postgres` crate: this client runs inside
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

pub mod ffi;

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
    fn wait(&mut self, fd: RawFd, interest: Interest, timeout: Duration)
    -> Result<(), Interrupted>;
}

/// A [`Waiter`] for ordinary programs, built on `poll(2)`.
pub struct PollWaiter;

impl Waiter for PollWaiter {
    fn wait(
        &mut self,
        fd: RawFd,
        interest: Interest,
        timeout: Duration,
    ) -> Result<(), Interrupted> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as c_int;
        // EINTR and timeouts both return to the caller, which re-checks its deadline.
        poll_for(fd, interest, ms);
        Ok(())
    }
}

/// `poll(2)` on `fd` for `interest`, for at most `ms`: whether it is ready (an error or
/// hang-up counts).
fn poll_for(fd: RawFd, interest: Interest, ms: c_int) -> bool {
    let events = match interest {
        Interest::Read => libc::POLLIN,
        Interest::Write => libc::POLLOUT,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
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
        Error {
            kind,
            message: message.into(),
            sqlstate: None,
            detail: None,
            hint: None,
        }
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
    Some(
        unsafe { CStr::from_ptr(p) }
            .to_string_lossy()
            .trim_end()
            .to_string(),
    )
}

fn cstring(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| {
        Error::new(
            ErrorKind::Conninfo,
            "connection parameter contains a NUL byte",
        )
    })
}

/// Checks a connection string with libpq's own parser. The error text never quotes the input.
pub fn check_conninfo(conninfo: &str) -> Result<(), String> {
    let c = CString::new(conninfo).map_err(|_| "it contains a NUL byte".to_string())?;
    ffi::load()?;
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
        Err(e) if e.kind == ErrorKind::Connect && e.message.contains("FATAL:") => {
            Ok(Ping::Rejected(e.message))
        }
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

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Establishing; the value is what `PQconnectPoll` last asked for.
    Connecting(Interest),
    Idle,
    /// A statement was sent and its results are not all in yet.
    Busy,
    /// Failed or abandoned mid-protocol: never reused.
    Broken,
}

/// What a non-blocking step found.
#[derive(Debug)]
pub enum Step {
    /// Connected, or the last statement's results were already collected: nothing to do.
    Idle,
    /// Wait until the socket is ready for this, then step again.
    Wait(Interest),
    /// The statement finished (an error the server reported is an `Err` here; the connection
    /// stays usable).
    Done(Result<Rows, Error>),
}

/// A connection. Dropping it closes the socket.
///
/// Everything is built on two non-blocking operations, [`Conn::start`] and [`Conn::step`], so
/// a caller can keep a statement in flight while doing other work (the monitoring worker
/// polls the primary that way); [`Conn::connect`] and [`Conn::query`] drive them to the end
/// with a [`Waiter`] and a deadline.
pub struct Conn {
    raw: NonNull<ffi::PGconn>,
    state: State,
    rows: Rows,
    error: Option<Error>,
}

// A PGconn may move between threads as long as one thread uses it at a time.
unsafe impl Send for Conn {}

unsafe extern "C" fn ignore_notice(_arg: *mut std::ffi::c_void, _message: *const c_char) {}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { None } else { Some(left) }
}

impl Conn {
    /// Starts connecting without waiting. `defaults` apply unless the connection string sets
    /// them; `forced` always win. Drive it with [`Conn::step`].
    pub fn start(
        conninfo: &str,
        defaults: &[(&str, &str)],
        forced: &[(&str, &str)],
    ) -> Result<Conn, Error> {
        let mut keys = Vec::new();
        let mut vals = Vec::new();
        for (k, v) in defaults
            .iter()
            .chain([("dbname", conninfo)].iter())
            .chain(forced.iter())
        {
            keys.push(cstring(k)?);
            vals.push(cstring(v)?);
        }
        let mut kp: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let mut vp: Vec<*const c_char> = vals.iter().map(|v| v.as_ptr()).collect();
        kp.push(ptr::null());
        vp.push(ptr::null());
        ffi::load().map_err(|e| Error::new(ErrorKind::Connect, e))?;
        let raw = unsafe { ffi::PQconnectStartParams(kp.as_ptr(), vp.as_ptr(), 1) };
        let raw =
            NonNull::new(raw).ok_or_else(|| Error::new(ErrorKind::Connect, "out of memory"))?;
        // Notices (a NOTICE from the server) would go to this process's stderr, which is the
        // server log inside PostgreSQL: drop them.
        unsafe { ffi::PQsetNoticeProcessor(raw.as_ptr(), Some(ignore_notice), ptr::null_mut()) };
        let conn = Conn {
            raw,
            state: State::Connecting(Interest::Write),
            rows: Rows::default(),
            error: None,
        };
        if conn.status_bad() {
            return Err(conn.failure(ErrorKind::Connect));
        }
        Ok(conn)
    }

    /// Connects, waiting with `waiter` until `deadline`.
    pub fn connect(
        conninfo: &str,
        defaults: &[(&str, &str)],
        forced: &[(&str, &str)],
        deadline: Instant,
        waiter: &mut dyn Waiter,
    ) -> Result<Conn, Error> {
        let mut conn = Conn::start(conninfo, defaults, forced)?;
        loop {
            match conn.step()? {
                Step::Idle => return Ok(conn),
                Step::Wait(interest) => {
                    let left = remaining(deadline).ok_or_else(|| {
                        Error::new(ErrorKind::Timeout, "timed out while connecting")
                    })?;
                    waiter.wait(conn.socket(), interest, left).map_err(|_| {
                        Error::new(ErrorKind::Interrupted, "interrupted while connecting")
                    })?;
                }
                Step::Done(_) => unreachable!("no statement was sent"),
            }
        }
    }

    /// The socket to wait on.
    pub fn socket(&self) -> RawFd {
        unsafe { ffi::PQsocket(self.raw.as_ptr()) }
    }

    fn status_bad(&self) -> bool {
        let status = unsafe { ffi::PQstatus(self.raw.as_ptr()) };
        status == ffi::CONNECTION_BAD
    }

    fn failure(&self, kind: ErrorKind) -> Error {
        let msg = cstr_lossy(unsafe { ffi::PQerrorMessage(self.raw.as_ptr()) }).unwrap_or_default();
        Error::new(
            kind,
            if msg.is_empty() {
                "connection failed".to_string()
            } else {
                msg
            },
        )
    }

    /// Marks the connection unusable and returns `e` (for failures mid-protocol).
    fn broken(&mut self, e: Error) -> Error {
        self.state = State::Broken;
        e
    }

    /// False once the connection has failed or been abandoned after a timeout.
    pub fn is_usable(&self) -> bool {
        self.state != State::Broken && !self.status_bad()
    }

    /// Whether a statement may be sent now.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// Gives up on whatever is in progress (a deadline passed): the connection is not reused.
    pub fn abandon(&mut self) {
        self.state = State::Broken;
    }

    /// The server's version number (e.g. 150004).
    pub fn server_version(&self) -> i32 {
        unsafe { ffi::PQserverVersion(self.raw.as_ptr()) }
    }

    /// Sends one statement with text parameters (`None` is SQL NULL) without waiting for it.
    pub fn send(&mut self, sql: &str, params: &[Option<&str>]) -> Result<(), Error> {
        if self.state != State::Idle || self.status_bad() {
            return Err(Error::new(
                ErrorKind::Connect,
                "the connection is not ready for a statement",
            ));
        }
        let sql_c = cstring(sql)?;
        let owned: Vec<Option<CString>> = params
            .iter()
            .map(|p| p.map(cstring).transpose())
            .collect::<Result<_, _>>()?;
        let ptrs: Vec<*const c_char> = owned
            .iter()
            .map(|p| p.as_ref().map_or(ptr::null(), |c| c.as_ptr()))
            .collect();
        let sent = unsafe {
            ffi::PQsendQueryParams(
                self.raw.as_ptr(),
                sql_c.as_ptr(),
                ptrs.len() as c_int,
                ptr::null(),
                ptrs.as_ptr(),
                ptr::null(),
                ptr::null(),
                0,
            )
        };
        self.sent(sent)
    }

    /// Sends `sql` with the simple query protocol (what a replication connection accepts,
    /// such as `IDENTIFY_SYSTEM`) without waiting for it.
    pub fn send_simple(&mut self, sql: &str) -> Result<(), Error> {
        if self.state != State::Idle || self.status_bad() {
            return Err(Error::new(
                ErrorKind::Connect,
                "the connection is not ready for a statement",
            ));
        }
        let sql_c = cstring(sql)?;
        let sent = unsafe { ffi::PQsendQuery(self.raw.as_ptr(), sql_c.as_ptr()) };
        self.sent(sent)
    }

    /// After a `PQsend…` call: in flight, or broken.
    fn sent(&mut self, result: c_int) -> Result<(), Error> {
        if result != 1 {
            let e = self.failure(ErrorKind::Connect);
            return Err(self.broken(e));
        }
        self.state = State::Busy;
        self.rows = Rows::default();
        self.error = None;
        Ok(())
    }

    /// Makes whatever progress is possible without blocking.
    pub fn step(&mut self) -> Result<Step, Error> {
        let conn = self.raw.as_ptr();
        match self.state {
            State::Broken => Err(Error::new(
                ErrorKind::Connect,
                "the connection is no longer usable",
            )),
            State::Idle => Ok(Step::Idle),
            // libpq may be asked to go on only once the socket is ready for what it last
            // asked: called early, it takes a connection still in progress for made, sends
            // its first packet and, when that cannot go out, waits with no timeout (seen:
            // 3 s on a host that had dropped off the network, with a 400 ms deadline, until
            // the kernel gave up resolving its address).
            State::Connecting(interest) if !poll_for(self.socket(), interest, 0) => {
                Ok(Step::Wait(interest))
            }
            State::Connecting(_) => match unsafe { ffi::PQconnectPoll(conn) } {
                ffi::PGRES_POLLING_OK => {
                    if unsafe { ffi::PQsetnonblocking(conn, 1) } != 0 {
                        let e = self.failure(ErrorKind::Connect);
                        return Err(self.broken(e));
                    }
                    self.state = State::Idle;
                    Ok(Step::Idle)
                }
                ffi::PGRES_POLLING_FAILED => {
                    let e = self.failure(ErrorKind::Connect);
                    Err(self.broken(e))
                }
                ffi::PGRES_POLLING_READING => {
                    self.state = State::Connecting(Interest::Read);
                    Ok(Step::Wait(Interest::Read))
                }
                _ => {
                    self.state = State::Connecting(Interest::Write);
                    Ok(Step::Wait(Interest::Write))
                }
            },
            State::Busy => {
                match unsafe { ffi::PQflush(conn) } {
                    0 => {}
                    1 => return Ok(Step::Wait(Interest::Write)),
                    _ => {
                        let e = self.failure(ErrorKind::Connect);
                        return Err(self.broken(e));
                    }
                }
                if unsafe { ffi::PQconsumeInput(conn) } == 0 {
                    let e = self.failure(ErrorKind::Connect);
                    return Err(self.broken(e));
                }
                while unsafe { ffi::PQisBusy(conn) } == 0 {
                    let res = unsafe { ffi::PQgetResult(conn) };
                    if res.is_null() {
                        self.state = State::Idle;
                        let rows = std::mem::take(&mut self.rows);
                        return Ok(Step::Done(match self.error.take() {
                            Some(e) => Err(e),
                            None => Ok(rows),
                        }));
                    }
                    let r = ResultGuard(res);
                    match unsafe { ffi::PQresultStatus(res) } {
                        ffi::PGRES_TUPLES_OK | ffi::PGRES_COMMAND_OK => self.rows = r.rows(),
                        _ => {
                            self.error.get_or_insert_with(|| r.error());
                        }
                    }
                }
                Ok(Step::Wait(Interest::Read))
            }
        }
    }

    /// Runs one statement and waits for its rows until `deadline`. A deadline that passes
    /// abandons the connection.
    pub fn query(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        deadline: Instant,
        waiter: &mut dyn Waiter,
    ) -> Result<Rows, Error> {
        self.usable()?;
        self.send(sql, params)?;
        self.finish(deadline, waiter)
    }

    /// Like [`Conn::query`], with the simple query protocol and no parameters.
    pub fn query_simple(
        &mut self,
        sql: &str,
        deadline: Instant,
        waiter: &mut dyn Waiter,
    ) -> Result<Rows, Error> {
        self.usable()?;
        self.send_simple(sql)?;
        self.finish(deadline, waiter)
    }

    fn usable(&self) -> Result<(), Error> {
        if self.is_usable() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Connect,
                "the connection is no longer usable",
            ))
        }
    }

    /// Waits for the statement in flight until `deadline`.
    fn finish(&mut self, deadline: Instant, waiter: &mut dyn Waiter) -> Result<Rows, Error> {
        loop {
            match self.step()? {
                Step::Done(result) => return result,
                Step::Idle => return Ok(Rows::default()),
                Step::Wait(interest) => {
                    let Some(left) = remaining(deadline) else {
                        return Err(self.broken(Error::new(
                            ErrorKind::Timeout,
                            "timed out waiting for the server to answer",
                        )));
                    };
                    if waiter.wait(self.socket(), interest, left).is_err() {
                        return Err(self.broken(Error::new(
                            ErrorKind::Interrupted,
                            "interrupted while waiting for the server",
                        )));
                    }
                }
            }
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
        let columns = (0..m)
            .map(|c| cstr_lossy(unsafe { ffi::PQfname(self.0, c) }).unwrap_or_default())
            .collect();
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
        Conn::connect(
            "host=127.0.0.1 dbname=x user=x",
            &[],
            &[("port", &port.to_string())],
            Instant::now() + timeout,
            &mut PollWaiter,
        )
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
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    /// A listener whose queue is full drops new handshakes: the connection stays in progress,
    /// as to a host that dropped off the network. libpq must not be asked to go on before the
    /// socket is ready, or it sends its first packet and waits for it with no timeout.
    #[test]
    fn a_handshake_in_progress_hits_the_deadline() {
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let sa = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
        assert_eq!(unsafe { libc::bind(fd, sa, len) }, 0);
        assert_eq!(unsafe { libc::listen(fd, 0) }, 0);
        assert_eq!(unsafe { libc::getsockname(fd, sa, &mut len) }, 0);
        let port = u16::from_be(addr.sin_port);
        // One handshake fills the queue (never accepted).
        let _queued = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let err = connect_port(port, Duration::from_millis(300));
            let _ = tx.send((err, t0.elapsed()));
        });
        let (err, took) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the connect held past its deadline");
        assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        unsafe { libc::close(fd) };
    }

    #[test]
    fn ping_tells_silence_from_refusal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port().to_string();
        let got = ping(
            "host=127.0.0.1",
            &[],
            &[("port", &port)],
            Instant::now() + Duration::from_millis(200),
            &mut PollWaiter,
        );
        assert!(matches!(got, Ok(Ping::NoResponse(_))), "{got:?}");
    }

    #[test]
    fn refused_connection_is_a_connect_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = connect_port(port, Duration::from_secs(5));
        assert_eq!(err.kind, ErrorKind::Connect, "{err}");
    }
}

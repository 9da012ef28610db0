//! libpq, loaded at run time into a namespace of its own.
//!
//! The extension is loaded by `shared_preload_libraries` with `RTLD_GLOBAL`, so a libpq it
//! linked would come first in the server's symbol lookups: the server's own WAL receiver
//! would then call this host's libpq rather than the one it was built with (PostgreSQL 18's
//! walreceiver handed to Debian 12's libpq 15 fails with `invalid connection option
//! "sslnegotiation"`). Opened with `RTLD_LOCAL | RTLD_DEEPBIND`, the libpq used here is seen
//! by nobody else and resolves its own symbols before any other libpq the process holds.
//! Only calls that every libpq since 10 has are used.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

/// The library opened: the soname of every libpq 10 and later.
pub const LIBPQ: &str = "libpq.so.5";

#[repr(C)]
pub struct PGconn {
    _opaque: [u8; 0],
}

#[repr(C)]
pub struct PGresult {
    _opaque: [u8; 0],
}

#[repr(C)]
pub struct PQconninfoOption {
    _opaque: [u8; 0],
}

pub type NoticeProcessor = Option<unsafe extern "C" fn(*mut c_void, *const c_char)>;

// Values of libpq-fe.h's enums and error fields (stable since libpq 7.4).
pub const CONNECTION_BAD: c_int = 1;
pub const PGRES_POLLING_FAILED: c_int = 0;
pub const PGRES_POLLING_READING: c_int = 1;
pub const PGRES_POLLING_WRITING: c_int = 2;
pub const PGRES_POLLING_OK: c_int = 3;
pub const PGRES_COMMAND_OK: c_int = 1;
pub const PGRES_TUPLES_OK: c_int = 2;
pub const PG_DIAG_SQLSTATE: u8 = b'C';
pub const PG_DIAG_MESSAGE_PRIMARY: u8 = b'M';
pub const PG_DIAG_MESSAGE_DETAIL: u8 = b'D';
pub const PG_DIAG_MESSAGE_HINT: u8 = b'H';

/// Declares the table of libpq functions and a same-named wrapper for each.
macro_rules! libpq {
    ($( fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        #[allow(non_snake_case)]
        struct Lib {
            $( $name: unsafe extern "C" fn($($ty),*) -> $ret, )*
        }

        impl Lib {
            /// # Safety
            /// `handle` is a live handle from `dlopen` of a libpq.
            unsafe fn resolve(handle: *mut c_void) -> Result<Lib, String> {
                Ok(Lib {
                    $( $name: {
                        let name = concat!(stringify!($name), "\0");
                        let p = unsafe { libc::dlsym(handle, name.as_ptr().cast()) };
                        if p.is_null() {
                            return Err(format!(
                                "{LIBPQ} has no function {}: it is older than libpq 10",
                                stringify!($name)
                            ));
                        }
                        // SAFETY: the symbol is libpq's function of this signature
                        // (libpq-fe.h).
                        unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) -> $ret>(p)
                        }
                    }, )*
                })
            }
        }

        $(
            /// libpq's function of the same name.
            ///
            /// # Safety
            /// As libpq documents it; [`load`] succeeded before.
            #[allow(non_snake_case, clippy::too_many_arguments)]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                unsafe { (lib().$name)($($arg),*) }
            }
        )*
    };
}

libpq! {
    fn PQconninfoParse(conninfo: *const c_char, errmsg: *mut *mut c_char) -> *mut PQconninfoOption;
    fn PQconninfoFree(options: *mut PQconninfoOption) -> ();
    fn PQfreemem(ptr: *mut c_void) -> ();
    fn PQconnectStartParams(keywords: *const *const c_char, values: *const *const c_char, expand_dbname: c_int) -> *mut PGconn;
    fn PQconnectPoll(conn: *mut PGconn) -> c_int;
    fn PQsetNoticeProcessor(conn: *mut PGconn, processor: NoticeProcessor, arg: *mut c_void) -> NoticeProcessor;
    fn PQsetnonblocking(conn: *mut PGconn, arg: c_int) -> c_int;
    fn PQsocket(conn: *const PGconn) -> c_int;
    fn PQstatus(conn: *const PGconn) -> c_int;
    fn PQerrorMessage(conn: *const PGconn) -> *mut c_char;
    fn PQserverVersion(conn: *const PGconn) -> c_int;
    fn PQsendQuery(conn: *mut PGconn, query: *const c_char) -> c_int;
    fn PQsendQueryParams(conn: *mut PGconn, command: *const c_char, n_params: c_int, param_types: *const c_uint, param_values: *const *const c_char, param_lengths: *const c_int, param_formats: *const c_int, result_format: c_int) -> c_int;
    fn PQflush(conn: *mut PGconn) -> c_int;
    fn PQconsumeInput(conn: *mut PGconn) -> c_int;
    fn PQisBusy(conn: *mut PGconn) -> c_int;
    fn PQgetResult(conn: *mut PGconn) -> *mut PGresult;
    fn PQfinish(conn: *mut PGconn) -> ();
    fn PQresultStatus(res: *const PGresult) -> c_int;
    fn PQresultErrorField(res: *const PGresult, field: c_int) -> *mut c_char;
    fn PQresultErrorMessage(res: *const PGresult) -> *mut c_char;
    fn PQntuples(res: *const PGresult) -> c_int;
    fn PQnfields(res: *const PGresult) -> c_int;
    fn PQfname(res: *const PGresult, column: c_int) -> *mut c_char;
    fn PQgetisnull(res: *const PGresult, row: c_int, column: c_int) -> c_int;
    fn PQgetvalue(res: *const PGresult, row: c_int, column: c_int) -> *mut c_char;
    fn PQclear(res: *mut PGresult) -> ();
}

static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();

/// Opens libpq once; every later call answers the same. Call it before any other function
/// of this module.
pub fn load() -> Result<(), String> {
    LIB.get_or_init(|| {
        let name = std::ffi::CString::new(LIBPQ).expect("no NUL in the soname");
        // SAFETY: dlopen of a plain C library; its initialisers have no preconditions.
        let handle = unsafe {
            libc::dlopen(
                name.as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_DEEPBIND,
            )
        };
        if handle.is_null() {
            // SAFETY: dlerror returns a NUL-terminated string or NULL.
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() {
                "unknown error".to_string()
            } else {
                unsafe { CStr::from_ptr(why) }
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!(
                "cannot load {LIBPQ} ({why}); install the libpq5 package"
            ));
        }
        // SAFETY: handle is a live handle of libpq.
        unsafe { Lib::resolve(handle) }
    })
    .as_ref()
    .map(|_| ())
    .map_err(Clone::clone)
}

fn lib() -> &'static Lib {
    match LIB.get() {
        Some(Ok(lib)) => lib,
        _ => unreachable!("libpq is used only after ffi::load() succeeded"),
    }
}

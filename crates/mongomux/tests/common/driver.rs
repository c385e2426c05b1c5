//! Official Rust driver clients for the tests, a log of the commands they send, and the error
//! classification the tests assert on (codes, retryable labels, connection failures).

use super::*;

// Driver clients

/// Build a driver client to `addr`. Short server-selection and connect timeouts keep failing
/// tests fast; everything else is the driver's default unless `tweak` changes it.
pub fn client_to(
    addr: SocketAddr,
    credential: Option<Credential>,
    tweak: impl FnOnce(&mut ClientOptions),
) -> Client {
    let mut o = ClientOptions::default();
    o.hosts = vec![ServerAddress::Tcp {
        host: addr.ip().to_string(),
        port: Some(addr.port()),
    }];
    o.credential = credential;
    o.app_name = Some("mongomux-it".into());
    o.server_selection_timeout = Some(Duration::from_secs(10));
    o.connect_timeout = Some(Duration::from_secs(10));
    tweak(&mut o);
    Client::with_options(o).expect("client options")
}

/// Every command event one client produced, in order, with the instant it was observed
/// (a `Started` event is emitted just before the request is written to the socket).
#[derive(Clone, Default)]
pub struct CommandLog(Arc<Mutex<Vec<(Instant, CommandEvent)>>>);

impl CommandLog {
    pub(super) fn push(&self, ev: CommandEvent) {
        self.0.lock().unwrap().push((Instant::now(), ev));
    }

    pub fn events(&self) -> Vec<CommandEvent> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Remove and return everything recorded so far.
    pub fn take(&self) -> Vec<(Instant, CommandEvent)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Replies of successful commands named `name`.
    pub fn replies(&self, name: &str) -> Vec<Document> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                CommandEvent::Succeeded(s) if s.command_name == name => Some(s.reply),
                _ => None,
            })
            .collect()
    }

    /// Commands named `name` as sent.
    pub fn started(&self, name: &str) -> Vec<Document> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                CommandEvent::Started(s) if s.command_name == name => Some(s.command),
                _ => None,
            })
            .collect()
    }

    /// Driver connection ids that commands named `name` were sent on.
    pub fn connection_ids(&self, name: &str) -> Vec<u32> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                CommandEvent::Started(s) if s.command_name == name => Some(s.connection.id),
                _ => None,
            })
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// The server error code carried by a driver error, wherever the driver put it.
pub fn error_code(e: &Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first().map(|w| w.code))
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// Code and message of a server error, for comparing what two servers said.
pub fn error_code_and_message(e: &Error) -> Option<(i32, String)> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some((c.code, c.message.clone())),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some((w.code, w.message.clone())),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first().map(|w| (w.code, w.message.clone()))),
        _ => None,
    }
}

/// Codes the driver retries or treats as "node is recovering / shutting down"
/// (retryable-reads/-writes specs) plus the gateway's own codes in the CLI contract.
pub const RETRYABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// Whether `e` is a failure a driver or application may safely retry: a network error, a cleared
/// pool, a server-selection timeout, a retryable code, or a retryable/transient label.
pub fn is_retryable_failure(e: &Error) -> bool {
    if e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
        || e.contains_label("RetryableError")
    {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        _ => error_code(e).is_some_and(|c| RETRYABLE_CODES.contains(&c)),
    }
}

/// Whether the driver never got a reply from anything listening (network or selection error).
pub fn is_connection_failure(e: &Error) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::ServerSelection { .. }
    )
}

// ---------------------------------------------------------------------------------------------

/// The server code anywhere in the error's source chain (the driver reports a failed login as
/// an `Authentication` error whose source is the server's command error).
pub fn code_in_chain(e: &Error) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // The driver keeps its source as a `Box<Error>`, which is what `source()` hands out.
        let driver_error = err
            .downcast_ref::<Error>()
            .or_else(|| err.downcast_ref::<Box<Error>>().map(|b| b.as_ref()));
        if let Some(code) = driver_error.and_then(error_code) {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

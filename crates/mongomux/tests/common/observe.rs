//! Observing the system from the outside: established sockets to a server (sock_diag, or
//! `/proc/net/tcp{,6}`, through `mongomux_testkit::sockets`), a background sampler of their
//! maximum, and Prometheus text.

use super::*;

use mongomux_testkit::sockets::{self, End, SockDiag};

// Observing from the outside

/// Number of ESTABLISHED TCP sockets whose local end is 127.0.0.1:`port`: the server side of
/// every connection the process listening there has accepted (the client side of each
/// connection has it as its remote end and is not counted). Asks the kernel through sock_diag,
/// which stays cheap with tens of thousands of sockets, or `/proc/net/tcp{,6}` where netlink is
/// unavailable ([`mongomux_testkit::sockets`]).
pub fn established_to_port(port: u16) -> usize {
    sockets::established(End::Local(sockets::loopback(port)))
        .map(|s| s.len())
        .unwrap_or_else(|e| panic!("count sockets to port {port}: {e}"))
}

/// [`established_to_port`], read from /proc/net/tcp and /proc/net/tcp6 (the plain reference:
/// it formats every socket on the machine, so it is slow with many).
pub fn established_to_port_proc(port: u16) -> usize {
    sockets::proc_established(End::Local(sockets::loopback(port)))
        .map(|s| s.len())
        .unwrap_or_else(|e| panic!("read /proc/net/tcp: {e}"))
}

/// Samples the ESTABLISHED sockets with local port `port` on its own thread until stopped, and
/// keeps the maximum. IPv4 only (the servers here listen on 127.0.0.1): see
/// [`SockDiag::only_ipv4_sockets`] for why each sample costs milliseconds, and so why the
/// interval should not be tiny.
pub struct ConnSampler {
    max: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnSampler {
    pub fn start(port: u16, interval: Duration) -> ConnSampler {
        let max = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, st) = (max.clone(), samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let server = End::Local(sockets::loopback(port));
            let mut diag = SockDiag::open().ok().map(SockDiag::only_ipv4_sockets);
            while !st.load(Ordering::Relaxed) {
                let n = match diag.as_mut().map(|d| d.established(server)) {
                    Some(Ok(socks)) => socks.len(),
                    _ => established_to_port_proc(port),
                };
                m.fetch_max(n, Ordering::Relaxed);
                s.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(interval);
            }
        });
        ConnSampler {
            max,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Stop sampling; returns (maximum seen, number of samples).
    pub fn stop(mut self) -> (usize, usize) {
        self.halt();
        (self.max(), self.samples.load(Ordering::Relaxed))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ConnSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Minimal HTTP/1.0 GET on loopback; returns the body of a 200 reply.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.split_whitespace().nth(1).filter(|c| *c == "200")?;
    Some(body.to_string())
}

/// Sum of every sample of `metric` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, metric: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest
            .rsplit_once('}')
            .map(|(_, v)| v)
            .unwrap_or(rest)
            .split_whitespace()
            .next()?;
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------

//! The HTTP endpoints leash serves: Prometheus metrics of the firewall (`leash metrics`) and of
//! the DNS forwarder (`leash dns --metrics`), over `observe::metrics`' exposition.
//!
//! hyper (HTTP/1.1) on a tokio runtime of their own, one task per connection, so that no client
//! holds up another: a client that sends its request one byte at a time only keeps its own
//! connection open, and only until [`HEADER_TIMEOUT`]. The other bounds: the request head
//! ([`MAX_HEADER_BYTES`], [`MAX_HEADERS`]; 431 above), the whole life of a connection
//! ([`CONNECTION_DEADLINE`]: one request, then it is closed), and at most [`MAX_CONNECTIONS`] at
//! once. When they are all taken, a new connection closes the one that has waited longest for its
//! request to arrive (as DNS servers evict idle TCP clients), so that a pile of slow clients
//! cannot keep the next scraper out.
//!
//! A burst of scrapes is served from one snapshot: scrapes take turns, and one that finds a
//! snapshot begun after it arrived answers with that (the kernel is read once, not once per
//! scraper; no scraper gets data older than its request).

use hyper::body::Bytes;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use observe::metrics::{self, Format, Input};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// How long a client may take to send its request head (all of it, however slowly it trickles).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may live in all: its request, the scrape and reading the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Longest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// What the HTTP server answers.
pub trait Exporter: Send + Sync + 'static {
    /// The exposition right now, in `format`; an error becomes a 500 answer. May block (it reads
    /// the kernel): it runs on tokio's blocking threads.
    fn scrape(&self, format: Format) -> Result<String, String>;
}

impl<F: Fn(Format) -> Result<String, String> + Send + Sync + 'static> Exporter for F {
    fn scrape(&self, format: Format) -> Result<String, String> {
        self(format)
    }
}

/// The bounds of one server (the constants above, smaller in tests).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub deadline: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { header_timeout: HEADER_TIMEOUT, deadline: CONNECTION_DEADLINE, max_connections: MAX_CONNECTIONS }
    }
}

/// Serves `exporter`'s exposition on `listener` until the process ends, on a runtime of its own
/// in the calling thread.
pub fn metrics_forever(listener: std::net::TcpListener, exporter: impl Exporter) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio_listener(listener)?;
        serve(listener, Arc::new(exporter), Limits::default(), std::future::pending()).await;
        Ok(())
    })
}

/// Serves the DNS forwarder's counters (`leash dns --metrics ADDR`) on a thread of its own, for
/// the life of the process. Only the forwarder's counters: the table's are `leash metrics`'s.
/// Its own thread and runtime, not the forwarder's: scrapes, however many, never take the thread
/// that answers queries.
pub fn dns_metrics(listener: std::net::TcpListener, handle: dns::Handle) -> std::io::Result<()> {
    eprintln!("leash dns: serving metrics on http://{}/metrics", listener.local_addr()?);
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        let exporter = move |format: Format| -> Result<String, String> {
            let fields = handle.stats().fields();
            Ok(metrics::render(&Input { dns: Some(&fields), ..Input::default() }, format))
        };
        if let Err(e) = metrics_forever(listener, exporter) {
            eprintln!("leash dns: warning: the metrics server stopped: {e}");
        }
    })?;
    Ok(())
}

fn tokio_listener(l: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

/// A connection being served.
#[derive(Debug)]
struct Entry {
    opened: Instant,
    /// Its request head has arrived (it is being answered, not waited for).
    requested: Arc<AtomicBool>,
    abort: Option<AbortHandle>,
}

/// The connections being served, by id.
#[derive(Debug, Default)]
struct Live {
    next: u64,
    conns: HashMap<u64, Entry>,
}

impl Live {
    /// The connection that has waited longest for its request.
    fn longest_waiting(&self) -> Option<u64> {
        self.conns.iter().filter(|(_, e)| !e.requested.load(Ordering::Relaxed)).min_by_key(|(_, e)| e.opened).map(|(id, _)| *id)
    }
}

/// Removes its connection from [`Live`] when the connection's task ends (or is aborted).
struct Leave {
    live: Arc<Mutex<Live>>,
    id: u64,
    gone: Arc<Notify>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).conns.remove(&self.id);
        self.gone.notify_one();
    }
}

/// Serves `GET /metrics` (and `HEAD`) on `listener` until `shutdown` completes: `/` answers with a
/// pointer to `/metrics`, other paths 404, other methods 405. Runs on the caller's runtime.
pub async fn serve(
    listener: tokio::net::TcpListener,
    exporter: Arc<dyn Exporter>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let live = Arc::new(Mutex::new(Live::default()));
    let gone = Arc::new(Notify::new());
    let scraper = Arc::new(Scraper { exporter, last: tokio::sync::Mutex::new([None, None]) });
    tokio::pin!(shutdown);
    loop {
        // Room for one more: below the limit, or a connection still waiting for its request that
        // the next one may replace. Else wait for one to end (they all do, by the deadline).
        loop {
            let room = {
                let l = live.lock().unwrap_or_else(|e| e.into_inner());
                l.conns.len() < limits.max_connections || l.longest_waiting().is_some()
            };
            if room {
                break;
            }
            tokio::select! {
                _ = gone.notified() => {}
                _ = &mut shutdown => return,
            }
        }
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // Out of descriptors and the like: wait and go on rather than end the server.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let requested = Arc::new(AtomicBool::new(false));
        let id = {
            let mut l = live.lock().unwrap_or_else(|e| e.into_inner());
            if l.conns.len() >= limits.max_connections
                && let Some(old) = l.longest_waiting()
                && let Some(Entry { abort: Some(a), .. }) = l.conns.remove(&old)
            {
                a.abort();
            }
            let id = l.next;
            l.next += 1;
            l.conns.insert(id, Entry { opened: Instant::now(), requested: requested.clone(), abort: None });
            id
        };
        let leave = Leave { live: live.clone(), id, gone: gone.clone() };
        let task = tokio::spawn(connection(stream, scraper.clone(), requested, limits, leave));
        if let Some(e) = live.lock().unwrap_or_else(|e| e.into_inner()).conns.get_mut(&id) {
            e.abort = Some(task.abort_handle());
        }
    }
}

/// One connection: one request, answered, then closed; all of it within the deadline.
async fn connection(
    stream: tokio::net::TcpStream,
    scraper: Arc<Scraper>,
    requested: Arc<AtomicBool>,
    limits: Limits,
    _leave: Leave,
) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        requested.store(true, Ordering::Relaxed);
        let scraper = scraper.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(&req, &scraper).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .max_headers(MAX_HEADERS)
        .keep_alive(false)
        // `Content-Type`, as the hand-written server wrote it (header names are case-blind, but
        // scripts grep for them).
        .title_case_headers(true)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    // A client that misbehaves only loses its own answer.
    let _ = tokio::time::timeout(limits.deadline, conn).await;
}

type Body = http_body_util::Full<Bytes>;

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn answer(req: &Request<hyper::body::Incoming>, scraper: &Scraper) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = Format::from_accept(accept);
            match scraper.scrape(format, Instant::now()).await {
                Ok(body) => {
                    let mut r = Response::new(Body::new(body));
                    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
                    r
                }
                Err(e) => {
                    let mut r = Response::new(Body::new(Bytes::from(format!("{e}\n"))));
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                    r
                }
            }
        }
        "/" => plain(StatusCode::OK, "leash metrics: scrape /metrics\n"),
        _ => plain(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    }
}

/// A snapshot of the exposition: when it was begun and what it gave.
type Snapshot = (Instant, Result<Bytes, String>);

/// The exporter, with the last snapshot per format.
struct Scraper {
    exporter: Arc<dyn Exporter>,
    /// Prometheus, OpenMetrics. The lock is also the turn: one snapshot is made at a time.
    last: tokio::sync::Mutex<[Option<Snapshot>; 2]>,
}

impl Scraper {
    /// The exposition in `format` as of a moment after `asked`.
    async fn scrape(&self, format: Format, asked: Instant) -> Result<Bytes, String> {
        let slot = match format {
            Format::Prometheus => 0,
            Format::OpenMetrics => 1,
        };
        let mut last = self.last.lock().await;
        if let Some((begun, body)) = &last[slot]
            && *begun >= asked
        {
            return body.clone();
        }
        let begun = Instant::now();
        let exporter = self.exporter.clone();
        let body = tokio::task::spawn_blocking(move || exporter.scrape(format).map(Bytes::from))
            .await
            .unwrap_or_else(|e| Err(format!("the scrape failed: {e}")));
        last[slot] = Some((begun, body.clone()));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::AtomicUsize;

    /// A server on a thread of its own (its own runtime), stopped when dropped.
    struct Server {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        fn start(exporter: impl Exporter, limits: Limits) -> Server {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let exporter: Arc<dyn Exporter> = Arc::new(exporter);
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let stop = async {
                        let _ = rx.await;
                    };
                    serve(tokio_listener(l).unwrap(), exporter, limits, stop).await
                });
            });
            Server { addr, stop: Some(tx), thread: Some(thread) }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.stop.take().unwrap().send(());
            let _ = self.thread.take().unwrap().join();
        }
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    /// Whether the server closed `c` (an end of file or a reset within 100 ms).
    fn is_closed(c: &mut TcpStream) -> bool {
        c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        match c.read(&mut [0u8; 64]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }

    fn formats(f: Format) -> Result<String, String> {
        Ok(format!("# format {f:?}\n"))
    }

    #[test]
    fn server_answers_scrapes_and_refuses_the_rest() {
        let s = Server::start(formats, Limits::default());
        let r = get(s.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n# format Prometheus\n"), "{r}");
        let r = get(s.addr, "GET /metrics?x=1 HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n");
        assert!(r.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"), "{r}");
        assert!(r.ends_with("# format OpenMetrics\n"), "{r}");
        let r = get(s.addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"), "{r}");
        assert!(r.contains("Content-Length: 20\r\n"), "{r}");
        assert!(get(s.addr, "GET / HTTP/1.1\r\n\r\n").ends_with("scrape /metrics\n"));
        assert!(get(s.addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let r = get(s.addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"), "{r}");
        let fail = Server::start(|_| -> Result<String, String> { Err("no table".into()) }, Limits::default());
        let r = get(fail.addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 500 ") && r.ends_with("no table\n"), "{r}");
    }

    #[test]
    fn a_request_head_too_large_is_refused() {
        let s = Server::start(formats, Limits::default());
        let big = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(MAX_HEADER_BYTES));
        let r = get(s.addr, &big);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: 1\r\n")).collect();
        let r = get(s.addr, &format!("GET /metrics HTTP/1.1\r\n{many}\r\n"));
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    }

    /// A client that sends its request a byte at a time keeps its own connection, and only until
    /// the header timeout; scrapes meanwhile are answered at once.
    #[test]
    fn a_slow_client_holds_up_no_one() {
        let limits = Limits { header_timeout: Duration::from_millis(800), ..Limits::default() };
        let s = Server::start(formats, limits);
        let mut slow = TcpStream::connect(s.addr).unwrap();
        slow.write_all(b"GET /met").unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(get(s.addr, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
        }
        assert!(t0.elapsed() < Duration::from_millis(700), "scrapes waited {:?}", t0.elapsed());
        // Still trickling: cut at the header timeout all the same.
        let mut closed = None;
        for _ in 0..40 {
            if slow.write_all(b"r").is_err() || is_closed(&mut slow) {
                closed = Some(t0.elapsed());
                break;
            }
        }
        let closed = closed.expect("the slow client was never cut");
        assert!(closed >= Duration::from_millis(600) && closed < Duration::from_secs(3), "cut after {closed:?}");
    }

    /// All connections taken by clients that send nothing: the next one replaces the one that
    /// has waited longest, and is answered.
    #[test]
    fn a_full_server_makes_room_for_a_scraper() {
        let limits = Limits { max_connections: 8, header_timeout: Duration::from_secs(30), ..Limits::default() };
        let s = Server::start(formats, limits);
        let idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(get(s.addr, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // The first scrape replaced the one that had waited longest; the next ones found the
        // room it left when it ended.
        let closed: Vec<bool> = idle.into_iter().map(|mut c| is_closed(&mut c)).collect();
        assert_eq!(closed, [true, false, false, false, false, false, false, false]);
    }

    /// Scrapes in a burst share snapshots, each begun after the request arrived.
    #[test]
    fn concurrent_scrapes_share_fresh_snapshots() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let s = Server::start(
            move |_| -> Result<String, String> {
                let n = c.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                Ok(format!("# snapshot {n}\n"))
            },
            Limits::default(),
        );
        let addr = s.addr;
        let scrapers: Vec<_> =
            (0..20).map(|_| std::thread::spawn(move || get(addr, "GET /metrics HTTP/1.1\r\n\r\n"))).collect();
        for t in scrapers {
            assert!(t.join().unwrap().starts_with("HTTP/1.1 200 "));
        }
        let n = calls.load(Ordering::SeqCst);
        assert!((1..20).contains(&n), "{n} snapshots for 20 scrapes");
        // A scrape after those gets a snapshot of its own.
        let r = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.ends_with(&format!("# snapshot {n}\n")), "{r}");
    }
}

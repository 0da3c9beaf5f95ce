//! The listening socket, the accept loop and each connection (TLS, then HTTP/1.1 with
//! keep-alive), and the faults that act on connections: outages that reset every connection,
//! random resets and 503s from a seeded generator, and the cut of all connections on stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::server::{Shared, handle};

/// Connections the listener may queue: helm opens many at once, and a short queue makes the
/// kernel reset some of them, which looks like a flaky API server.
const BACKLOG: i32 = 1024;

/// Binds `addr` (port 0 for a free one) with a large backlog; `SO_REUSEADDR` lets a restarted
/// cluster take its port again while old connections linger in TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A signal to every open connection: close it (stop) or reset it (outage), except the one
/// that triggered it, which still gets its answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cut {
    epoch: u64,
    reset: bool,
    exempt: Option<u64>,
}

impl Cut {
    /// The next signal: reset or close every connection but `exempt`.
    pub fn next(&mut self, reset: bool, exempt: Option<u64>) {
        self.epoch += 1;
        self.reset = reset;
        self.exempt = exempt;
    }
}

/// The connection a request came on, so that a fault can reset it.
#[derive(Clone)]
pub struct Conn {
    pub id: u64,
    kill: Arc<Notify>,
}

impl Conn {
    /// Resets the connection (RST, seen by the client as `connection reset by peer`); the
    /// request's future is dropped with it.
    pub async fn reset(&self) -> ! {
        self.kill.notify_one();
        std::future::pending().await
    }
}

/// An outage due after a number of writes.
#[derive(Debug, Clone, Copy)]
struct Pending {
    after_writes: u64,
    length: Duration,
}

/// Fault state of one cluster.
#[derive(Debug, Default)]
pub struct Faults {
    writes: u64,
    pending: Vec<Pending>,
    until: Option<Instant>,
    rng: u64,
    unavailable: f64,
    throttled: f64,
    reset: f64,
}

/// What to do with a request before it is handled.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Serve,
    Unavailable,
    Throttled,
    Reset,
}

impl Faults {
    /// Whether an outage is going on now.
    pub fn in_outage(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }

    /// Queues an outage of `length` that starts once `k` more write requests were served.
    pub fn outage_after_writes(&mut self, k: u64, length: Duration) {
        self.pending.push(Pending {
            after_writes: self.writes + k.max(1),
            length,
        });
    }

    /// Random faults from now on, drawn from a generator seeded with `f.seed`.
    pub fn set_random(&mut self, f: crate::RandomFaults) {
        self.rng = f.seed;
        self.unavailable = f.unavailable.clamp(0.0, 1.0);
        self.throttled = f.throttled.clamp(0.0, 1.0);
        self.reset = f.reset.clamp(0.0, 1.0);
    }

    /// splitmix64: small, seedable, good enough to spread faults.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The fate of a request arriving now.
    pub fn verdict(&mut self) -> Verdict {
        if self.in_outage() {
            return Verdict::Reset;
        }
        if self.unavailable == 0.0 && self.throttled == 0.0 && self.reset == 0.0 {
            return Verdict::Serve;
        }
        let x = self.next_unit();
        if x < self.unavailable {
            Verdict::Unavailable
        } else if x < self.unavailable + self.throttled {
            Verdict::Throttled
        } else if x < self.unavailable + self.throttled + self.reset {
            Verdict::Reset
        } else {
            Verdict::Serve
        }
    }

    /// Counts a served write; true when that starts an outage.
    pub fn count_write(&mut self) -> bool {
        self.writes += 1;
        let now = Instant::now();
        let mut started = false;
        let writes = self.writes;
        self.pending.retain(|p| {
            if p.after_writes != writes {
                return true;
            }
            let from = self.until.filter(|u| *u > now).unwrap_or(now);
            self.until = Some(from + p.length);
            started = true;
            false
        });
        started
    }
}

/// Ends when `cut` says this connection must go; true for a reset, false for a close.
async fn wait_cut(cut: &mut watch::Receiver<Cut>, id: u64) -> bool {
    loop {
        if cut.changed().await.is_err() {
            return std::future::pending().await;
        }
        let c = *cut.borrow();
        if c.exempt != Some(id) {
            return c.reset;
        }
    }
}

/// Closes a socket with SO_LINGER 0, which sends RST instead of FIN.
fn reset_socket(s: &std::net::TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accepts connections until `stop` changes.
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                if shared.faults.lock().unwrap().in_outage() {
                    if let Ok(s) = tcp.into_std() {
                        reset_socket(&s);
                    }
                    continue;
                }
                tokio::spawn(connection(shared.clone(), tcp));
            }
            _ = stop.changed() => return,
        }
    }
}

async fn connection(shared: Arc<Shared>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    // A second handle on the socket, to set SO_LINGER after the connection's future (which
    // owns the stream) is dropped mid-request.
    let Ok(std_tcp) = tcp.into_std() else { return };
    let Ok(dup) = std_tcp.try_clone() else { return };
    let Ok(tcp) = TcpStream::from_std(std_tcp) else {
        return;
    };
    let conn = Conn {
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        kill: Arc::new(Notify::new()),
    };
    let mut cut = shared.cut.subscribe();
    let kill = conn.kill.clone();
    let id = conn.id;
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.pki.server.clone());
    let serve = async move {
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(handle(shared, conn, req.map(Body::new)).await) }
        });
        let _ = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(tls), svc)
            .with_upgrades()
            .await;
    };
    let reset = tokio::select! {
        _ = serve => false,
        _ = kill.notified() => true,
        r = wait_cut(&mut cut, id) => r,
    };
    if reset {
        reset_socket(&dup);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_starts_after_the_kth_write_and_ends_after_its_length() {
        let mut f = Faults::default();
        f.outage_after_writes(2, Duration::from_millis(50));
        assert!(!f.count_write());
        assert_eq!(f.verdict(), Verdict::Serve);
        assert!(f.count_write());
        assert_eq!(f.verdict(), Verdict::Reset);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(f.verdict(), Verdict::Serve);
    }

    #[test]
    fn random_faults_repeat_for_the_same_seed() {
        let draw = |seed| {
            let mut f = Faults::default();
            f.set_random(crate::RandomFaults {
                seed,
                unavailable: 0.2,
                throttled: 0.0,
                reset: 0.1,
            });
            (0..200).map(|_| f.verdict()).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let unavailable = a.iter().filter(|v| **v == Verdict::Unavailable).count();
        let reset = a.iter().filter(|v| **v == Verdict::Reset).count();
        assert!((20..=60).contains(&unavailable), "{unavailable}");
        assert!((5..=40).contains(&reset), "{reset}");
    }
}

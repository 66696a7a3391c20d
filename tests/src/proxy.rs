//! A TCP proxy the tests control: it forwards loopback connections to a
//! target that can change (a restarted master), and can cut every link once a
//! chosen number of bytes has passed in either direction, mid-message.
//!
//! With a [`Throttle`] it is a slow, flaky link: each direction moves at
//! most `bytes_per_second` (what a modem sends, one chunk after another),
//! every chunk arrives `latency` after it was sent, and, when asked, every
//! link is cut at random moments (seeded, so a run can be repeated) about
//! every `cut_every`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A slow and flaky link (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throttle {
    /// Bytes per second, each direction (0: unlimited).
    pub bytes_per_second: u64,
    /// One-way delay of every byte.
    pub latency: Duration,
    /// Cut every link at random moments, on average this often (None: never).
    pub cut_every: Option<Duration>,
    /// Seed of the cut schedule.
    pub seed: u64,
}

impl Throttle {
    /// `kbit_per_second` each way with `latency`, no cuts.
    pub fn link(kbit_per_second: u64, latency: Duration) -> Self {
        Self {
            bytes_per_second: kbit_per_second * 1000 / 8,
            latency,
            cut_every: None,
            seed: 1,
        }
    }

    /// The same link, cut at random moments about every `every` (seeded).
    pub fn cut_every(self, every: Duration, seed: u64) -> Self {
        Self {
            cut_every: Some(every),
            seed,
            ..self
        }
    }
}

/// A running proxy. Dropping it stops accepting and cuts every link.
pub struct Proxy {
    /// Where satellites connect.
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    /// Bytes left before every link is cut (u64::MAX: never).
    cut_after: Arc<AtomicU64>,
    /// Cuts counted so far.
    cuts: Arc<AtomicU64>,
    refusing: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    /// Bumped to drop every open link at once.
    drop_links: watch::Sender<u64>,
    /// Bytes forwarded towards the target (satellite to master) and back.
    bytes_up: Arc<AtomicU64>,
    bytes_down: Arc<AtomicU64>,
    throttle: Arc<Mutex<Option<Throttle>>>,
    /// Links cut by the throttle's schedule.
    scheduled_cuts: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 to `target` that behaves as `throttle`.
    pub async fn start_throttled(target: SocketAddr, throttle: Throttle) -> Self {
        let proxy = Self::start(target).await;
        proxy.set_throttle(Some(throttle));
        proxy
    }

    /// Links opened from now on behave as `throttle` (None: full speed); its
    /// cut schedule, if any, starts now and applies to every link.
    pub fn set_throttle(&self, throttle: Option<Throttle>) {
        *self.throttle.lock().expect("throttle lock") = throttle;
        let Some(Throttle {
            cut_every: Some(every),
            seed,
            ..
        }) = throttle
        else {
            return;
        };
        let (drop_links, scheduled, current) = (
            self.drop_links.clone(),
            self.scheduled_cuts.clone(),
            self.throttle.clone(),
        );
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut state = seed | 1;
            loop {
                // xorshift64: a repeatable schedule, from half to one and a
                // half times `every`.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let fraction = (state % 1000) as f64 / 1000.0;
                let wait = every.mul_f64(0.5 + fraction);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
                if *current.lock().expect("throttle lock") != throttle {
                    return;
                }
                scheduled.fetch_add(1, Ordering::SeqCst);
                drop_links.send_modify(|generation| *generation += 1);
            }
        });
    }

    /// Links cut by the throttle's schedule so far.
    pub fn scheduled_cuts(&self) -> u64 {
        self.scheduled_cuts.load(Ordering::SeqCst)
    }

    /// Starts a proxy on 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let target = Arc::new(Mutex::new(target));
        let cut_after = Arc::new(AtomicU64::new(u64::MAX));
        let cuts = Arc::new(AtomicU64::new(0));
        let refusing = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = watch::channel(false);
        let (drop_links, drop_rx) = watch::channel(0u64);
        let bytes_up = Arc::new(AtomicU64::new(0));
        let bytes_down = Arc::new(AtomicU64::new(0));
        let throttle: Arc<Mutex<Option<Throttle>>> = Arc::new(Mutex::new(None));
        let slow = throttle.clone();
        let (t, c, n, r) = (
            target.clone(),
            cut_after.clone(),
            cuts.clone(),
            refusing.clone(),
        );
        let (up, down) = (bytes_up.clone(), bytes_down.clone());
        tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop_rx.changed() => return,
                };
                let Ok((inbound, _)) = accepted else { continue };
                if r.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let to = *t.lock().expect("target lock");
                let link_throttle = *slow.lock().expect("throttle lock");
                let (c, n, stop_rx) = (c.clone(), n.clone(), stop_rx.clone());
                let counters = (up.clone(), down.clone());
                let mut drop_rx = drop_rx.clone();
                drop_rx.mark_unchanged();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(to).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            () = link(inbound, outbound, c, n, counters, stop_rx, link_throttle) => {}
                            _ = drop_rx.changed() => {}
                        }
                    }
                });
            }
        });
        Self {
            addr,
            target,
            cut_after,
            cuts,
            refusing,
            stop,
            drop_links,
            bytes_up,
            bytes_down,
            throttle,
            scheduled_cuts: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes forwarded so far towards the target and back from it.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_up.load(Ordering::SeqCst),
            self.bytes_down.load(Ordering::SeqCst),
        )
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends new connections to `target` from now on.
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().expect("target lock") = target;
    }

    /// Cuts the links once `bytes` more bytes have passed (both directions together).
    pub fn cut_after(&self, bytes: u64) {
        self.cut_after.store(bytes, Ordering::SeqCst);
    }

    /// Drops every open link now (new ones are still accepted unless refused).
    pub fn cut_all(&self) {
        self.drop_links.send_modify(|generation| *generation += 1);
    }

    /// How many links have been cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }

    /// While true, new connections are closed at once (a link that is down).
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn link(
    inbound: TcpStream,
    outbound: TcpStream,
    cut_after: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    (bytes_up, bytes_down): (Arc<AtomicU64>, Arc<AtomicU64>),
    mut stop: watch::Receiver<bool>,
    throttle: Option<Throttle>,
) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    if let Some(throttle) = throttle {
        let up = slow_pump(&mut in_read, &mut out_write, throttle, &bytes_up);
        let down = slow_pump(&mut out_read, &mut in_write, throttle, &bytes_down);
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = stop.changed() => {}
        }
        return;
    }
    let up = pump(&mut in_read, &mut out_write, &cut_after, &cuts, &bytes_up);
    let down = pump(&mut out_read, &mut in_write, &cut_after, &cuts, &bytes_down);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = stop.changed() => {}
    }
}

/// Copies one direction of a throttled link: chunks leave the sender one
/// after another at the link's rate, each is delivered `latency` after it
/// left, and only a few seconds of data wait inside the link (the sender
/// then waits, as on a modem with a small buffer).
async fn slow_pump<R, W>(from: &mut R, to: &mut W, throttle: Throttle, forwarded: &AtomicU64)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let chunk = if throttle.bytes_per_second == 0 {
        16 * 1024
    } else {
        usize::try_from(throttle.bytes_per_second / 10)
            .unwrap_or(1024)
            .clamp(256, 16 * 1024)
    };
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let reader = async move {
        let mut buffer = vec![0u8; chunk];
        let mut link_free = Instant::now();
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = Instant::now();
            let on_wire = if throttle.bytes_per_second == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(n as f64 / throttle.bytes_per_second as f64)
            };
            link_free = link_free.max(now) + on_wire;
            // The sender may not run ahead of the wire.
            tokio::time::sleep_until(link_free).await;
            if tx
                .send((link_free + throttle.latency, buffer[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            forwarded.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    };
    tokio::select! {
        _ = reader => {
            // Deliver what is still on the wire, then end.
        }
        _ = writer => return,
    }
    while let Some((at, bytes)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        if to.write_all(&bytes).await.is_err() {
            return;
        }
        forwarded.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
}

/// Copies until EOF, an error, or the cut budget runs out (then cuts mid-buffer).
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    cut_after: &AtomicU64,
    cuts: &AtomicU64,
    forwarded: &AtomicU64,
) where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let budget = cut_after.load(Ordering::SeqCst);
        if budget != u64::MAX {
            if (n as u64) >= budget {
                // Forward only part of this read, then drop the link.
                let part = usize::try_from(budget).unwrap_or(0);
                let _ = to.write_all(&buffer[..part]).await;
                cut_after.store(u64::MAX, Ordering::SeqCst);
                cuts.fetch_add(1, Ordering::SeqCst);
                return;
            }
            cut_after.fetch_sub(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
        forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
}

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
    /// What the bytes towards the satellites were.
    down_tally: Arc<Mutex<DownTally>>,
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
        let down_tally = Arc::new(Mutex::new(DownTally::default()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tally = down_tally.clone();
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
                let reader = DownReader::new(tally.clone(), seen.clone());
                let mut drop_rx = drop_rx.clone();
                drop_rx.mark_unchanged();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(to).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            () = link(inbound, outbound, c, n, counters, stop_rx, link_throttle, reader) => {}
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
            down_tally,
        }
    }

    /// What the bytes delivered towards the satellites so far were (see
    /// [`DownTally`]); a link still open counts its message in progress as
    /// not yet delivered.
    pub fn down_tally(&self) -> DownTally {
        *self.down_tally.lock().expect("tally lock")
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

#[allow(clippy::too_many_arguments)]
async fn link(
    inbound: TcpStream,
    outbound: TcpStream,
    cut_after: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    (bytes_up, bytes_down): (Arc<AtomicU64>, Arc<AtomicU64>),
    mut stop: watch::Receiver<bool>,
    throttle: Option<Throttle>,
    mut reader: DownReader,
) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    if let Some(throttle) = throttle {
        let up = slow_pump(&mut in_read, &mut out_write, throttle, &bytes_up, None);
        let down = slow_pump(
            &mut out_read,
            &mut in_write,
            throttle,
            &bytes_down,
            Some(&mut reader),
        );
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = stop.changed() => {}
        }
        return;
    }
    let up = pump(
        &mut in_read,
        &mut out_write,
        &cut_after,
        &cuts,
        &bytes_up,
        None,
    );
    let down = pump(
        &mut out_read,
        &mut in_write,
        &cut_after,
        &cuts,
        &bytes_down,
        Some(&mut reader),
    );
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
async fn slow_pump<R, W>(
    from: &mut R,
    to: &mut W,
    throttle: Throttle,
    forwarded: &AtomicU64,
    mut tally: Option<&mut DownReader>,
) where
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
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            forwarded.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if let Some(tally) = tally.as_deref_mut() {
                tally.feed(&bytes);
            }
        }
    };
    // Both run to their end: when the sender's side closes, what is still on
    // the wire is delivered in order (the reader drops its end of the queue,
    // which ends the writer once it is empty). Never drop the writer while the
    // reader ends: a chunk it holds would be lost while later ones arrive, a
    // hole in the middle of a TCP stream that no real link makes.
    tokio::join!(reader, writer);
}

/// Copies until EOF, an error, or the cut budget runs out (then cuts mid-buffer).
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    cut_after: &AtomicU64,
    cuts: &AtomicU64,
    forwarded: &AtomicU64,
    mut reader: Option<&mut DownReader>,
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
        if let Some(reader) = reader.as_deref_mut() {
            reader.feed(&buffer[..n]);
        }
    }
}

/// What the bytes a proxy delivered towards the satellites were, summed over
/// its links (see [`Proxy::down_tally`]): the downstream is read as HTTP/2
/// frames carrying gRPC messages, whose kind is read from each message
/// (inflating gzip messages and the session's deflate chunks), so that a
/// slow link's cost of cuts can be split into what it is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownTally {
    /// Links opened.
    pub links: u64,
    /// Snapshot and change batches delivered whole: their bytes (gRPC
    /// prefix and message) and records.
    pub batch_bytes: u64,
    pub batch_records: u64,
    /// Records of whole batches that an earlier whole batch had delivered
    /// already (initialisation progress ranges seen twice).
    pub records_twice: u64,
    /// Every other whole message: Welcome, heartbeats, acks, CaughtUp, …
    pub other_message_bytes: u64,
    /// HTTP/2 itself: frame headers and every frame that is not DATA
    /// (settings, headers, window updates, pings, trailers).
    pub http2_bytes: u64,
    /// Bytes of a message (or frame) a link's end cut short: sent, never
    /// usable.
    pub cut_short_bytes: u64,
}

impl DownTally {
    /// Every byte counted.
    pub fn total(&self) -> u64 {
        self.batch_bytes + self.other_message_bytes + self.http2_bytes + self.cut_short_bytes
    }
}

/// One gRPC stream's messages being put together from DATA frames.
struct GrpcStream {
    buffer: Vec<u8>,
    inflater: storesync_shared::kit::stream_compression::Inflater,
}

/// Reads one link's downstream bytes as they are delivered.
struct DownReader {
    totals: Arc<Mutex<DownTally>>,
    /// Initialisation progress ranges (records_done before, after) delivered.
    seen: Arc<Mutex<Vec<(u64, u64)>>>,
    /// The frame being read: header bytes so far, then its payload.
    header: Vec<u8>,
    payload: Vec<u8>,
    streams: std::collections::HashMap<u32, GrpcStream>,
}

impl DownReader {
    fn new(totals: Arc<Mutex<DownTally>>, seen: Arc<Mutex<Vec<(u64, u64)>>>) -> Self {
        totals.lock().expect("tally lock").links += 1;
        Self {
            totals,
            seen,
            header: Vec::with_capacity(9),
            payload: Vec::new(),
            streams: std::collections::HashMap::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.header.len() < 9 {
                let take = (9 - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                continue;
            }
            let length = (usize::from(self.header[0]) << 16)
                | (usize::from(self.header[1]) << 8)
                | usize::from(self.header[2]);
            let take = (length - self.payload.len()).min(bytes.len());
            self.payload.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.payload.len() == length {
                self.frame();
            }
        }
    }

    /// A whole frame has arrived.
    fn frame(&mut self) {
        let header = std::mem::take(&mut self.header);
        let payload = std::mem::take(&mut self.payload);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5] & 0x7f, header[6], header[7], header[8]]);
        let mut tally = self.totals.lock().expect("tally lock");
        tally.http2_bytes += 9;
        if kind != 0 {
            tally.http2_bytes += payload.len() as u64;
            return;
        }
        // DATA: strip padding, then put the stream's messages together.
        let data = if flags & 0x8 != 0 && !payload.is_empty() {
            let pad = usize::from(payload[0]);
            tally.http2_bytes += 1 + pad as u64;
            payload[1..payload.len().saturating_sub(pad)].to_vec()
        } else {
            payload
        };
        drop(tally);
        let grpc = self.streams.entry(stream).or_insert_with(|| GrpcStream {
            buffer: Vec::new(),
            inflater: storesync_shared::kit::stream_compression::Inflater::new(
                storesync_shared::kit::server::MAX_MESSAGE_BYTES,
            ),
        });
        grpc.buffer.extend_from_slice(&data);
        loop {
            if grpc.buffer.len() < 5 {
                break;
            }
            let length = u32::from_be_bytes([
                grpc.buffer[1],
                grpc.buffer[2],
                grpc.buffer[3],
                grpc.buffer[4],
            ]) as usize;
            if grpc.buffer.len() < 5 + length {
                break;
            }
            let message: Vec<u8> = grpc.buffer.drain(..5 + length).collect();
            let body = if message[0] == 1 {
                let mut plain = Vec::new();
                let mut gunzip = flate2::read::GzDecoder::new(&message[5..]);
                match std::io::Read::read_to_end(&mut gunzip, &mut plain) {
                    Ok(_) => plain,
                    Err(_) => Vec::new(),
                }
            } else {
                message[5..].to_vec()
            };
            let (records, progress) = classify(&body, &mut grpc.inflater);
            let mut tally = self.totals.lock().expect("tally lock");
            match records {
                Some(records) => {
                    tally.batch_bytes += message.len() as u64;
                    tally.batch_records += records;
                    if let Some((from, to)) = progress {
                        let mut seen = self.seen.lock().expect("tally lock");
                        let twice: u64 = seen
                            .iter()
                            .map(|&(a, b)| to.min(b).saturating_sub(from.max(a)))
                            .sum();
                        tally.records_twice += twice;
                        seen.push((from, to));
                    }
                }
                None => tally.other_message_bytes += message.len() as u64,
            }
        }
    }
}

/// A batch's record count and, for a snapshot batch, the progress range it
/// covers; None for any other message.
fn classify(
    body: &[u8],
    inflater: &mut storesync_shared::kit::stream_compression::Inflater,
) -> (Option<u64>, Option<(u64, u64)>) {
    use prost::Message;
    use storesync_shared::proto::v1::{master_message, MasterMessage};
    let Ok(message) = MasterMessage::decode(body) else {
        return (None, None);
    };
    let messages = match message.message {
        Some(master_message::Message::Compressed(chunk)) => inflater
            .unpack::<MasterMessage>(&chunk.deflate)
            .unwrap_or_default(),
        _ => vec![message],
    };
    for message in messages {
        if let Some(master_message::Message::DownstreamBatch(batch)) = message.message {
            let records = batch.records.len() as u64;
            let progress = batch
                .initialisation
                .map(|p| (p.records_done.saturating_sub(records), p.records_done));
            return (Some(records), progress);
        }
    }
    (None, None)
}

impl Drop for DownReader {
    fn drop(&mut self) {
        let short = self.header.len()
            + self.payload.len()
            + self
                .streams
                .values()
                .map(|stream| stream.buffer.len())
                .sum::<usize>();
        self.totals.lock().expect("tally lock").cut_short_bytes += short as u64;
    }
}

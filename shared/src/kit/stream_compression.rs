//! Compression across the messages of one sync session
//! (`StreamCompression` in `sync.proto`).
//!
//! gRPC compresses each message alone, so a slow link's small batches,
//! acks and heartbeats compress poorly, and smaller batches (less lost in
//! flight at a cut) cost more bytes. Here each direction of a session has
//! one raw deflate stream: a message is written into it and sync-flushed, and
//! the output so far travels as a `CompressedChunk`. Each chunk decodes on
//! arrival, and later messages refer back to earlier ones (the same ids,
//! tables and field names), so a small message costs a few bytes.
//!
//! - [`Deflater`]: the sending side's context; [`Deflater::pack`] turns a
//!   message into a chunk.
//! - [`Unpacking`]: the receiving side's stream; it inflates chunks and hands
//!   out the messages they hold, plain messages passing through.
//!
//! # Invariant
//! - A context lives exactly as long as its session: it starts fresh with the
//!   session's first chunk and nothing of it persists, so a cut loses nothing
//!   but the chunks in flight, and a new session cannot misread an old one's.
//! - A chunk never holds a handshake message (Hello, Welcome) or a chunk:
//!   the handshake decides whether chunks are used at all.
//! - Memory per direction is bounded: the compressor's state (miniz_oxide:
//!   its 32 KiB window plus hash tables, about 300 KiB) or the inflater's
//!   (the 32 KiB window plus tables, about 45 KiB), and one chunk's inflated
//!   messages, refused beyond the message limit before they are parsed.
//! - A chunk that does not inflate, inflates beyond the limit, or holds a
//!   partial or forbidden message is refused whole (`INVALID_ARGUMENT`):
//!   none of its messages is handed out, and the session ends (the stream's
//!   state is unknown after it).
//!
//! # Ownership
//! This module owns only the framing; which messages are sent and what they
//! mean belong to the sync modules of each binary.

use std::collections::VecDeque;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use prost::Message;
use tonic::{Status, Streaming};

use crate::proto::v1::{
    master_message, satellite_message, CompressedChunk, MasterMessage, SatelliteMessage,
    StreamCompression,
};

/// A sync message kind that can travel in chunks.
pub trait Chunked: Message + Default + Sized {
    /// The message carrying `deflate`.
    fn chunk(deflate: Vec<u8>) -> Self;
    /// The chunk's bytes, or the message itself when it is not a chunk.
    fn into_chunk(self) -> std::result::Result<Vec<u8>, Self>;
    /// Never put in a chunk (the handshake, or a chunk).
    fn stays_plain(&self) -> bool;
}

impl Chunked for MasterMessage {
    fn chunk(deflate: Vec<u8>) -> Self {
        MasterMessage {
            message: Some(master_message::Message::Compressed(CompressedChunk {
                deflate,
            })),
        }
    }

    fn into_chunk(self) -> std::result::Result<Vec<u8>, Self> {
        match self.message {
            Some(master_message::Message::Compressed(chunk)) => Ok(chunk.deflate),
            message => Err(MasterMessage { message }),
        }
    }

    fn stays_plain(&self) -> bool {
        matches!(
            self.message,
            Some(master_message::Message::Welcome(_) | master_message::Message::Compressed(_))
        )
    }
}

impl Chunked for SatelliteMessage {
    fn chunk(deflate: Vec<u8>) -> Self {
        SatelliteMessage {
            message: Some(satellite_message::Message::Compressed(CompressedChunk {
                deflate,
            })),
        }
    }

    fn into_chunk(self) -> std::result::Result<Vec<u8>, Self> {
        match self.message {
            Some(satellite_message::Message::Compressed(chunk)) => Ok(chunk.deflate),
            message => Err(SatelliteMessage { message }),
        }
    }

    fn stays_plain(&self) -> bool {
        matches!(
            self.message,
            Some(satellite_message::Message::Hello(_) | satellite_message::Message::Compressed(_))
        )
    }
}

/// Deflate's default level: the same work per byte as gRPC's gzip, which it
/// replaces for the session.
const LEVEL: u32 = 6;

/// The sending side's context for one direction of one session.
pub struct Deflater {
    compress: Compress,
    /// The context failed (never seen: only a misuse of the compressor
    /// fails); every later message goes plain, which the receiver accepts.
    broken: bool,
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    pub fn new() -> Self {
        Self {
            compress: Compress::new(Compression::new(LEVEL), false),
            broken: false,
        }
    }

    /// `message` as a chunk of this context, flushed so that it decodes on
    /// arrival; a handshake message, or any after a failure, as it is.
    pub fn pack<M: Chunked>(&mut self, message: M) -> M {
        if self.broken || message.stays_plain() {
            return message;
        }
        let plain = message.encode_length_delimited_to_vec();
        match self.deflate(&plain) {
            Some(deflate) => M::chunk(deflate),
            None => {
                tracing::error!("the sync stream's compressor failed; the session's later messages go uncompressed");
                self.broken = true;
                message
            }
        }
    }

    /// `input` (any bytes) deflated into this context and sync-flushed:
    /// [`Self::pack`]'s work, open so that tests can build hostile chunks.
    /// `None`: the compressor failed.
    pub fn deflate(&mut self, mut input: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before = self.compress.total_in();
            self.compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .ok()?;
            let consumed = usize::try_from(self.compress.total_in() - before).ok()?;
            input = &input[consumed..];
            // A sync flush is complete once all input is taken and the
            // output was not filled to the brim (zlib's rule).
            if input.is_empty() && out.len() < out.capacity() {
                return Some(out);
            }
        }
    }
}

/// The receiving side's context for one direction of one session.
pub struct Inflater {
    decompress: Decompress,
    /// Largest inflated size of one chunk (the message limit).
    limit: usize,
}

impl Inflater {
    pub fn new(limit: usize) -> Self {
        Self {
            decompress: Decompress::new(false),
            limit,
        }
    }

    /// The messages `chunk` holds, all or none (see the module invariant);
    /// the error says what is wrong with it.
    pub fn unpack<M: Chunked>(&mut self, chunk: &[u8]) -> std::result::Result<Vec<M>, String> {
        let mut out: Vec<u8> =
            Vec::with_capacity(chunk.len().saturating_mul(4).max(1024).min(self.limit + 1));
        let mut input = chunk;
        loop {
            if out.len() == out.capacity() {
                if out.len() > self.limit {
                    return Err(format!(
                        "inflates beyond the message limit of {} bytes",
                        self.limit
                    ));
                }
                let room = out.capacity().min(self.limit + 1 - out.len()).max(1);
                out.reserve_exact(room);
            }
            let (before_in, before_out) = (self.decompress.total_in(), self.decompress.total_out());
            let status = self
                .decompress
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|e| format!("does not inflate ({e})"))?;
            if status == flate2::Status::StreamEnd {
                return Err("ends the session's deflate stream".into());
            }
            let consumed = usize::try_from(self.decompress.total_in() - before_in)
                .map_err(|_| "does not inflate".to_owned())?;
            input = &input[consumed..];
            let produced = self.decompress.total_out() - before_out;
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if consumed == 0 && produced == 0 && out.len() < out.capacity() {
                return Err("does not inflate (no progress)".into());
            }
        }
        if out.len() > self.limit {
            return Err(format!(
                "inflates beyond the message limit of {} bytes",
                self.limit
            ));
        }
        let mut messages = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let message = M::decode_length_delimited(&mut rest)
                .map_err(|e| format!("holds a partial or malformed message ({e})"))?;
            if message.stays_plain() {
                return Err("holds a handshake message or another chunk".into());
            }
            messages.push(message);
        }
        Ok(messages)
    }
}

/// A received stream whose chunks are inflated into the messages they hold
/// (in order); plain messages pass through. Chunks are refused until
/// [`Unpacking::inflate`] is called (the handshake agreed on them).
pub struct Unpacking<M> {
    stream: Streaming<M>,
    inflater: Option<Inflater>,
    pending: VecDeque<M>,
}

impl<M: Chunked> Unpacking<M> {
    pub fn new(stream: Streaming<M>) -> Self {
        Self {
            stream,
            inflater: None,
            pending: VecDeque::new(),
        }
    }

    /// Chunks are accepted from now on, each inflating to at most `limit` bytes.
    pub fn inflate(&mut self, kind: StreamCompression, limit: usize) {
        if kind == StreamCompression::Deflate {
            self.inflater = Some(Inflater::new(limit));
        }
    }

    /// The next message, as `Streaming::message` (and as cancel-safe: the
    /// only await is the underlying read; a chunk's messages are queued
    /// before any is handed out).
    pub async fn message(&mut self) -> std::result::Result<Option<M>, Status> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Ok(Some(message));
            }
            let Some(message) = self.stream.message().await? else {
                return Ok(None);
            };
            let chunk = match message.into_chunk() {
                Ok(chunk) => chunk,
                Err(plain) => return Ok(Some(plain)),
            };
            let Some(inflater) = self.inflater.as_mut() else {
                return Err(Status::invalid_argument(
                    "compressed: a CompressedChunk in a session that did not agree on stream compression",
                ));
            };
            let messages = inflater.unpack::<M>(&chunk).map_err(|why| {
                Status::invalid_argument(format!(
                    "compressed: a CompressedChunk of {} bytes {why}; the session ends",
                    chunk.len()
                ))
            })?;
            self.pending.extend(messages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{DownstreamAck, Heartbeat, Hello, UpstreamBatch};

    fn ack(cursor: u64) -> SatelliteMessage {
        SatelliteMessage {
            message: Some(satellite_message::Message::DownstreamAck(DownstreamAck {
                cursor,
                init_records_done: cursor * 3,
                initialisation_complete: false,
            })),
        }
    }

    #[test]
    fn messages_decode_chunk_by_chunk_and_repeats_shrink() {
        let (mut deflater, mut inflater) = (Deflater::new(), Inflater::new(1 << 20));
        for cursor in 1..=50u64 {
            let chunk = deflater.pack(ack(cursor)).into_chunk().expect("a chunk");
            let got: Vec<SatelliteMessage> = inflater.unpack(&chunk).expect("inflates");
            assert_eq!(got, vec![ack(cursor)]);
        }
        // A message much like an earlier one costs a fraction of its size:
        // the context spans messages (alone, this text hardly compresses).
        let traced = |n: u64| SatelliteMessage {
            message: Some(satellite_message::Message::UpstreamBatch(UpstreamBatch {
                first_seq: n,
                last_seq: n,
                trace_context: [(
                    "traceparent".to_owned(),
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
                )]
                .into(),
                ..Default::default()
            })),
        };
        let first = deflater.pack(traced(1)).into_chunk().expect("a chunk");
        let second = deflater.pack(traced(2)).into_chunk().expect("a chunk");
        assert!(
            second.len() * 2 < traced(2).encoded_len(),
            "{} then {} bytes for {} plain",
            first.len(),
            second.len(),
            traced(2).encoded_len()
        );
        let got: Vec<SatelliteMessage> = inflater.unpack(&first).expect("inflates");
        assert_eq!(got, vec![traced(1)]);
        let got: Vec<SatelliteMessage> = inflater.unpack(&second).expect("inflates");
        assert_eq!(got, vec![traced(2)]);
    }

    #[test]
    fn the_handshake_stays_plain() {
        let hello = SatelliteMessage {
            message: Some(satellite_message::Message::Hello(Hello::default())),
        };
        assert_eq!(Deflater::new().pack(hello.clone()), hello);
    }

    #[test]
    fn a_chunk_beyond_the_limit_or_corrupt_is_refused_whole() {
        let big = SatelliteMessage {
            message: Some(satellite_message::Message::Heartbeat(Heartbeat {
                sent_at_ms: 1,
                upstream_backlog: 2,
            })),
        };
        let mut deflater = Deflater::new();
        let chunk = deflater.pack(big).into_chunk().expect("a chunk");
        let error = Inflater::new(4)
            .unpack::<SatelliteMessage>(&chunk)
            .expect_err("over the limit");
        assert!(error.contains("beyond the message limit of 4"), "{error}");
        let error = Inflater::new(1 << 20)
            .unpack::<SatelliteMessage>(&[0xff, 0xff, 0xff, 0x00])
            .expect_err("corrupt");
        assert!(error.contains("does not inflate"), "{error}");
        // A chunk holding another chunk is refused.
        let nested = SatelliteMessage::chunk(vec![1, 2, 3]);
        let chunk = Deflater::new()
            .deflate(&nested.encode_length_delimited_to_vec())
            .expect("deflates");
        let error = Inflater::new(1 << 20)
            .unpack::<SatelliteMessage>(&chunk)
            .expect_err("nested");
        assert!(error.contains("another chunk"), "{error}");
    }
}

//! Reaching the master: which of its addresses to try, the HTTP/2 channel
//! (TLS towards `https://`), the client with its message limits and
//! compression, and how transport failures read in the log and the status.
//!
//! Not here: anything said on the stream (`handshake`, `session`).

use std::time::Duration;

use storesync_shared::proto::v1::sync_service_client::SyncServiceClient;
use storesync_shared::{Error, Result};
use tonic::transport::Channel;

use super::ClientSettings;

/// The master address for attempt `current`: the addresses are tried in
/// turn, a failed session moving to the next.
pub(super) fn master_url(settings: &ClientSettings, current: usize) -> String {
    settings
        .master_urls
        .get(current % settings.master_urls.len().max(1))
        .cloned()
        .unwrap_or_default()
}

/// A client of the master at `master_url`, its channel connected.
pub(super) async fn client(
    settings: &ClientSettings,
    master_url: &str,
) -> Result<SyncServiceClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(master_url.to_owned())
        .map_err(|e| Error::invalid("master_url", e))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        // HTTP/2 lets a peer send only a window ahead of what this side has
        // read, and this side reads the next batch only after applying the
        // last: with the 64 KiB default a 1 MiB batch crawled over in window
        // round trips while the satellite sat idle (half the machine idle
        // in the downstream benchmark). 8 MiB covers two full batches; it
        // only bounds buffering, an idle stream holds none of it.
        .initial_stream_window_size(8 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let endpoint = if master_url.starts_with("https://") {
        let tls = settings.tls.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{master_url} needs TLS, but its settings could not be read (see the log at start)"
            ))
        })?;
        endpoint
            .tls_config(tls)
            .map_err(|e| Error::invalid("master_url", format!("TLS: {e}")))?
    } else {
        endpoint
    };
    let channel = endpoint.connect().await.map_err(|e| {
        Error::Unavailable(format!(
            "cannot reach the master at {}: {}",
            master_url,
            source_chain(&e)
        ))
    })?;
    let mut client = SyncServiceClient::new(channel)
        .max_decoding_message_size(storesync_shared::kit::server::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(storesync_shared::kit::server::MAX_MESSAGE_BYTES);
    // With `Deflate` the session's own stream compresses (negotiated in the
    // Hello); gzip on top would only spend CPU on compressed bytes, and tonic
    // cannot turn it off per message, so the headers ask for none.
    if settings.compression == crate::config::SyncCompression::Gzip {
        client = client
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    Ok(client)
}

/// A status from the master or the transport, as the session's error.
pub(super) fn status_error(status: tonic::Status) -> Error {
    // Transport failures (TLS refused, connection reset) carry their cause as
    // the status's source: show it, or the operator reads only "transport error".
    let cause = std::error::Error::source(&status)
        .map(|s| format!(" ({})", source_chain(s)))
        .unwrap_or_default();
    let message = format!("{:?}: {}{cause}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unauthenticated => Error::Unauthenticated(message),
        tonic::Code::PermissionDenied => Error::PermissionDenied(message),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(message),
        tonic::Code::InvalidArgument => Error::InvalidArgument(message),
        tonic::Code::Aborted => Error::Aborted(message),
        _ => Error::Unavailable(message),
    }
}

/// An error with its causes, for logs ("transport error: connection refused").
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

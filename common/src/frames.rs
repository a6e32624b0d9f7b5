//! Frames on a QUIC stream: the one reader and writer of the protocol's length-prefixed
//! frames that the coordinator, the worker and the simulator share. What a frame is
//! (`u32` length, postcard body, the 16 MiB cap) is `gitmirror_wire::frame`; what a
//! frame means is `gitmirror_wire::session`. This module only moves the bytes.

use gitmirror_wire::{FrameError, MAX_FRAME, encode_frame, frame::body_len};
use serde::Serialize;

/// Why no frame was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream or the connection failed, or ended inside a frame: not the peer's
    /// protocol fault, so nothing to close with a protocol error.
    #[error("{0}")]
    Stream(String),
    /// The header announced a body over the limit: a protocol error. Nothing was
    /// allocated for it.
    #[error(transparent)]
    Frame(FrameError),
}

/// The next frame's body, of at most `max` bytes (and never more than [`MAX_FRAME`]);
/// `None` when the stream ended cleanly between frames. The length is checked before
/// the body is allocated.
pub async fn read(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>, ReadError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(ReadError::Stream(e.to_string())),
    }
    let len = body_len(header).map_err(ReadError::Frame)?;
    let max = max.min(MAX_FRAME);
    if len > max {
        return Err(ReadError::Frame(FrameError::TooLarge { len, max }));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| ReadError::Stream(e.to_string()))?;
    Ok(Some(body))
}

/// Why a message was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// It cannot be encoded (or its frame would pass [`MAX_FRAME`]): a bug of the sender.
    #[error(transparent)]
    Encode(FrameError),
    /// The stream or the connection failed.
    #[error("{0}")]
    Stream(String),
}

/// Write one message as a frame.
pub async fn write<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), WriteError> {
    let frame = encode_frame(msg).map_err(WriteError::Encode)?;
    send.write_all(&frame)
        .await
        .map_err(|e| WriteError::Stream(e.to_string()))
}

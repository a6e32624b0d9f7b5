//! Length-prefixed postcard frames: a little-endian `u32` length, then the message.
//! The length is checked against [`MAX_FRAME`] before anything is allocated for the body.

use serde::{Serialize, de::DeserializeOwned};

/// Largest frame body accepted or sent: 16 MiB.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Encode one message as a frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    let out = postcard::to_extend(msg, std::mem::take(&mut out))
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let mut out = out;
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Decode one message body (without the length prefix). Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// Check a frame header; returns the body length to read.
pub fn body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(len)
}

/// Incremental frame splitter for byte streams: push what arrived, take whole bodies out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append received bytes. The buffer holds at most one frame header plus one body in
    /// excess of what the caller has taken out, since an oversized header is refused.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(header) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut h = [0u8; 4];
        h.copy_from_slice(header);
        let len = body_len(h)?;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }

    /// Bytes buffered but not yet returned.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_header_is_refused_before_the_body_arrives() {
        let mut d = FrameDecoder::new();
        d.push(&((MAX_FRAME as u32) + 1).to_le_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
    }

    #[test]
    fn frames_split_across_pushes_are_reassembled() {
        let f1 = encode_frame(&"hello".to_string()).unwrap();
        let f2 = encode_frame(&42u64).unwrap();
        let all: Vec<u8> = f1.iter().chain(f2.iter()).copied().collect();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in all.chunks(3) {
            d.push(b);
            while let Some(body) = d.next_frame().unwrap() {
                got.push(body);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(decode::<String>(&got[0]).unwrap(), "hello");
        assert_eq!(decode::<u64>(&got[1]).unwrap(), 42);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut body = postcard::to_stdvec(&7u32).unwrap();
        body.push(0);
        assert!(matches!(decode::<u32>(&body), Err(FrameError::Decode(_))));
    }
}

//! Length-prefixed frames: a u32 big-endian payload length, then the payload; the maximum is
//! checked when encoding and when decoding, and the streaming [`FrameDecoder`] tells a frame
//! that is still arriving (`Ok(None)`) from a stream that must be closed (`Err`).

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest payload a frame may carry (32 MiB). A larger length prefix is invalid: the peer is
/// broken or hostile, and the connection must close (the rest of the stream cannot be framed).
pub const FRAME_LEN_MAX: usize = 32 * 1024 * 1024;

/// Largest chunk [`FrameDecoder::feed`] accepts in one call (1 MiB); transports read less.
pub const FEED_CHUNK_LEN_MAX: usize = 1024 * 1024;

/// Most bytes a [`FrameDecoder`] ever holds: one maximal frame plus one fed chunk. The caller
/// drains [`FrameDecoder::next`] until it returns `Ok(None)` before feeding again.
pub const DECODER_BUFFER_MAX: usize = FRAME_HEADER_LEN + FRAME_LEN_MAX + FEED_CHUNK_LEN_MAX;

/// Why bytes could not be framed or unframed. Every variant is fatal for the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A payload (to send, or announced by a received prefix) is longer than the maximum.
    #[error("frame payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLong {
        /// The payload length.
        len: u64,
        /// [`FRAME_LEN_MAX`].
        max: usize,
    },
    /// One `feed` call passed more than [`FEED_CHUNK_LEN_MAX`] bytes.
    #[error("fed chunk of {len} bytes exceeds the maximum of {max} bytes")]
    ChunkTooLong {
        /// The chunk length.
        len: usize,
        /// [`FEED_CHUNK_LEN_MAX`].
        max: usize,
    },
    /// The decoder would hold more than [`DECODER_BUFFER_MAX`] bytes: the caller fed again
    /// without draining complete frames.
    #[error("frame decoder buffer would hold {len} bytes, more than {max}; drain frames first")]
    BufferFull {
        /// What the buffer would hold.
        len: usize,
        /// [`DECODER_BUFFER_MAX`].
        max: usize,
    },
    /// An earlier error poisoned this decoder; the stream cannot be resynchronised.
    #[error("the frame decoder failed earlier; the stream must be closed")]
    Poisoned,
}

/// Frames `payload`: its length as a u32 big-endian, then the payload.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = check_len(payload.len() as u64)?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Decodes one frame from the start of `bytes`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((payload, consumed)))` when a whole frame is there.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = bytes.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = check_len(u64::from(u32::from_be_bytes(*header)))? as usize;
    let end = FRAME_HEADER_LEN + len;
    match bytes.get(FRAME_HEADER_LEN..end) {
        Some(payload) => Ok(Some((payload, end))),
        None => Ok(None),
    }
}

/// `len` as a u32 prefix, if it is within [`FRAME_LEN_MAX`].
fn check_len(len: u64) -> Result<u32, FrameError> {
    let too_long = FrameError::TooLong {
        len,
        max: FRAME_LEN_MAX,
    };
    if len > FRAME_LEN_MAX as u64 {
        return Err(too_long);
    }
    u32::try_from(len).map_err(|_| too_long)
}

/// A streaming frame decoder for one connection: feed it bytes as they arrive, pull frames.
///
/// The buffer is bounded by [`DECODER_BUFFER_MAX`]; a length prefix above [`FRAME_LEN_MAX`] is
/// reported as soon as its four bytes arrive (nothing is allocated for it), and poisons the
/// decoder.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already returned as frames.
    consumed: usize,
    poisoned: bool,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        if bytes.len() > FEED_CHUNK_LEN_MAX {
            return Err(FrameError::ChunkTooLong {
                len: bytes.len(),
                max: FEED_CHUNK_LEN_MAX,
            });
        }
        self.compact();
        let len = self.buffer.len() + bytes.len();
        if len > DECODER_BUFFER_MAX {
            self.poisoned = true;
            return Err(FrameError::BufferFull {
                len,
                max: DECODER_BUFFER_MAX,
            });
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete frame's payload: `Ok(None)` when the next frame is incomplete (feed
    /// more), `Err` when the stream is invalid (close it).
    #[allow(clippy::should_implement_trait)] // fallible: not an `Iterator`
    pub fn next(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        let pending = self.buffer.get(self.consumed..).unwrap_or_default();
        match decode_frame(pending) {
            Ok(Some((payload, used))) => {
                let payload = payload.to_vec();
                self.consumed += used;
                Ok(Some(payload))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.poisoned = true;
                Err(error)
            }
        }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn pending_len(&self) -> usize {
        self.buffer.len() - self.consumed
    }

    /// Drops the bytes already returned, so the buffer holds only pending bytes.
    fn compact(&mut self) {
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_split_at_every_byte() {
        let mut stream = encode_frame(b"hello").unwrap();
        stream.extend(encode_frame(b"").unwrap());
        stream.extend(encode_frame(&[7; 300]).unwrap());
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        for byte in &stream {
            decoder.feed(std::slice::from_ref(byte)).unwrap();
            while let Some(frame) = decoder.next().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames, vec![b"hello".to_vec(), vec![], vec![7; 300]]);
        assert_eq!(decoder.pending_len(), 0);
    }

    #[test]
    fn incomplete_is_not_invalid() {
        let frame = encode_frame(b"abc").unwrap();
        assert_eq!(decode_frame(&frame[..2]), Ok(None));
        assert_eq!(decode_frame(&frame[..6]), Ok(None));
        assert_eq!(decode_frame(&frame), Ok(Some((&b"abc"[..], 7))));
    }

    #[test]
    fn oversized_prefix_is_invalid_before_the_payload_arrives_and_poisons() {
        let mut decoder = FrameDecoder::new();
        let len = (FRAME_LEN_MAX as u32 + 1).to_be_bytes();
        decoder.feed(&len).unwrap();
        assert_eq!(
            decoder.next(),
            Err(FrameError::TooLong {
                len: FRAME_LEN_MAX as u64 + 1,
                max: FRAME_LEN_MAX
            })
        );
        assert_eq!(decoder.next(), Err(FrameError::Poisoned));
        assert_eq!(decoder.feed(b"x"), Err(FrameError::Poisoned));
        assert_eq!(
            decode_frame(&u32::MAX.to_be_bytes()),
            Err(FrameError::TooLong {
                len: u64::from(u32::MAX),
                max: FRAME_LEN_MAX
            })
        );
    }

    #[test]
    fn encode_checks_the_maximum() {
        let payload = vec![0; FRAME_LEN_MAX + 1];
        assert!(matches!(
            encode_frame(&payload),
            Err(FrameError::TooLong { .. })
        ));
        assert!(encode_frame(&payload[..FRAME_LEN_MAX]).is_ok());
    }

    #[test]
    fn feeding_without_draining_is_bounded() {
        let mut decoder = FrameDecoder::new();
        let chunk = vec![0; FEED_CHUNK_LEN_MAX];
        let mut fed = 0;
        let error = loop {
            match decoder.feed(&chunk) {
                Ok(()) => fed += 1,
                Err(error) => break error,
            }
        };
        assert!(matches!(error, FrameError::BufferFull { .. }), "{error}");
        assert!(fed * FEED_CHUNK_LEN_MAX <= DECODER_BUFFER_MAX);
        assert!(matches!(
            decoder.feed(&vec![0; FEED_CHUNK_LEN_MAX + 1]),
            Err(FrameError::Poisoned)
        ));
    }
}

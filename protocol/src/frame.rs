//! Framing of the local protocol: a 4-byte big-endian length, then that many
//! bytes of JSON. Frames larger than [`MAX_FRAME`] are refused before any of
//! the body is read.
//!
//! This module is runtime-free (blocking `Read`/`Write`); the daemon wraps the
//! same header logic around tokio streams with [`body_len`].

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// Largest frame body accepted or sent: 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

/// Why a frame could not be read or written.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection cleanly between frames.
    Closed,
    /// The announced body is larger than [`MAX_FRAME`].
    TooLarge(usize),
    /// The body is not the JSON we expected.
    Malformed(String),
    /// The underlying stream failed.
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => write!(f, "connection closed"),
            FrameError::TooLarge(n) => {
                write!(f, "frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
            }
            FrameError::Malformed(why) => write!(f, "malformed frame: {why}"),
            FrameError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Validates a frame header and returns the body length it announces.
pub fn body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Serializes `message` into a complete frame (header and body). The buffer
/// may hold secrets, so it comes back zeroizing.
pub fn encode<T: Serialize>(message: &T) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut buf = Zeroizing::new(vec![0u8; 4]);
    serde_json::to_writer(&mut *buf, message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Parses a frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads one frame body from a blocking stream.
pub fn read_body<R: Read>(reader: &mut R) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = body_len(header)?;
    let mut body = Zeroizing::new(vec![0u8; len]);
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// Reads and decodes one frame from a blocking stream.
pub fn read<R: Read, T: DeserializeOwned>(reader: &mut R) -> Result<T, FrameError> {
    decode(&read_body(reader)?)
}

/// Encodes and writes one frame to a blocking stream.
pub fn write<W: Write, T: Serialize>(writer: &mut W, message: &T) -> Result<(), FrameError> {
    let buf = encode(message)?;
    writer.write_all(&buf)?;
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_header_is_refused_before_reading_the_body() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(body_len(header), Err(FrameError::TooLarge(_))));
        assert_eq!(
            body_len((MAX_FRAME as u32).to_be_bytes()).unwrap(),
            MAX_FRAME
        );
    }

    #[test]
    fn round_trip() {
        let frame = encode(&serde_json::json!({"a": 1})).unwrap();
        let mut cursor = io::Cursor::new(frame.to_vec());
        let v: serde_json::Value = read(&mut cursor).unwrap();
        assert_eq!(v["a"], 1);
        assert!(matches!(read_body(&mut cursor), Err(FrameError::Closed)));
    }

    #[test]
    fn truncated_body_is_an_error() {
        let mut bytes = encode(&"hello").unwrap().to_vec();
        bytes.truncate(6);
        let mut cursor = io::Cursor::new(bytes);
        assert!(matches!(read_body(&mut cursor), Err(FrameError::Io(_))));
    }
}

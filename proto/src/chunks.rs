//! A checkpoint on the wire: its bytes cut into `CheckpointChunk`s of at most
//! `CHECKPOINT_CHUNK_BYTES`, the first carrying the header (the size and SHA-256 of the whole),
//! and put back together with both checked. The worker (upload, fetch), the coordinator (the
//! same two, from the other side) and the checkpoint bench all cut and check this way.

use crate::{CHECKPOINT_CHUNK_BYTES, v1};
use sha2::{Digest, Sha256};

/// The SHA-256 of `data`, as the header carries it (lowercase hex).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `data` as the chunks of one stream, `header` on the first (an empty checkpoint is one chunk).
pub fn chunks(header: v1::CheckpointHeader, data: &[u8]) -> Vec<v1::CheckpointChunk> {
    let mut out: Vec<v1::CheckpointChunk> =
        data.chunks(CHECKPOINT_CHUNK_BYTES).map(|d| v1::CheckpointChunk { header: None, data: d.to_vec() }).collect();
    match out.first_mut() {
        Some(first) => first.header = Some(header),
        None => out.push(v1::CheckpointChunk { header: Some(header), data: Vec::new() }),
    }
    out
}

/// Why chunks do not make the checkpoint their header declares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("more data than header.size_bytes = {declared}")]
    TooMuch { declared: u64 },
    #[error("{arrived} bytes arrived, header.size_bytes = {declared} (the stream was cut?)")]
    Short { arrived: u64, declared: u64 },
    #[error("SHA-256 {arrived} differs from header.sha256 = {declared}")]
    Sha256 { arrived: String, declared: String },
}

/// A checkpoint being put back together from its chunks, against its header.
pub struct Assembly {
    size: u64,
    sha256: String,
    data: Vec<u8>,
}

impl Assembly {
    /// An empty assembly of the checkpoint `header` declares (its room taken at once: the caller
    /// has bounded `size_bytes`).
    pub fn new(header: &v1::CheckpointHeader) -> Assembly {
        Assembly {
            size: header.size_bytes,
            sha256: header.sha256.clone(),
            data: Vec::with_capacity(usize::try_from(header.size_bytes).unwrap_or(0)),
        }
    }

    /// Adds a chunk's data; refused once it passes the declared size.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ChunkError> {
        if self.data.len() as u64 + chunk.len() as u64 > self.size {
            return Err(ChunkError::TooMuch { declared: self.size });
        }
        self.data.extend_from_slice(chunk);
        Ok(())
    }

    /// The whole checkpoint and its SHA-256, once its size and digest are those declared.
    pub fn finish(self) -> Result<(Vec<u8>, String), ChunkError> {
        if self.data.len() as u64 != self.size {
            return Err(ChunkError::Short { arrived: self.data.len() as u64, declared: self.size });
        }
        let sha256 = sha256_hex(&self.data);
        if sha256 != self.sha256 {
            return Err(ChunkError::Sha256 { arrived: sha256, declared: self.sha256 });
        }
        Ok((self.data, sha256))
    }
}

#[cfg(test)]
mod tests {
    use super::{Assembly, ChunkError, chunks, sha256_hex};
    use crate::{CHECKPOINT_CHUNK_BYTES, v1};

    fn header(data: &[u8]) -> v1::CheckpointHeader {
        v1::CheckpointHeader { size_bytes: data.len() as u64, sha256: sha256_hex(data), ..Default::default() }
    }

    #[test]
    fn cut_and_put_back_together_it_is_the_same_checked_checkpoint() {
        for len in [0, 1, CHECKPOINT_CHUNK_BYTES, 2 * CHECKPOINT_CHUNK_BYTES + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let parts = chunks(header(&data), &data);
            assert_eq!(parts.len(), len.div_ceil(CHECKPOINT_CHUNK_BYTES).max(1));
            assert!(parts[0].header.is_some() && parts[1..].iter().all(|c| c.header.is_none()));
            let mut a = Assembly::new(parts[0].header.as_ref().unwrap());
            for p in &parts {
                a.push(&p.data).unwrap();
            }
            assert_eq!(a.finish().unwrap(), (data.clone(), sha256_hex(&data)));
        }
    }

    #[test]
    fn too_much_too_little_or_other_bytes_are_named() {
        let data = vec![3u8; 10];
        let mut a = Assembly::new(&header(&data));
        assert_eq!(a.push(&[0; 11]), Err(ChunkError::TooMuch { declared: 10 }));
        a.push(&data[..4]).unwrap();
        assert_eq!(a.finish().unwrap_err().to_string(), "4 bytes arrived, header.size_bytes = 10 (the stream was cut?)");
        let mut a = Assembly::new(&header(&data));
        a.push(&[4u8; 10]).unwrap();
        assert!(matches!(a.finish(), Err(ChunkError::Sha256 { .. })));
    }
}

//! Parallel gzip, as pigz and buildah's pgzip write it: one gzip member whose deflate stream
//! is cut into blocks of [`BLOCK`] input bytes that are compressed on all cores (rayon) and
//! concatenated in order.
//!
//! - Every block but the last ends with a sync flush (an empty stored block), so it ends on a
//!   byte boundary and the next block's deflate data can follow it directly; the last block
//!   ends the stream. Each block is compressed with the previous block's last 32 KiB as its
//!   dictionary (pigz's default), so matches across block boundaries are not lost.
//! - Blocks whose byte histogram shows they will not compress (order-0 entropy above
//!   [`STORE_ENTROPY`] bits per byte: compressed files, random data) are written as stored
//!   deflate blocks instead of running deflate over them: deflate would spend ~20 ns a byte
//!   to end up larger than stored (klauspost/compress, which pgzip uses, skips them too).
//! - The output depends only on the input bytes (block boundaries are fixed, never on thread
//!   count or write sizes), so the same layer always compresses to the same blob digest.
//! - The CRC-32 of the whole input is combined from the blocks' CRCs.
//!
//! Any gzip reader decodes the result (it is one ordinary member: Go's compress/gzip,
//! zlib, flate2; tests check skopeo and umoci with it).

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use rayon::prelude::*;

/// Input bytes per block: large enough that the per-block costs (a deflate state, the
/// 32 KiB dictionary, a 5-byte sync marker) do not matter, small enough for even work
/// sharing between cores on layers of a few MiB.
pub const BLOCK: usize = 1 << 20;
/// Deflate window: the dictionary each block gets from its predecessor.
const WINDOW: usize = 32 * 1024;
/// Largest stored deflate block.
const STORED_MAX: usize = 0xffff;
/// Order-0 entropy (bits per byte) from which a block is stored rather than deflated.
/// Deflate's Huffman stage cannot gain more than ~1% on such data; LZ matches could only help
/// data that repeats within 32 KiB, which has lower entropy.
const STORE_ENTROPY: f64 = 7.9;

/// Streams gzip into `W`, compressing [`batch`](ParGzEncoder::new) blocks at a time in
/// parallel. Call [`finish`](ParGzEncoder::finish); dropping it loses the end of the stream.
pub struct ParGzEncoder<W: Write> {
    inner: W,
    level: u32,
    /// Input not yet compressed: whole blocks plus a partial one.
    pending: Vec<u8>,
    /// The last [`WINDOW`] bytes of input before `pending`.
    dict: Vec<u8>,
    crc: Crc,
    header_written: bool,
    batch: usize,
}

impl<W: Write> ParGzEncoder<W> {
    /// A gzip stream at deflate `level` (1-9): header with no name, mtime 0, OS unknown.
    pub fn new(inner: W, level: u32) -> ParGzEncoder<W> {
        let batch = (2 * rayon::current_num_threads()).max(4);
        ParGzEncoder {
            inner,
            level: level.clamp(1, 9),
            pending: Vec::with_capacity(batch * BLOCK),
            dict: Vec::new(),
            crc: Crc::new(),
            header_written: false,
            batch,
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // XFL as gzip(1) sets it: 2 = best compression, 4 = fastest.
            let xfl = match self.level {
                9 => 2,
                1 => 4,
                _ => 0,
            };
            self.inner
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Compresses `pending`'s first `len` bytes (whole blocks; the last one ends the stream
    /// when `last`) and writes them out.
    fn compress_pending(&mut self, len: usize, last: bool) -> io::Result<()> {
        self.write_header()?;
        let data = &self.pending[..len];
        let blocks: Vec<&[u8]> = if data.is_empty() {
            vec![data]
        } else {
            data.chunks(BLOCK).collect()
        };
        let count = blocks.len();
        let dict = &self.dict;
        let level = self.level;
        let out: Vec<io::Result<(Vec<u8>, Crc)>> = blocks
            .par_iter()
            .enumerate()
            .map(|(i, block)| {
                let dictionary: &[u8] = if i == 0 {
                    dict
                } else {
                    let prev = blocks[i - 1];
                    &prev[prev.len().saturating_sub(WINDOW)..]
                };
                let mut crc = Crc::new();
                crc.update(block);
                let end = last && i + 1 == count;
                Ok((encode_block(block, dictionary, level, end)?, crc))
            })
            .collect();
        for r in out {
            let (bytes, crc) = r?;
            self.crc.combine(&crc);
            self.inner.write_all(&bytes)?;
        }
        let tail = len.saturating_sub(WINDOW);
        if len > 0 {
            self.dict.clear();
            if len < WINDOW {
                // Only happens for the final partial block: the dictionary is not used again.
                self.dict.extend_from_slice(&self.pending[..len]);
            } else {
                self.dict.extend_from_slice(&self.pending[tail..len]);
            }
        }
        self.pending.drain(..len);
        Ok(())
    }

    /// Writes the rest of the stream and the gzip trailer; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let len = self.pending.len();
        self.compress_pending(len, true)?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        self.inner.write_all(&trailer)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.batch * BLOCK - self.pending.len();
        let n = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == self.batch * BLOCK {
            // Keep the last full block back: only `finish` knows which block is the last.
            let len = (self.batch - 1) * BLOCK;
            self.compress_pending(len, false)?;
        }
        Ok(n)
    }

    /// Flushes what the inner writer has; pending input stays pending (a sync flush would
    /// make the output depend on when callers flush).
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Order-0 entropy of `data` in bits per byte.
fn entropy(data: &[u8]) -> f64 {
    let mut counts = [[0u32; 256]; 4];
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        counts[0][q[0] as usize] += 1;
        counts[1][q[1] as usize] += 1;
        counts[2][q[2] as usize] += 1;
        counts[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        counts[0][b as usize] += 1;
    }
    let n = data.len() as f64;
    (0..256)
        .map(|b| counts.iter().map(|c| c[b] as u64).sum::<u64>())
        .filter(|&c| c > 0)
        .map(|c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// One block's deflate data: ends with a sync flush, or ends the stream when `last`.
fn encode_block(block: &[u8], dictionary: &[u8], level: u32, last: bool) -> io::Result<Vec<u8>> {
    if !block.is_empty() && entropy(block) >= STORE_ENTROPY {
        return Ok(stored(block, last));
    }
    let mut c = Compress::new(Compression::new(level), false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(block.len() + block.len() / 8 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&block[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let done = c.total_in() as usize == block.len()
            && out.len() < out.capacity()
            && (!last || status == Status::StreamEnd);
        if done || status == Status::StreamEnd {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64 * 1024));
    }
}

/// `block` as stored deflate blocks (byte-aligned: every block before ends with a sync
/// flush or is stored too). The last one has BFINAL set when `last`.
fn stored(block: &[u8], last: bool) -> Vec<u8> {
    let chunks = block.len().div_ceil(STORED_MAX);
    let mut out = Vec::with_capacity(block.len() + 5 * chunks);
    for (i, chunk) in block.chunks(STORED_MAX).enumerate() {
        let len = chunk.len() as u16;
        out.push(u8::from(last && i + 1 == chunks));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gz(data: &[u8], write_size: usize) -> Vec<u8> {
        let mut e = ParGzEncoder::new(Vec::new(), 6);
        for chunk in data.chunks(write_size.max(1)) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        // A single-member decoder: the output must be one gzip member.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Compressible text, random bytes and zeros, across several blocks and batches.
    fn mixed(len: usize) -> Vec<u8> {
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let part = (out.len() / 300_000) % 3;
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match part {
                0 => out.extend_from_slice(format!("line {} of text\n", state % 1000).as_bytes()),
                1 => out.extend_from_slice(&state.to_le_bytes()),
                _ => out.extend_from_slice(&[0u8; 64]),
            }
        }
        out.truncate(len);
        out
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        for len in [
            0,
            1,
            100,
            WINDOW,
            BLOCK,
            BLOCK + 1,
            3 * BLOCK - 7,
            11 * BLOCK + 5,
        ] {
            let data = mixed(len);
            let a = gz(&data, 1 << 16);
            let b = gz(&data, 12_345);
            assert_eq!(a, b, "output depends on write sizes (len {len})");
            assert_eq!(gunzip(&a), data, "len {len}");
        }
    }

    #[test]
    fn compresses_text_and_stores_random() {
        let text = mixed(300_000).repeat(8);
        let out = gz(&text, 1 << 20);
        assert!(
            out.len() < text.len() / 4,
            "{} of {}",
            out.len(),
            text.len()
        );
        let mut state = 1u64;
        let random: Vec<u8> = (0..3 * BLOCK)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        let out = gz(&random, 1 << 20);
        assert!(out.len() < random.len() + random.len() / 1000 + 64);
        assert_eq!(gunzip(&out), random);
    }
}

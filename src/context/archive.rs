//! `docker build -`: the context arrives as a stream on stdin.
//!
//! Like the Docker CLI, the stream may be a tar archive, compressed or not (gzip, bzip2, xz
//! and zstd are recognized by their magic bytes), or a plain Dockerfile, in which case the
//! context holds just that file, named `Dockerfile`. A tar is unpacked into a private
//! temporary directory that lives as long as the [`BuildContext`](super::BuildContext):
//! entries cannot land outside it (`..` entries are skipped, absolute paths are made
//! relative, and writes through symlinks that leave the directory are refused); permission
//! bits and mtimes are kept, owners are not (context files are root-owned in the image anyway).

use std::io::{self, Cursor, Read};

use tempfile::TempDir;

use super::{ContextError, Result};

/// How the stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Reads up to `n` bytes (fewer only at the end of the stream) and returns them with a reader
/// that yields the whole stream again.
fn peek<'a>(
    mut r: Box<dyn Read + Send + 'a>,
    n: usize,
) -> io::Result<(Vec<u8>, Box<dyn Read + Send + 'a>)> {
    let mut head = Vec::with_capacity(n);
    (&mut r).take(n as u64).read_to_end(&mut head)?;
    let again = Box::new(Cursor::new(head.clone()).chain(r));
    Ok((head, again))
}

/// Whether a 512-byte block is a tar header: its checksum field matches the sum of its bytes
/// (with the field itself counted as spaces), signed or unsigned as Go's reader accepts, or it
/// is all zeros (an empty archive).
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if block[..512].iter().all(|&b| b == 0) {
        return true;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|&b| b as char)
        .take_while(|c| *c != '\0')
        .collect::<String>()
        .trim()
        .to_string();
    let Ok(want) = i64::from_str_radix(&digits, 8) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block[..512].iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || want == signed
}

fn archive_err(what: &str, source: io::Error) -> ContextError {
    tracing::debug!(error = %source, "build context archive: {what}");
    ContextError::Archive {
        what: what.to_string(),
        source,
    }
}

/// Unpacks a context stream into a new temporary directory.
pub(crate) fn unpack(reader: Box<dyn Read + Send>) -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-context-")
        .tempdir()
        .map_err(|e| archive_err("creating a temporary directory", e))?;
    let (head, stream) = peek(reader, 512).map_err(|e| archive_err("reading", e))?;
    let compression = detect(&head);
    let stream: Box<dyn Read + Send> = match compression {
        Compression::None => stream,
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(stream)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(stream)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(stream)
                .map_err(|e| archive_err("starting zstd", e))?,
        ),
    };
    let (head, stream) = peek(stream, 512).map_err(|e| archive_err("decompressing", e))?;
    if !is_tar_header(&head) {
        if compression != Compression::None {
            return Err(archive_err(
                "reading",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "compressed stream is not a tar archive",
                ),
            ));
        }
        // `docker build - < Dockerfile`: no context, just the Dockerfile.
        let path = dir.path().join("Dockerfile");
        let mut out =
            std::fs::File::create(&path).map_err(|e| archive_err("writing the Dockerfile", e))?;
        io::copy(&mut { stream }, &mut out)
            .map_err(|e| archive_err("writing the Dockerfile", e))?;
        return Ok(dir);
    }
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    archive
        .unpack(dir.path())
        .map_err(|e| archive_err("unpacking", e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(detect(b"BZh91AY"), Compression::Bzip2);
        assert_eq!(
            detect(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1]),
            Compression::Xz
        );
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 1]), Compression::Zstd);
        assert_eq!(detect(b"FROM scratch\n"), Compression::None);
        assert!(!is_tar_header(b"FROM scratch\n"));
        assert!(!is_tar_header(&[b'x'; 512]));
        assert!(is_tar_header(&[0; 512]));
    }
}

//! Local archives for Dockerfile `ADD file.tar.gz /dst/`.
//!
//! Like docker, `ADD` of a local file extracts it when it is a tar archive, plain or wrapped
//! in gzip, bzip2, xz or zstd; anything else is copied as is. Extraction uses the layer
//! unpacker's path rules (see [`super::layer`]): absolute names, `..` escapes, writes through
//! symlinks and hard links out of the destination are refused. Unlike a layer, `.wh.` names
//! are ordinary files here, and ownership, modes, mtimes and xattrs come from the archive.

use std::fs::File;
use std::path::Path;

use super::layer::{decompress, read_up_to, unpack_tar, Flavor, LayerError, StreamFormat};

/// Offset of the `ustar` magic in a tar header.
const USTAR_MAGIC_OFFSET: usize = 257;

/// True if `path` is a tar archive, plain or compressed with gzip, bzip2, xz or zstd (by
/// magic bytes: the compression's, then `ustar` at offset 257 of the decompressed stream).
/// Unreadable files, directories and pre-POSIX (v7) tars without the magic are not archives.
pub fn is_archive(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return false;
    }
    let Ok((format, mut stream)) = decompress(file) else {
        return false;
    };
    let mut head = [0u8; 512];
    let Ok(n) = read_up_to(&mut stream, &mut head) else {
        return false;
    };
    let is_tar = n >= USTAR_MAGIC_OFFSET + 5
        && &head[USTAR_MAGIC_OFFSET..USTAR_MAGIC_OFFSET + 5] == b"ustar";
    tracing::debug!(path = %path.display(), ?format, is_tar, "archive detection");
    is_tar && format_is_known(format)
}

fn format_is_known(format: StreamFormat) -> bool {
    matches!(
        format,
        StreamFormat::Tar
            | StreamFormat::Gzip
            | StreamFormat::Bzip2
            | StreamFormat::Xz
            | StreamFormat::Zstd
    )
}

/// Extracts the archive at `path` into the existing directory `dest`; returns the number of
/// non-directory entries written. Existing files are replaced, existing directories merged.
pub fn extract_archive(path: &Path, dest: &Path) -> Result<u64, LayerError> {
    let file = File::open(path).map_err(|source| LayerError::Io {
        op: "opening archive",
        path: path.to_path_buf(),
        source,
    })?;
    let (_, stream) = decompress(file)?;
    let stats = unpack_tar(stream, dest, Flavor::Plain)?;
    Ok(stats.files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("dir/hello.txt").unwrap();
        h.set_size(5);
        h.set_mode(0o640);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_234_567_890);
        h.set_cksum();
        b.append(&h, &b"hello"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path(".wh.notawhiteout").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn compressed(kind: &str, data: &[u8]) -> Vec<u8> {
        match kind {
            "tar" => data.to_vec(),
            "gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "bz2" => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "xz" => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "zst" => zstd::encode_all(data, 1).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn detects_and_extracts_every_compression() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        for kind in ["tar", "gz", "bz2", "xz", "zst"] {
            let path = tmp.path().join(format!("a.{kind}"));
            fs::write(&path, compressed(kind, &tar_bytes())).unwrap();
            assert!(is_archive(&path), "{kind}");
            let dest = tmp.path().join(format!("out-{kind}"));
            fs::create_dir(&dest).unwrap();
            fs::create_dir(dest.join("dir")).unwrap();
            fs::write(dest.join("dir/existing"), b"kept").unwrap();
            assert_eq!(extract_archive(&path, &dest).unwrap(), 2, "{kind}");
            assert_eq!(fs::read(dest.join("dir/hello.txt")).unwrap(), b"hello");
            assert_eq!(
                fs::read(dest.join("dir/existing")).unwrap(),
                b"kept",
                "directories merge"
            );
            let m = fs::metadata(dest.join("dir/hello.txt")).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
                (1000, 1000, 0o640, 1_234_567_890)
            );
            assert!(
                dest.join(".wh.notawhiteout").is_file(),
                "whiteout names are plain files for ADD"
            );
        }
    }

    #[test]
    fn non_archives_are_not_archives() {
        let tmp = tempfile::tempdir().unwrap();
        let cases: [(&str, Vec<u8>); 5] = [
            ("empty", Vec::new()),
            ("text", b"just some text\n".to_vec()),
            ("gz-text", compressed("gz", &[b'x'; 1000])),
            ("zst-text", compressed("zst", b"hello")),
            ("short-gz", vec![0x1f, 0x8b]),
        ];
        for (name, data) in cases {
            let path = tmp.path().join(name);
            fs::write(&path, data).unwrap();
            assert!(!is_archive(&path), "{name}");
        }
        assert!(!is_archive(tmp.path()), "a directory");
        assert!(!is_archive(&tmp.path().join("missing")));
    }

    #[test]
    fn extraction_refuses_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let path = tmp.path().join("evil.tar.gz");
        fs::write(&path, compressed("gz", &b.into_inner().unwrap())).unwrap();
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let err = extract_archive(&path, &dest).unwrap_err();
        assert!(matches!(err, LayerError::UnsafePath { .. }), "{err}");
        assert!(!tmp.path().join("escape").exists());
    }
}

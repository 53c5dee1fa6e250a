//! The stock kernel's initramfs, written here as a gzip-compressed "newc"
//! cpio archive (the format the kernel unpacks, `cpio -H newc`), so that
//! `hangar image build` needs no `cpio` or `gzip` program and every failure
//! is an error, not an empty archive.
//!
//! Format (the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`):
//! each entry is `070701`, 13 fields of 8 hex digits, the NUL-terminated
//! name padded to 4 bytes, then the data padded to 4 bytes; the archive ends
//! with an entry named `TRAILER!!!`. Owner root, mtime 0 (the archive is a
//! function of its contents).

use std::io::{self, Write};

/// A newc archive being written to `out`.
#[derive(Debug)]
pub struct Newc<W: Write> {
    out: W,
    next_ino: u32,
}

const DIR: u32 = 0o040000;
const REGULAR: u32 = 0o100000;

impl<W: Write> Newc<W> {
    pub fn new(out: W) -> Self {
        Newc { out, next_ino: 1 }
    }

    /// A directory `name` (relative, no leading `/`) with permission bits `mode`.
    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.entry(name, DIR | (mode & 0o7777), &[])
    }

    /// A regular file `name` holding `data`, with permission bits `mode`.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, REGULAR | (mode & 0o7777), data)
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.record(0, "TRAILER!!!", 0, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("initramfs entry name {name:?}: relative, not empty, no NUL"),
            ));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.record(ino, name, mode, data)
    }

    fn record(&mut self, ino: u32, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let too_big = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
        let size = u32::try_from(data.len()).map_err(|_| too_big("initramfs file over 4 GiB"))?;
        let name_size =
            u32::try_from(name.len() + 1).map_err(|_| too_big("initramfs entry name too long"))?;
        let nlink = if mode & 0o170000 == DIR { 2 } else { 1 };
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check.
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name_size, 0];
        let mut header = Vec::with_capacity(112 + name.len());
        header.extend_from_slice(b"070701");
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        // Every record starts 4-aligned, so padding is relative to it.
        header.resize(header.len().next_multiple_of(4), 0);
        self.out.write_all(&header)?;
        self.out.write_all(data)?;
        self.out.write_all(&[0; 3][..data.len().next_multiple_of(4) - data.len()])
    }
}

/// A gzip-compressed newc archive written to `out` (what the kernel's
/// `initrd=` takes): `finish` ends both the archive and the gzip stream.
#[derive(Debug)]
pub struct GzNewc<W: Write>(Newc<flate2::write::GzEncoder<W>>);

impl<W: Write> GzNewc<W> {
    pub fn new(out: W) -> Self {
        GzNewc(Newc::new(flate2::write::GzEncoder::new(out, flate2::Compression::best())))
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.0.dir(name, mode)
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.0.file(name, mode, data)
    }

    pub fn finish(self) -> io::Result<W> {
        self.0.finish()?.finish()
    }
}

/// (name, mode, data) of every entry of a gzip-compressed archive, read
/// with the `cpio` crate (an independent reader) up to the trailer, which
/// must end the archive.
#[cfg(test)]
pub(crate) fn list_gz(compressed: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(compressed).read_to_end(&mut raw).expect("a gzip stream");
    tests::list(&raw)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// (name, mode, data) of every entry, read with the `cpio` crate (an
    /// independent reader), until the trailer.
    pub(super) fn list(mut archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut reader = cpio::NewcReader::new(archive).expect("a newc entry");
            if reader.entry().is_trailer() {
                let rest = reader.finish().unwrap();
                assert!(rest.is_empty(), "{} bytes after the trailer", rest.len());
                return out;
            }
            let entry = reader.entry().clone();
            assert_eq!((entry.uid(), entry.gid(), entry.mtime()), (0, 0, 0));
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            out.push((entry.name().to_owned(), entry.mode(), data));
            archive = reader.finish().unwrap();
        }
    }

    #[test]
    fn an_archive_lists_back_its_entries_with_modes_and_contents() {
        let mut a = Newc::new(Vec::new());
        a.dir("bin", 0o755).unwrap();
        // Names and sizes of every length mod 4 exercise both paddings.
        a.file("bin/busybox", 0o755, b"\x7fELF-ish").unwrap();
        a.file("init", 0o755, b"#!/bin/busybox sh\n").unwrap();
        a.file("a", 0o644, b"").unwrap();
        a.file("abc", 0o600, b"x").unwrap();
        a.file("abcd", 0o644, b"xyz").unwrap();
        let bytes = a.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = list(&bytes);
        let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "init", "a", "abc", "abcd"]);
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!(entries[1], ("bin/busybox".into(), 0o100755, b"\x7fELF-ish".to_vec()));
        assert_eq!(entries[2].2, b"#!/bin/busybox sh\n");
        assert_eq!(entries[4], ("abc".into(), 0o100600, b"x".to_vec()));
        assert_eq!(entries[5].2, b"xyz");
    }

    #[test]
    fn the_header_is_the_kernel_format_byte_for_byte() {
        let mut a = Newc::new(Vec::new());
        a.file("init", 0o755, b"hi").unwrap();
        let bytes = a.finish().unwrap();
        // ino 1, mode 0o100755, uid, gid, nlink 1, mtime, size 2, four
        // device numbers, namesize 5 ("init\0"), check.
        let fields = [1, 0o100755, 0, 0, 1, 0, 2, 0, 0, 0, 0, 5, 0];
        let expected_header: String = std::iter::once("070701".to_owned())
            .chain(fields.map(|f: u32| format!("{f:08x}")))
            .collect();
        assert_eq!(&bytes[..110], expected_header.as_bytes());
        // 110 + "init\0" = 115 → padded to 116; then "hi" padded to 4.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..120], b"hi\0\0");
        assert_eq!(&bytes[120..126], b"070701");
    }

    #[test]
    fn the_gzip_archive_decompresses_to_the_same_archive() {
        let mut gz = GzNewc::new(Vec::new());
        gz.dir("modules", 0o755).unwrap();
        gz.file("modules/virtio_blk.ko", 0o644, &vec![7u8; 100_000]).unwrap();
        let compressed = gz.finish().unwrap();
        assert_eq!(&compressed[..2], b"\x1f\x8b", "a gzip stream");
        assert!(compressed.len() < 10_000, "compressed: {} bytes", compressed.len());
        let entries = list_gz(&compressed);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0, "modules/virtio_blk.ko");
        assert_eq!(entries[1].2.len(), 100_000);
    }

    #[test]
    fn bad_names_and_write_errors_are_errors() {
        let mut a = Newc::new(Vec::new());
        assert!(a.file("/init", 0o755, b"").is_err());
        assert!(a.file("", 0o755, b"").is_err());
        /// A writer whose disk is full.
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("no space left on device"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut full = Newc::new(Full);
        let e = full.file("init", 0o755, b"x").unwrap_err();
        assert!(e.to_string().contains("no space"), "{e}");
        let mut gz = GzNewc::new(Full);
        // The encoder buffers; the error surfaces by `finish` at the latest.
        let result = gz.file("init", 0o755, &[1; 4096]).and_then(|()| gz.finish().map(drop));
        assert!(result.is_err());
    }
}

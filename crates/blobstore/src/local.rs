//! The local-filesystem write path: request bodies straight into files.
//!
//! `object_store`'s `LocalFileSystem` multipart upload hands every part to a
//! blocking task that seeks and issues one `write` per buffered chunk; for a
//! cache block arriving as hundreds of small HTTP body chunks that is one
//! syscall per chunk. Here the body's [`Bytes`] are gathered (without
//! copying) into batches of [`BATCH_BYTES`] and each batch goes to the file
//! in one vectored write from a blocking task, while the next batch is being
//! received: at most two batches per upload are in memory.
//!
//! The same visibility rule as `object_store`'s holds: the bytes go to a
//! staging file beside the destination named `<name>#<digits>`, which
//! `LocalFileSystem` never lists or reads as an object, and are renamed onto
//! the destination only once the whole body has arrived. A failed, oversized
//! or abandoned (dropped) upload removes its staging file. Nothing is
//! fsynced per write: a blob is only served after the cache's finalize has
//! checked its size, and the files are ordinary page-cache writes until the
//! kernel writes them back, as with `object_store`.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::task::JoinHandle;

use crate::BlobError;

/// How many body bytes are gathered before one vectored write.
pub(crate) const BATCH_BYTES: usize = 1024 * 1024;

/// Removes the staging file unless the upload was committed.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The file and whether a write is running on it.
enum Writer {
    Idle(File),
    Busy(JoinHandle<std::io::Result<File>>),
}

impl Writer {
    /// Waits for the running write (if any) and returns the file.
    async fn idle(self) -> std::io::Result<File> {
        match self {
            Writer::Idle(file) => Ok(file),
            Writer::Busy(task) => task.await.map_err(std::io::Error::other)?,
        }
    }
}

/// Streams `body` into `root/key` (see the module doc). `key` must already
/// be a validated object key (no `.`/`..` segments).
pub(crate) async fn put_file<S, E>(
    root: &Path,
    key: &str,
    body: S,
    limit: u64,
) -> Result<u64, BlobError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io_err = |source| BlobError::Io { key: key.to_owned(), source };
    let dest = root.join(key);
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let staging_path = dest.with_file_name(format!("{name}#{}", rand_digits()));
    let open_path = staging_path.clone();
    let file = tokio::task::spawn_blocking(move || {
        if let Some(dir) = open_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        File::create(&open_path)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .map_err(io_err)?;
    let mut staging = Staging { path: staging_path, committed: false };

    let mut writer = Writer::Idle(file);
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    let mut received: u64 = 0;
    let mut body = std::pin::pin!(body);
    loop {
        let next = body.next().await;
        let done = match next {
            None => true,
            Some(Err(source)) => {
                drop(writer.idle().await);
                return Err(BlobError::Body { received, source: source.into() });
            }
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                if received > limit {
                    drop(writer.idle().await);
                    return Err(BlobError::TooLarge { limit });
                }
                batch_len += chunk.len();
                if !chunk.is_empty() {
                    batch.push(chunk);
                }
                false
            }
        };
        if batch_len >= BATCH_BYTES || (done && !batch.is_empty()) {
            let mut file = writer.idle().await.map_err(io_err)?;
            let full = std::mem::take(&mut batch);
            batch_len = 0;
            writer = Writer::Busy(tokio::task::spawn_blocking(move || {
                write_batch(&mut file, &full)?;
                Ok(file)
            }));
        }
        if done {
            break;
        }
    }
    let file = writer.idle().await.map_err(io_err)?;
    drop(file);
    let (from, to) = (staging.path.clone(), dest);
    tokio::task::spawn_blocking(move || std::fs::rename(from, to))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(io_err)?;
    staging.committed = true;
    Ok(received)
}

/// Writes every byte of `batch` with as few `writev` calls as the kernel allows.
fn write_batch(file: &mut File, batch: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = file.write_vectored(rest)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// A random decimal suffix, so concurrent uploads of one key never share a
/// staging file (and `LocalFileSystem` treats `#<digits>` as not an object).
fn rand_digits() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{}", h.finish())
}

//! The process-wide pool of frame buffers (the bodies [`super::FrameReader`] and
//! [`super::read_frame`] read).
//!
//! Buffers come in power-of-two classes from [`MIN_POOLED`] to [`MAX_POOLED`]; each class keeps
//! at most [`CLASS_BYTES`] bytes of idle buffers and the pool at most [`POOL_BYTES`] in all. A
//! frame's [`Bytes`] owns its buffer and puts it back when the last clone or slice is dropped.
//! [`trim`] (called every few seconds by the proxy) frees the buffers no frame needed since the
//! previous call, so memory goes back to the allocator once a burst is over while steady traffic
//! keeps reusing what it needs.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use std::sync::{Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

/// Smallest pooled body (smaller ones are cheap small allocations).
pub const MIN_POOLED: usize = 4 * 1024;
/// Largest pooled body: Fetch responses of a few partitions (brokers may return more than
/// `max.partition.fetch.bytes` for the first batch) fit.
pub const MAX_POOLED: usize = 16 * 1024 * 1024;
/// Idle bytes kept per class (at least one buffer).
pub const CLASS_BYTES: usize = 16 * 1024 * 1024;
/// Idle bytes kept in all.
pub const POOL_BYTES: usize = 48 * 1024 * 1024;

const MIN_SHIFT: u32 = MIN_POOLED.trailing_zeros();
const CLASSES: usize = (MAX_POOLED.trailing_zeros() - MIN_SHIFT + 1) as usize;

/// One class's idle buffers and the fewest it held since the last [`trim`] (buffers below that
/// mark were never taken in the interval: nobody needs them).
struct Idle {
    buffers: Vec<Vec<u8>>,
    low_water: usize,
}

static IDLE: [Mutex<Idle>; CLASSES] = [const {
    Mutex::new(Idle {
        buffers: Vec::new(),
        low_water: 0,
    })
}; CLASSES];
static IDLE_BYTES: AtomicUsize = AtomicUsize::new(0);

fn idle(class: usize) -> MutexGuard<'static, Idle> {
    // A panic while holding the lock leaves a valid Vec: keep using it.
    IDLE[index(class)]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The class (buffer size) for a body of `size` bytes, when pooled.
pub fn class_of(size: usize) -> Option<usize> {
    (MIN_POOLED..=MAX_POOLED)
        .contains(&size)
        .then(|| size.next_power_of_two())
}

fn index(class: usize) -> usize {
    (class.trailing_zeros() - MIN_SHIFT) as usize
}

/// An idle, empty buffer of capacity `class`, if the pool has one.
pub(super) fn take(class: usize) -> Option<Vec<u8>> {
    let mut idle = idle(class);
    let buf = idle.buffers.pop()?;
    idle.low_water = idle.low_water.min(idle.buffers.len());
    IDLE_BYTES.fetch_sub(class, Relaxed);
    Some(buf)
}

/// Frees the idle buffers of every class that no frame took since the previous call and
/// returns the bytes freed. Call it periodically: a buffer idle for a whole period goes back
/// to the allocator, one in use within the period stays pooled.
pub fn trim() -> usize {
    (0..CLASSES).map(|i| trim_class(MIN_POOLED << i)).sum()
}

/// [`trim`] for one class.
pub(super) fn trim_class(class: usize) -> usize {
    let released: Vec<Vec<u8>> = {
        let mut idle = idle(class);
        let unused = idle.low_water.min(idle.buffers.len());
        let keep = idle.buffers.len() - unused;
        let released = idle.buffers.split_off(keep);
        idle.low_water = idle.buffers.len();
        released
    };
    let freed = released.len() * class;
    IDLE_BYTES.fetch_sub(freed, Relaxed);
    // Dropped outside the lock.
    drop(released);
    freed
}

/// Gives `buf` back if its capacity is still `class`, unless its class or the pool is full.
fn give_back(mut buf: Vec<u8>, class: usize) {
    if buf.capacity() != class {
        return;
    }
    let mut idle = idle(class);
    if (idle.buffers.len() + 1) * class > CLASS_BYTES.max(class)
        || IDLE_BYTES.load(Relaxed) + class > POOL_BYTES
    {
        return;
    }
    buf.clear();
    IDLE_BYTES.fetch_add(class, Relaxed);
    idle.buffers.push(buf);
}

/// Idle bytes held by the pool now.
pub fn idle_bytes() -> usize {
    IDLE_BYTES.load(Relaxed)
}

/// A pooled buffer owned by a frame's [`Bytes`]: given back to the pool (see [`give_back`]) when
/// the last clone or slice of the frame is dropped.
struct Pooled<B: Recyclable> {
    buf: B,
    class: usize,
}

/// A buffer type frames are built in, that turns back into an empty `Vec` for the pool.
trait Recyclable: AsRef<[u8]> + Default + Send + 'static {
    /// The allocation as an empty `Vec`, moving no bytes.
    fn into_empty_vec(self) -> Vec<u8>;
}

impl Recyclable for Vec<u8> {
    fn into_empty_vec(mut self) -> Vec<u8> {
        self.clear();
        self
    }
}

impl Recyclable for BytesMut {
    fn into_empty_vec(mut self) -> Vec<u8> {
        // Emptied first: turning it back into a Vec then moves no bytes.
        self.clear();
        Vec::from(self)
    }
}

impl<B: Recyclable> AsRef<[u8]> for Pooled<B> {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref()
    }
}

impl<B: Recyclable> Drop for Pooled<B> {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf).into_empty_vec(), self.class);
    }
}

/// `buf` (of capacity `class`) as [`Bytes`] that return it to the pool when dropped.
pub(super) fn frame(buf: Vec<u8>, class: usize) -> Bytes {
    Bytes::from_owner(Pooled { buf, class })
}

/// An empty [`BytesMut`] with room for at least `size` bytes, to encode record batches into:
/// an idle pooled buffer when `size` has a class (already resident: no page faults, no
/// zeroing), else a fresh allocation. Freeze it with [`freeze_bytes_mut`] so the buffer comes
/// back to the pool.
pub fn bytes_mut_for(size: usize) -> BytesMut {
    // An empty Vec with spare capacity becomes a unique shared `Bytes`, which turns into a
    // `BytesMut` over the same allocation (bytes has no direct conversion).
    BytesMut::from(Bytes::from(Buffer::for_size(size).vec))
}

/// `buf`'s bytes as [`Bytes`]. A buffer whose capacity is a pool class (one from
/// [`bytes_mut_for`] that did not have to grow) goes back to the pool when the last clone or
/// slice is dropped; any other is freed as usual.
pub fn freeze_bytes_mut(buf: BytesMut) -> Bytes {
    match class_of(buf.capacity()) {
        Some(class) if class == buf.capacity() => Bytes::from_owner(Pooled { buf, class }),
        _ => buf.freeze(),
    }
}

/// A buffer to encode a frame of known size into: pooled when the size has a class.
pub(crate) struct Buffer {
    vec: Vec<u8>,
    class: Option<usize>,
}

impl Buffer {
    /// An empty buffer with room for `size` bytes.
    pub(crate) fn for_size(size: usize) -> Self {
        let class = class_of(size);
        let vec = class
            .and_then(take)
            .unwrap_or_else(|| Vec::with_capacity(class.unwrap_or(size)));
        Self { vec, class }
    }

    /// The buffer to append to.
    pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.vec
    }

    /// The bytes written, returning the buffer to the pool once they are dropped.
    pub(crate) fn freeze(self) -> Bytes {
        match self.class {
            Some(class) if self.vec.capacity() == class => frame(self.vec, class),
            _ => Bytes::from(self.vec),
        }
    }
}

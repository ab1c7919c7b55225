//! A niche for optional boxes added in an archived struct's padding (see [`ZeroOffset`]).
//! The one place besides `sys` where this crate writes `unsafe`: rkyv's niching trait is an
//! unsafe one, and reading a relative pointer's offset goes through a cast.

use rkyv::boxed::ArchivedBox;
use rkyv::niche::niching::Niching;
use rkyv::Place;

/// Niches an `Option<Box<T>>` into its relative pointer with offset 0 for `None`: the value
/// of padding, which rkyv zeroes, so a field of this kind can be added in an archived
/// struct's padding and read back as `None` from what an older build wrote. rkyv's own
/// `Niche` marks `None` with offset 1, which zeroed padding would turn into `Some` (a box
/// pointing at itself). No box points at itself: a boxed value is archived before whatever
/// points to it.
pub struct ZeroOffset;

impl<T: rkyv::Portable> Niching<ArchivedBox<T>> for ZeroOffset {
    unsafe fn is_niched(niched: *const ArchivedBox<T>) -> bool {
        // SAFETY: `ArchivedBox` is a `repr(transparent)` wrapper of its `RelPtr` (rkyv's own
        // niching casts it the same way), and the caller guarantees that `niched` is
        // non-null, aligned and readable.
        unsafe { (*niched.cast::<rkyv::RelPtr<T>>()).offset() == 0 }
    }

    fn resolve_niched(out: Place<ArchivedBox<T>>) {
        // SAFETY: as above, the box is its relative pointer.
        let out = unsafe { out.cast_unchecked::<rkyv::RelPtr<T>>() };
        let here = out.pos();
        rkyv::RelPtr::emplace(here, out);
    }
}

//! Oracle of the `descriptor` target: the `kapsule.enc` header parser on arbitrary bytes.

use crate::crypto::wire::{split_header, Descriptor};

/// Decodes `data` as a descriptor and as a whole header value (descriptor + record tag). Never
/// panics on malformed input; whenever a descriptor decodes, it must re-encode to exactly the
/// input (the format is canonical: flags follow from the content) with the same flags byte.
pub fn check(data: &[u8]) {
    if let Ok(d) = Descriptor::decode(data) {
        let again = d.encode().expect("a decoded descriptor must re-encode");
        assert_eq!(again, data, "encode(decode(b)) != b");
        assert_eq!(d.flags(), data[1], "flags byte differs from the content");
        let _ = d.value_parts();
    }
    if let Ok((descriptor, tag)) = split_header(data) {
        assert_eq!(descriptor.len() + tag.len(), data.len());
        let _ = Descriptor::decode(descriptor);
    }
}

//! Host side of the guest channel: framing, bounded session driver, confined artifact unpacking.

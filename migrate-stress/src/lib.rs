//! QEMU migrate→cancel stress executor (being written).

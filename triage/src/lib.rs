//! Kernel log triage (being written).

//! Rare-event statistics (being written).

//! What every stateful row's state machine has in common.
//!
//! Jobs, boots, builds, regressions and bisections each have a closed set
//! of states and the edges between them (`can_move_to`). Their owners write
//! every state change as a guarded update, `… WHERE state = ANY(sources)`,
//! with the sources taken from the machine, so that a transition the
//! machine lacks cannot happen in the database either, and a row somebody
//! else moved first is left alone.

/// A closed set of states with its edges.
pub trait StateMachine: Copy + Eq + std::fmt::Debug + 'static {
    const ALL: &'static [Self];

    /// The state as stored in the database.
    fn as_str(self) -> &'static str;

    /// Whether `self → to` is an edge.
    fn can_move_to(self, to: Self) -> bool;

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|x| x.as_str() == s)
    }

    /// Every state `to` can be reached from, for `state = ANY(...)` guards.
    /// (Owned strings: what a checked query's `text[]` parameter takes.)
    fn sources_of(to: Self) -> Vec<String> {
        Self::ALL
            .iter()
            .copied()
            .filter(|from| from.can_move_to(to))
            .map(|s| s.as_str().to_owned())
            .collect()
    }

    /// Those of `from` that have an edge to `to`. An edge the machine lacks
    /// is a bug in the caller: loud in debug builds, never written.
    fn sources_among(from: &[Self], to: Self) -> Vec<String> {
        from.iter()
            .copied()
            .filter(|f| {
                debug_assert!(f.can_move_to(to), "{f:?} -> {to:?} is no edge");
                f.can_move_to(to)
            })
            .map(|s| s.as_str().to_owned())
            .collect()
    }
}

/// Checks the properties every machine must have: names round-trip, and
/// no state moves to itself. Used by each machine's unit tests.
#[cfg(test)]
pub fn assert_well_formed<S: StateMachine>() {
    for s in S::ALL {
        assert_eq!(S::parse(s.as_str()), Some(*s));
        assert!(!s.can_move_to(*s), "{s:?} moves to itself");
    }
    assert_eq!(S::parse("no such state"), None);
}

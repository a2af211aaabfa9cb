//! What a delivery attempt counts as, and the counts kept per
//! (integration, product): the same three kinds in the metrics, the traffic
//! book and the api's history.

/// What an attempt counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    Success,
    Error,
    Skipped,
}

impl OutcomeKind {
    /// In the order of their discriminants.
    pub const ALL: [OutcomeKind; 3] = [
        OutcomeKind::Success,
        OutcomeKind::Error,
        OutcomeKind::Skipped,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::Error => "error",
            OutcomeKind::Skipped => "skipped",
        }
    }
}

/// An integration id and the product of the event (`None` for sandbox
/// deliveries of non-product devices): what counts are kept per.
pub type CountKey = (std::sync::Arc<str>, Option<u32>);

/// Counts of one (integration, product).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub success: u64,
    pub error: u64,
    pub skipped: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.success += other.success;
        self.error += other.error;
        self.skipped += other.skipped;
    }
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.success + self.error + self.skipped
    }

    pub fn add(&mut self, kind: OutcomeKind) {
        match kind {
            OutcomeKind::Success => self.success += 1,
            OutcomeKind::Error => self.error += 1,
            OutcomeKind::Skipped => self.skipped += 1,
        }
    }
}

//! Runner labels, compared case-insensitively as GitHub compares them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A set of labels. Keeps the spelling it was given (for display and for
/// registering runners) but compares, deduplicates and sorts ignoring ASCII
/// case, because GitHub matches `runs-on` labels that way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct Labels(Vec<String>);

impl Labels {
    pub fn new<I, S>(labels: I) -> Labels
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut labels: Vec<String> = labels.into_iter().map(Into::into).collect();
        labels.sort_by_key(|l| l.to_ascii_lowercase());
        labels.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        Labels(labels)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, label: &str) -> bool {
        self.0.iter().any(|l| l.eq_ignore_ascii_case(label))
    }

    /// True when every label of `other` is in `self`: a runner with labels
    /// `self` can take a job that asks for `other`.
    pub fn is_superset_of(&self, other: &Labels) -> bool {
        other.iter().all(|l| self.contains(l))
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Labels) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

impl Eq for Labels {}

impl From<Vec<String>> for Labels {
    fn from(labels: Vec<String>) -> Labels {
        Labels::new(labels)
    }
}

impl From<Labels> for Vec<String> {
    fn from(labels: Labels) -> Vec<String> {
        labels.0
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.0.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superset_ignores_case_and_order() {
        let runner = Labels::new(["self-hosted", "Linux", "X64"]);
        assert!(runner.is_superset_of(&Labels::new(["linux", "self-hosted"])));
        assert!(runner.is_superset_of(&Labels::default()));
        assert!(!runner.is_superset_of(&Labels::new(["linux", "gpu"])));
        assert_eq!(Labels::new(["B", "a", "b"]), Labels::new(["a", "b"]));
        assert_eq!(Labels::new(["B", "a"]).to_string(), "[a, B]");
    }
}

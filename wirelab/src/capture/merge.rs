//! The frames of every CPU's ring, oldest first.
//!
//! Each CPU's ring gives its frames in the order its programs output them, which is their
//! time order but for a program preempted between its timestamp and its output (a tc
//! program in process context, on a preemptible kernel). So the frames wait in one queue
//! per CPU, kept in order (the rare frame older than its queue's last is put in its place),
//! and the oldest of the queues' first frames goes next: a merge, a few comparisons per
//! frame. One heap of every waiting frame (tens of thousands at a high rate) cost a third of
//! the writer's time, moving each frame through its levels.
use std::collections::VecDeque;

/// Items of several sources (CPUs), each source's queue in order; [`Merge::pop_if`] gives
/// the least of all.
pub(super) struct Merge<T> {
    queues: Vec<(u32, VecDeque<T>)>,
}

impl<T: Ord> Default for Merge<T> {
    fn default() -> Self {
        Self { queues: vec![] }
    }
}

impl<T: Ord> Merge<T> {
    /// Queue `items` from `source` (a drain of its ring): each at the back, or in its place
    /// if it is older than the back.
    pub(super) fn extend(&mut self, source: u32, items: impl IntoIterator<Item = T>) {
        let i = match self.queues.iter().position(|(s, _)| *s == source) {
            Some(i) => i,
            None => {
                self.queues.push((source, VecDeque::new()));
                self.queues.len() - 1
            }
        };
        let q = &mut self.queues[i].1;
        for item in items {
            if q.back().is_some_and(|b| *b > item) {
                let at = q.partition_point(|x| *x <= item);
                q.insert(at, item);
            } else {
                q.push_back(item);
            }
        }
    }

    /// The queue whose first item is the least of all, if any item waits.
    fn least(&self) -> Option<usize> {
        self.queues
            .iter()
            .enumerate()
            .filter_map(|(i, (_, q))| q.front().map(|f| (f, i)))
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, i)| i)
    }

    /// The least item of all, if `ready` says it may go.
    pub(super) fn pop_if(&mut self, ready: impl FnOnce(&T) -> bool) -> Option<T> {
        let i = self.least()?;
        let q = &mut self.queues[i].1;
        if q.front().is_some_and(ready) {
            q.pop_front()
        } else {
            None
        }
    }

    /// The least item of all.
    pub(super) fn pop(&mut self) -> Option<T> {
        self.pop_if(|_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_merge_oldest_first_and_a_late_item_takes_its_place() {
        let mut m = Merge::default();
        m.extend(0, [1, 4, 6]);
        m.extend(1, [2, 3]);
        m.extend(2, [0]);
        // Source 0 gets one older than its last (a preempted program): it goes in its place.
        m.extend(0, [5]);
        m.extend(1, [3]);
        assert_eq!(m.pop_if(|x| *x <= 2), Some(0));
        assert_eq!(m.pop_if(|x| *x <= 2), Some(1));
        assert_eq!(m.pop_if(|x| *x <= 2), Some(2));
        assert_eq!(m.pop_if(|x| *x <= 2), None, "3 is not ready");
        let rest: Vec<_> = std::iter::from_fn(|| m.pop()).collect();
        assert_eq!(rest, [3, 3, 4, 5, 6]);
        assert_eq!(m.pop(), None);
    }
}

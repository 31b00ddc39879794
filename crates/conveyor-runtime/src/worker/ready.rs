//! The queue of jobs ready to start, and the order in which a worker's topics get its slots.
//!
//! Without priorities it is one FIFO queue. With [`Priorities`], each topic has its own queue;
//! `weighted` hands out slots by smooth weighted round-robin (nginx's algorithm: with weights
//! `critical=6, default=3, low=1`, ten starts take 6, 3 and 1 from the three queues when all
//! have work, interleaved), so a low-priority backlog never starves the others and is never
//! starved itself; `strict` always takes the highest-weight queue that has work first. A topic
//! without a weight gets weight 1. Order within a topic (and so per key) is FIFO either way.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// How a worker with several topics orders their jobs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Priorities {
    /// Weight per topic (at least 1; a topic without one has 1).
    pub weights: HashMap<String, u32>,
    /// Highest weight first instead of weighted round-robin.
    #[serde(default)]
    pub strict: bool,
}

impl Priorities {
    /// Weighted round-robin over these `(topic, weight)` pairs.
    pub fn weighted(weights: impl IntoIterator<Item = (impl Into<String>, u32)>) -> Self {
        Priorities {
            weights: weights
                .into_iter()
                .map(|(t, w)| (t.into(), w.max(1)))
                .collect(),
            strict: false,
        }
    }

    /// Highest weight first.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// The weight of `topic`.
    pub fn weight(&self, topic: &str) -> u32 {
        self.weights.get(topic).copied().unwrap_or(1).max(1)
    }
}

/// Something queued under a topic.
pub(crate) trait Topical {
    fn topic(&self) -> &str;
}

struct Lane<T> {
    weight: i64,
    current: i64,
    queue: VecDeque<T>,
}

/// See the [module docs](self).
pub(crate) struct ReadyQueue<T> {
    priorities: Option<Priorities>,
    /// One lane per topic, in order of first use (a single lane without priorities).
    lanes: Vec<Lane<T>>,
    index: HashMap<String, usize>,
    len: usize,
}

impl<T: Topical> ReadyQueue<T> {
    pub(crate) fn new(priorities: Option<Priorities>) -> Self {
        ReadyQueue {
            priorities,
            lanes: Vec::new(),
            index: HashMap::new(),
            len: 0,
        }
    }

    fn lane(&mut self, topic: &str) -> &mut Lane<T> {
        let key = match &self.priorities {
            Some(_) => topic,
            None => "",
        };
        let i = match self.index.get(key) {
            Some(i) => *i,
            None => {
                let weight = self.priorities.as_ref().map_or(1, |p| p.weight(topic));
                self.lanes.push(Lane {
                    weight: i64::from(weight),
                    current: 0,
                    queue: VecDeque::new(),
                });
                self.index.insert(key.to_owned(), self.lanes.len() - 1);
                self.lanes.len() - 1
            }
        };
        &mut self.lanes[i]
    }

    pub(crate) fn push_back(&mut self, t: T) {
        let topic = t.topic().to_owned();
        self.lane(&topic).queue.push_back(t);
        self.len += 1;
    }

    pub(crate) fn push_front(&mut self, t: T) {
        let topic = t.topic().to_owned();
        self.lane(&topic).queue.push_front(t);
        self.len += 1;
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let strict = self.priorities.as_ref().is_some_and(|p| p.strict);
        let busy = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.queue.is_empty());
        let pick = if strict {
            busy.max_by_key(|(i, l)| (l.weight, std::cmp::Reverse(*i)))
                .map(|(i, _)| i)
        } else {
            // smooth weighted round-robin over the lanes that have work
            let total: i64 = busy.clone().map(|(_, l)| l.weight).sum();
            let ids: Vec<usize> = busy.map(|(i, _)| i).collect();
            for &i in &ids {
                let l = &mut self.lanes[i];
                l.current += l.weight;
            }
            let best = ids
                .iter()
                .copied()
                .max_by_key(|i| (self.lanes[*i].current, std::cmp::Reverse(*i)));
            if let Some(b) = best {
                self.lanes[b].current -= total;
            }
            best
        }?;
        self.len -= 1;
        self.lanes[pick].queue.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn clear(&mut self) {
        for l in &mut self.lanes {
            l.queue.clear();
            l.current = 0;
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct J(&'static str, usize);
    impl Topical for J {
        fn topic(&self) -> &str {
            self.0
        }
    }

    fn fill(q: &mut ReadyQueue<J>, n: usize) {
        for i in 0..n {
            for t in ["low", "default", "critical"] {
                q.push_back(J(t, i));
            }
        }
    }

    #[test]
    fn weighted_round_robin_gives_each_topic_its_share_and_keeps_fifo() {
        let p = Priorities::weighted([("critical", 6), ("default", 3), ("low", 1)]);
        let mut q = ReadyQueue::new(Some(p));
        fill(&mut q, 100);
        let first: Vec<J> = (0..100).map(|_| q.pop_front().unwrap()).collect();
        let count = |t: &str| first.iter().filter(|j| j.0 == t).count();
        assert_eq!(
            (count("critical"), count("default"), count("low")),
            (60, 30, 10)
        );
        // FIFO within a topic
        let lows: Vec<usize> = first.iter().filter(|j| j.0 == "low").map(|j| j.1).collect();
        assert_eq!(lows, (0..10).collect::<Vec<_>>());
        // interleaved, not in runs: low appears within the first ten starts
        assert!(first[..10].iter().any(|j| j.0 == "low"));
        assert_eq!(q.len(), 200);
    }

    #[test]
    fn strict_takes_the_highest_weight_first_and_an_idle_topic_costs_nothing() {
        let p = Priorities::weighted([("critical", 6), ("default", 3), ("low", 1)]).strict();
        let mut q = ReadyQueue::new(Some(p));
        fill(&mut q, 3);
        let order: Vec<&str> = (0..9).map(|_| q.pop_front().unwrap().0).collect();
        assert_eq!(order[..3], ["critical"; 3]);
        assert_eq!(order[3..6], ["default"; 3]);
        assert_eq!(order[6..], ["low"; 3]);
        let mut q = ReadyQueue::new(Some(Priorities::weighted([("critical", 6), ("low", 1)])));
        for i in 0..5 {
            q.push_back(J("low", i));
        }
        // only low has work: it gets every slot
        assert!((0..5).all(|_| q.pop_front().unwrap().0 == "low"));
        assert!(q.pop_front().is_none());
    }

    #[test]
    fn without_priorities_it_is_one_fifo_queue() {
        let mut q = ReadyQueue::new(None);
        q.push_back(J("b", 0));
        q.push_back(J("a", 1));
        q.push_front(J("c", 2));
        let order: Vec<usize> = (0..3).map(|_| q.pop_front().unwrap().1).collect();
        assert_eq!(order, [2, 0, 1]);
    }
}

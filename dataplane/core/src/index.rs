//! A token trie from patterns to per-pattern slots.
//!
//! [`SubjectIndex<S>`] stores one slot `S` per distinct pattern. Matching a
//! subject visits the slot of every pattern that matches it, each exactly once,
//! in a walk whose cost depends on the subject's token count and the number of
//! wildcard branches, not on the number of patterns stored.
//!
//! Node layout: literal children by token, one `*` child, the slot of the
//! pattern ending here, and the slot of the pattern `<prefix>.>` ending here.
//! Invariant: every node on the index either holds a slot or leads to one;
//! [`SubjectIndex::remove_if_empty`] prunes nodes that no longer do.

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::subject::{MAX_TOKENS, Pattern, SubjectRef, split_token};

/// What the index needs to know about a slot: whether it can be dropped.
pub trait Slot: Default {
    /// True when the slot holds nothing and its pattern can be forgotten.
    fn is_empty(&self) -> bool;
}

#[derive(Debug)]
struct Node<S> {
    literal: FxHashMap<Box<[u8]>, Node<S>>,
    star: Option<Box<Node<S>>>,
    here: Option<S>,
    rest: Option<S>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Self {
            literal: FxHashMap::default(),
            star: None,
            here: None,
            rest: None,
        }
    }
}

impl<S> Node<S> {
    fn is_dead(&self) -> bool {
        self.literal.is_empty() && self.star.is_none() && self.here.is_none() && self.rest.is_none()
    }
}

/// Patterns to slots; see the module docs.
#[derive(Debug)]
pub struct SubjectIndex<S> {
    root: Node<S>,
    patterns: usize,
}

impl<S> Default for SubjectIndex<S> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            patterns: 0,
        }
    }
}

impl<S: Slot> SubjectIndex<S> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct patterns held.
    pub fn len(&self) -> usize {
        self.patterns
    }

    /// True when no pattern is held.
    pub fn is_empty(&self) -> bool {
        self.patterns == 0
    }

    /// The slot for `pattern`, created empty if absent. Callers that leave it
    /// empty must call [`remove_if_empty`](Self::remove_if_empty).
    pub fn slot_mut(&mut self, pattern: &Pattern) -> &mut S {
        let mut node = &mut self.root;
        let mut tokens = pattern.tokens().peekable();
        while let Some(t) = tokens.next() {
            let last = tokens.peek().is_none();
            match t {
                b">" if last => {
                    if node.rest.is_none() {
                        self.patterns += 1;
                    }
                    return node.rest.get_or_insert_with(S::default);
                }
                b"*" => node = node.star.get_or_insert_with(Box::default),
                _ => node = node.literal.entry(t.into()).or_default(),
            }
        }
        if node.here.is_none() {
            self.patterns += 1;
        }
        node.here.get_or_insert_with(S::default)
    }

    /// The slot for `pattern`, if any.
    pub fn get(&self, pattern: &Pattern) -> Option<&S> {
        let mut node = &self.root;
        let mut tokens = pattern.tokens().peekable();
        while let Some(t) = tokens.next() {
            let last = tokens.peek().is_none();
            match t {
                b">" if last => return node.rest.as_ref(),
                b"*" => node = node.star.as_deref()?,
                _ => node = node.literal.get(t)?,
            }
        }
        node.here.as_ref()
    }

    /// The slot for `pattern`, if any, for in-place changes.
    pub fn get_mut(&mut self, pattern: &Pattern) -> Option<&mut S> {
        let mut node = &mut self.root;
        let mut tokens = pattern.tokens().peekable();
        while let Some(t) = tokens.next() {
            let last = tokens.peek().is_none();
            match t {
                b">" if last => return node.rest.as_mut(),
                b"*" => node = node.star.as_deref_mut()?,
                _ => node = node.literal.get_mut(t)?,
            }
        }
        node.here.as_mut()
    }

    /// Drops `pattern`'s slot if it is empty, and any nodes left leading
    /// nowhere. Returns whether the slot was dropped.
    pub fn remove_if_empty(&mut self, pattern: &Pattern) -> bool {
        let tokens: SmallVec<[&[u8]; MAX_TOKENS]> = pattern.tokens().collect();
        let removed = Self::prune(&mut self.root, &tokens);
        if removed {
            self.patterns -= 1;
        }
        removed
    }

    fn prune(node: &mut Node<S>, tokens: &[&[u8]]) -> bool {
        match tokens {
            [] => take_if_empty(&mut node.here),
            [b">"] => take_if_empty(&mut node.rest),
            [b"*", rest @ ..] => {
                let Some(child) = node.star.as_deref_mut() else {
                    return false;
                };
                let removed = Self::prune(child, rest);
                if child.is_dead() {
                    node.star = None;
                }
                removed
            }
            [t, rest @ ..] => {
                let Some(child) = node.literal.get_mut(*t) else {
                    return false;
                };
                let removed = Self::prune(child, rest);
                if child.is_dead() {
                    node.literal.remove(*t);
                }
                removed
            }
        }
    }

    /// Calls `f` with the slot of every pattern matching `subject`, each once.
    pub fn for_each_match<'s>(&self, subject: impl Into<SubjectRef<'s>>, mut f: impl FnMut(&S)) {
        Self::walk(&self.root, Some(subject.into().as_bytes()), &mut f);
    }

    /// Visits the slots under `node` matching `rest` (the subject's tokens
    /// not consumed yet, `None` past the last). Tokens are split off as the
    /// walk descends; nothing is collected.
    fn walk(node: &Node<S>, rest: Option<&[u8]>, f: &mut impl FnMut(&S)) {
        match rest {
            None => {
                if let Some(s) = &node.here {
                    f(s);
                }
            }
            Some(rest) => {
                if let Some(s) = &node.rest {
                    f(s);
                }
                let (t, after) = split_token(rest);
                if let Some(child) = node.literal.get(t) {
                    Self::walk(child, after, f);
                }
                if let Some(child) = node.star.as_deref() {
                    Self::walk(child, after, f);
                }
            }
        }
    }
}

fn take_if_empty<S: Slot>(slot: &mut Option<S>) -> bool {
    if slot.as_ref().is_some_and(Slot::is_empty) {
        *slot = None;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::subject::Subject;

    #[derive(Default, Debug)]
    struct Ids(Vec<u32>);
    impl Slot for Ids {
        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn p(s: &str) -> Pattern {
        Pattern::parse(Bytes::copy_from_slice(s.as_bytes()), 256).unwrap()
    }
    fn s(s: &str) -> Subject {
        Subject::parse(Bytes::copy_from_slice(s.as_bytes()), 256).unwrap()
    }
    fn matches(idx: &SubjectIndex<Ids>, subj: &str) -> Vec<u32> {
        let mut out = Vec::new();
        idx.for_each_match(&s(subj), |ids| out.extend(&ids.0));
        out.sort_unstable();
        out
    }

    #[test]
    fn literal_and_wildcards() {
        let mut idx = SubjectIndex::<Ids>::new();
        for (i, pat) in ["a.b", "a.*", "a.>", ">", "*.b", "a.b.c"]
            .iter()
            .enumerate()
        {
            idx.slot_mut(&p(pat)).0.push(i as u32);
        }
        assert_eq!(idx.len(), 6);
        assert_eq!(matches(&idx, "a.b"), vec![0, 1, 2, 3, 4]);
        assert_eq!(matches(&idx, "a.b.c"), vec![2, 3, 5]);
        assert_eq!(matches(&idx, "a"), vec![3]);
        assert_eq!(matches(&idx, "x.b"), vec![3, 4]);
    }

    #[test]
    fn pruning_leaves_no_dead_nodes() {
        let mut idx = SubjectIndex::<Ids>::new();
        idx.slot_mut(&p("a.b.c")).0.push(1);
        idx.slot_mut(&p("a.*.>")).0.push(2);
        idx.get_mut(&p("a.b.c")).unwrap().0.clear();
        assert!(idx.remove_if_empty(&p("a.b.c")));
        assert!(!idx.remove_if_empty(&p("a.*.>")), "non-empty slots stay");
        idx.get_mut(&p("a.*.>")).unwrap().0.clear();
        assert!(idx.remove_if_empty(&p("a.*.>")));
        assert!(idx.is_empty());
        assert!(idx.root.is_dead());
        assert!(!idx.remove_if_empty(&p("never.there")));
    }
}

//! Union copy-collect: the tuples matching any of several templates, in one pass.
//!
//! Each template's candidates come from the index (one posting list per arity and first field,
//! or every tuple of an arity for a template whose first field is not a literal). Templates that
//! share a posting share its scan; the scans are merged by id, each id once, so the answer is in
//! id order and stops at the query's limit like [`crate::Space::rd_all`]'s. A timeline over a
//! hundred followed users is one scan of the newest posts, not a hundred.

use std::collections::BinaryHeap;

use crate::index::Posting;
use crate::space::Query;
use crate::{Template, TupleId};

/// The most templates one union copy-collect takes (a request that names more is refused).
pub const MAX_TEMPLATES: usize = 256;

/// The distinct postings of `templates` (compared by address), in template order.
pub(crate) fn distinct<'a>(
    postings: impl Iterator<Item = Option<&'a Posting>>,
) -> Vec<&'a Posting> {
    let mut out: Vec<&Posting> = Vec::new();
    for posting in postings.flatten() {
        if !out.iter().any(|p| std::ptr::eq(*p, posting)) {
            out.push(posting);
        }
    }
    out
}

/// The candidate ids of `postings` within the query's bounds, merged in the query's order, each
/// once (ids may be dead: the caller looks each one up).
pub(crate) fn merged<'a>(
    postings: &[&'a Posting],
    query: &Query,
) -> impl Iterator<Item = TupleId> + 'a {
    let newest_first = query.newest_first;
    // The heap is a max-heap: order keys so the next id in the query's order is the greatest.
    let key = move |id: TupleId| if newest_first { id } else { TupleId::MAX - id };
    let mut scans: Vec<Box<dyn Iterator<Item = TupleId> + 'a>> = postings
        .iter()
        .map(|p| -> Box<dyn Iterator<Item = TupleId> + 'a> {
            if newest_first {
                Box::new(p.descending(query.after, query.before))
            } else {
                Box::new(p.ascending(query.after, query.before))
            }
        })
        .collect();
    let mut heap = BinaryHeap::with_capacity(scans.len());
    for (i, scan) in scans.iter_mut().enumerate() {
        if let Some(id) = scan.next() {
            heap.push((key(id), i));
        }
    }
    let mut last = None;
    std::iter::from_fn(move || {
        loop {
            let (k, i) = heap.pop()?;
            if let Some(id) = scans[i].next() {
                heap.push((key(id), i));
            }
            if last != Some(k) {
                last = Some(k);
                return Some(if newest_first { k } else { TupleId::MAX - k });
            }
        }
    })
}

/// Whether a tuple matches any of `templates`.
pub(crate) fn any_matches(templates: &[Template], tuple: &crate::Tuple) -> bool {
    templates.iter().any(|t| t.matches(tuple))
}

/// A join for a union copy-collect: for each tuple matching `source`, `target` with its field
/// `target_field` set to that tuple's field `source_field` (a literal). A timeline is one:
/// `("follow", me, ?str)` joined on field 2 into the author field (1) of the post template.
#[derive(Clone, Debug, PartialEq)]
pub struct Join {
    /// The tuples whose field gives each template.
    pub source: Template,
    /// Which field of a source tuple.
    pub source_field: usize,
    /// The template each source tuple fills in.
    pub target: Template,
    /// Which field of the target it fills.
    pub target_field: usize,
}

/// Why a join cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// A field index outside its template.
    #[error("the join's {which} field {field} is outside its template of {arity} fields")]
    NoField {
        /// `source` or `target`.
        which: &'static str,
        /// The index given.
        field: usize,
        /// The template's arity.
        arity: usize,
    },
    /// More source tuples than [`MAX_TEMPLATES`].
    #[error("the join's source matches more than {MAX_TEMPLATES} tuples")]
    TooMany,
}

impl Join {
    /// Checks that both fields exist.
    pub fn check(&self) -> Result<(), JoinError> {
        for (which, field, arity) in [
            ("source", self.source_field, self.source.arity()),
            ("target", self.target_field, self.target.arity()),
        ] {
            if field >= arity {
                return Err(JoinError::NoField {
                    which,
                    field,
                    arity,
                });
            }
        }
        Ok(())
    }

    /// The templates the join yields for these source tuples (at most [`MAX_TEMPLATES`]; more
    /// is [`JoinError::TooMany`]). A source tuple too short for the field yields nothing.
    pub fn templates<'a>(
        &self,
        sources: impl IntoIterator<Item = &'a crate::Tuple>,
    ) -> Result<Vec<Template>, JoinError> {
        self.check()?;
        let mut out = Vec::new();
        for tuple in sources {
            if out.len() == MAX_TEMPLATES {
                return Err(JoinError::TooMany);
            }
            let Some(value) = tuple.fields().get(self.source_field) else {
                continue;
            };
            let mut fields = self.target.fields().to_vec();
            fields[self.target_field] = crate::Field::Literal(value.clone());
            out.push(Template::new(fields));
        }
        Ok(out)
    }
}

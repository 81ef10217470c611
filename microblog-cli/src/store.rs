//! The tuple operations the microblog needs, as a trait: the cluster client implements it, and so
//! does an in-memory [`MemoryStore`], so the microblog's logic is unit-tested without a cluster.

use raftnode::client::{Client, ClientError, Entry};
use raftnode::identity::Identity;
use tuplespace::union::Join;
use tuplespace::{Query, Space, Template, Tuple, TupleId};

/// The most tuples one copy-collect returns (the server's cap; [`MemoryStore`] applies it too).
pub const MAX_LIST: usize = 10_000;

/// A tuple space the microblog can use.
///
/// The CLI awaits on a single task, so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// Adds a tuple; its id.
    async fn out(&mut self, tuple: &Tuple) -> Result<TupleId, ClientError>;
    /// Adds `tuple` only if nothing matches `template`; its id if it did.
    async fn cas(
        &mut self,
        template: &Template,
        tuple: &Tuple,
    ) -> Result<Option<TupleId>, ClientError>;
    /// The oldest match with an id above `after`, left in place.
    async fn rdp(
        &mut self,
        template: &Template,
        after: TupleId,
    ) -> Result<Option<Entry>, ClientError>;
    /// Removes and returns the oldest match.
    async fn inp(&mut self, template: &Template) -> Result<Option<Entry>, ClientError>;
    /// Copy-collect within the query (at most [`MAX_LIST`]).
    async fn rd_all(
        &mut self,
        template: &Template,
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError>;
    /// Union copy-collect: matches of any of `templates` (1 to
    /// [`tuplespace::union::MAX_TEMPLATES`]) within the query, each once (at most [`MAX_LIST`]).
    async fn rd_any(
        &mut self,
        templates: &[Template],
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError>;
    /// Union copy-collect of `templates` and the templates `join` yields, in one consistent
    /// read (a join source over [`tuplespace::union::MAX_TEMPLATES`] tuples:
    /// [`ClientError::OverLimit`]).
    async fn rd_join(
        &mut self,
        templates: &[Template],
        join: &Join,
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError>;
    /// The tuple with this id.
    async fn read_id(&mut self, id: TupleId) -> Result<Option<Tuple>, ClientError>;
    /// Removes the tuple with this id.
    async fn take_id(&mut self, id: TupleId) -> Result<Option<Tuple>, ClientError>;
    /// How many match.
    async fn count(&mut self, template: &Template) -> Result<u64, ClientError>;
    /// Who signs this store's writes, if anyone.
    fn identity(&self) -> Option<&Identity>;
    /// Registers user `name` with [`Store::identity`]'s key.
    async fn register(&mut self, name: &str) -> Result<(), ClientError>;
}

impl Store for Client {
    async fn out(&mut self, tuple: &Tuple) -> Result<TupleId, ClientError> {
        Client::out(self, tuple).await
    }
    async fn cas(
        &mut self,
        template: &Template,
        tuple: &Tuple,
    ) -> Result<Option<TupleId>, ClientError> {
        Client::cas(self, template, tuple, None).await
    }
    async fn rdp(
        &mut self,
        template: &Template,
        after: TupleId,
    ) -> Result<Option<Entry>, ClientError> {
        Client::rdp(self, template, after).await
    }
    async fn inp(&mut self, template: &Template) -> Result<Option<Entry>, ClientError> {
        Client::inp(self, template).await
    }
    async fn rd_all(
        &mut self,
        template: &Template,
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError> {
        Client::rd_all(self, template, query).await
    }
    async fn rd_any(
        &mut self,
        templates: &[Template],
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError> {
        Client::rd_any(self, templates, query).await
    }
    async fn rd_join(
        &mut self,
        templates: &[Template],
        join: &Join,
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError> {
        Client::rd_join(self, templates, join, query).await
    }
    async fn read_id(&mut self, id: TupleId) -> Result<Option<Tuple>, ClientError> {
        Client::read_id(self, id).await
    }
    async fn take_id(&mut self, id: TupleId) -> Result<Option<Tuple>, ClientError> {
        Client::take_id(self, id).await
    }
    async fn count(&mut self, template: &Template) -> Result<u64, ClientError> {
        Client::count(self, template).await
    }
    fn identity(&self) -> Option<&Identity> {
        Client::identity(self)
    }
    async fn register(&mut self, name: &str) -> Result<(), ClientError> {
        match Client::identity(self) {
            Some(me) if me.user() == name => Client::register(self).await.map(drop),
            _ => Err(ClientError::Unauthenticated(format!(
                "registering {name:?} needs {name:?}'s key"
            ))),
        }
    }
}

/// A store in this process's memory: a bare [`Space`], for tests and experiments.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// The space itself.
    pub space: Space,
    /// Who writes (registered by [`Store::register`] as the cluster would).
    pub identity: Option<Identity>,
}

impl Store for MemoryStore {
    async fn out(&mut self, tuple: &Tuple) -> Result<TupleId, ClientError> {
        Ok(self.space.out(tuple.clone(), None).id)
    }
    async fn cas(
        &mut self,
        template: &Template,
        tuple: &Tuple,
    ) -> Result<Option<TupleId>, ClientError> {
        Ok(self.space.cas(template, tuple.clone(), None).map(|o| o.id))
    }
    async fn rdp(
        &mut self,
        template: &Template,
        after: TupleId,
    ) -> Result<Option<Entry>, ClientError> {
        Ok(self
            .space
            .rdp(template, after)
            .map(|(id, t)| (id, t.clone())))
    }
    async fn inp(&mut self, template: &Template) -> Result<Option<Entry>, ClientError> {
        Ok(self.space.inp(template))
    }
    async fn rd_all(
        &mut self,
        template: &Template,
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError> {
        self.rd_any(std::slice::from_ref(template), query).await
    }
    async fn rd_any(
        &mut self,
        templates: &[Template],
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError> {
        Ok(self
            .space
            .rd_any(templates, &capped(query))
            .into_iter()
            .map(|(id, t)| (id, t.clone()))
            .collect())
    }
    async fn rd_join(
        &mut self,
        templates: &[Template],
        join: &Join,
        query: &Query,
    ) -> Result<Vec<Entry>, ClientError> {
        match self.space.rd_join(templates, join, &capped(query)) {
            Ok(found) => Ok(found.into_iter().map(|(id, t)| (id, t.clone())).collect()),
            Err(e) => Err(ClientError::OverLimit(e.to_string())),
        }
    }
    async fn read_id(&mut self, id: TupleId) -> Result<Option<Tuple>, ClientError> {
        Ok(self.space.read_id(id).cloned())
    }
    async fn take_id(&mut self, id: TupleId) -> Result<Option<Tuple>, ClientError> {
        Ok(self.space.take_id(id))
    }
    async fn count(&mut self, template: &Template) -> Result<u64, ClientError> {
        Ok(self.space.count(template) as u64)
    }
    fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }
    async fn register(&mut self, name: &str) -> Result<(), ClientError> {
        // Without an identity (tests of the microblog's logic), a user has an empty key.
        let key = self
            .identity
            .as_ref()
            .map_or_else(Vec::new, |me| me.public_key().to_vec());
        let entry = tuplespace::tuple![
            crate::model::USER,
            name,
            tuplespace::Value::Bytes(key.into_boxed_slice()),
        ];
        let template = Template::literal(&entry);
        self.space.cas(&template, entry, None);
        Ok(())
    }
}

/// A copy-collect's query as the cluster caps it: a limit of 0 or over [`MAX_LIST`] is
/// [`MAX_LIST`].
fn capped(query: &Query) -> Query {
    Query {
        limit: if query.limit == 0 {
            MAX_LIST
        } else {
            query.limit.min(MAX_LIST)
        },
        ..*query
    }
}

/// Every match with an id above `after`, oldest first, in as many copy-collects as it takes.
pub async fn rd_every<S: Store>(
    store: &mut S,
    template: &Template,
    mut after: TupleId,
) -> Result<Vec<Entry>, ClientError> {
    let mut all = Vec::new();
    loop {
        let page = store
            .rd_all(
                template,
                &Query {
                    limit: MAX_LIST,
                    after,
                    ..Query::default()
                },
            )
            .await?;
        let full = page.len() >= MAX_LIST;
        if let Some(&(last, _)) = page.last() {
            after = last;
        }
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

//! Hand-written SQL that Postgres parses and plans once per connection.
//!
//! `diesel::sql_query` marks its statement as not cacheable, so every execution costs three
//! round trips (prepare an unnamed statement, bind and execute it, close it) and a fresh parse
//! and plan on the server. The statements of the call path (holds, claims) run thousands of
//! times a second, so they go through [`Prepared`] instead: the statement type is its own
//! `QueryId`, which lets diesel keep the prepared statement in the connection's cache and run
//! it again with one round trip.
//!
//! The SQL is written with `$1`, `$2`, ... as usual; a placeholder may appear several times.

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// One bound value of a [`Prepared`] statement.
pub(crate) trait Bind: Send + Sync {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Value<ST, T>(T, PhantomData<fn() -> ST>);

impl<ST, T> Bind for Value<ST, T>
where
    Pg: HasSqlType<ST>,
    T: ToSql<ST, Pg> + Send + Sync,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.0)
    }
}

/// A statement identified by the type `Tag`: every use of one tag must carry the same SQL.
pub(crate) struct Prepared<'a, Tag> {
    sql: &'static str,
    binds: Vec<Box<dyn Bind + 'a>>,
    tag: PhantomData<fn() -> Tag>,
}

impl<'a, Tag: 'static> Prepared<'a, Tag> {
    pub(crate) fn new(sql: &'static str) -> Self {
        Prepared {
            sql,
            binds: Vec::new(),
            tag: PhantomData,
        }
    }

    /// Binds the next placeholder (`$1` first).
    pub(crate) fn bind<ST: 'static, T>(mut self, value: T) -> Self
    where
        Pg: HasSqlType<ST>,
        T: ToSql<ST, Pg> + Send + Sync + 'a,
    {
        self.binds
            .push(Box::new(Value::<ST, T>(value, PhantomData)));
        self
    }
}

impl<Tag: 'static> QueryId for Prepared<'_, Tag> {
    type QueryId = Tag;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<Tag> Query for Prepared<'_, Tag> {
    type SqlType = Untyped;
}

impl<Tag> QueryFragment<Pg> for Prepared<'_, Tag> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Diesel numbers the binds itself in the order they are pushed, so each `$n` of the
        // text becomes a push of the n-th value (a repeated `$n` binds the value again).
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits == 0 {
                out.push_sql(&rest[..=at]);
                rest = &rest[at + 1..];
                continue;
            }
            out.push_sql(&rest[..at]);
            let index: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .map_err(|_| placeholder_error(self.sql))?;
            let bind = index
                .checked_sub(1)
                .and_then(|i| self.binds.get(i))
                .ok_or_else(|| placeholder_error(self.sql))?;
            bind.push(&mut out)?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

fn placeholder_error(sql: &str) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        format!("a placeholder has no bound value in: {sql}").into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::debug_query;
    use diesel::sql_types::{BigInt, Text};

    enum Example {}

    #[test]
    fn placeholders_become_binds_in_text_order_and_repeat() {
        let query = Prepared::<Example>::new("SELECT $2, $1 || 'x$', $2 WHERE a = $1")
            .bind::<Text, _>("a")
            .bind::<BigInt, _>(7_i64);
        let rendered = debug_query::<Pg, _>(&query).to_string();
        assert!(
            rendered.starts_with("SELECT $1, $2 || 'x$', $3 WHERE a = $4"),
            "{rendered}"
        );
        assert!(rendered.contains(r#"[7, "a", 7, "a"]"#), "{rendered}");
    }

    #[test]
    fn a_placeholder_without_a_value_is_an_error() {
        let query = Prepared::<Example>::new("SELECT $2").bind::<Text, _>("a");
        let mut sql = String::new();
        let result = QueryFragment::<Pg>::to_sql(
            &query,
            &mut <Pg as diesel::backend::Backend>::QueryBuilder::default(),
            &Pg,
        );
        sql.push_str(&format!("{result:?}"));
        assert!(sql.contains("no bound value"), "{sql}");
    }
}

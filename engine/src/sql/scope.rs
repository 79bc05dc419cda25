//! The names visible while binding: each column of the current plan's output with its table qualifier.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::closest;

#[derive(Debug, Clone)]
pub struct ScopeColumn {
    pub qualifier: Option<String>,
    /// Empty for columns that cannot be named (hidden helpers).
    pub name: String,
    pub ty: DataType,
    pub nullable: bool,
    /// The right copy of a USING column: found only by a qualified name, not expanded by `*`.
    pub using_duplicate: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub columns: Vec<ScopeColumn>,
}

pub enum Lookup {
    Found(usize),
    NotFound,
    Ambiguous,
}

impl Scope {
    pub fn from_schema(schema: &Schema, qualifier: Option<&str>) -> Scope {
        Scope {
            columns: schema
                .fields()
                .iter()
                .map(|f| ScopeColumn {
                    qualifier: qualifier.map(|q| q.to_ascii_lowercase()),
                    name: f.name().clone(),
                    ty: f.data_type().clone(),
                    nullable: f.is_nullable(),
                    using_duplicate: false,
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Concatenation, as a join's output.
    pub fn join(&self, right: &Scope) -> Scope {
        let mut columns = self.columns.clone();
        columns.extend(right.columns.iter().cloned());
        Scope { columns }
    }

    pub fn with_qualifier(mut self, qualifier: &str) -> Scope {
        for c in &mut self.columns {
            c.qualifier = Some(qualifier.to_ascii_lowercase());
        }
        self
    }

    pub fn lookup(&self, qualifier: Option<&str>, name: &str) -> Lookup {
        let matches = |c: &&ScopeColumn| {
            c.name.eq_ignore_ascii_case(name)
                && (qualifier.is_some() || !c.using_duplicate)
                && qualifier.is_none_or(|q| c.qualifier.as_deref().is_some_and(|cq| cq.eq_ignore_ascii_case(q)))
        };
        let mut found = self.columns.iter().enumerate().filter(|(_, c)| matches(c));
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Lookup::Found(i),
            (Some(_), Some(_)) => Lookup::Ambiguous,
            _ => Lookup::NotFound,
        }
    }

    pub fn suggest(&self, name: &str) -> Option<String> {
        closest(name, self.columns.iter().map(|c| c.name.as_str()).filter(|n| !n.is_empty())).map(str::to_string)
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns.iter().map(|c| Field::new(&c.name, c.ty.clone(), c.nullable)).collect::<Vec<_>>(),
        ))
    }
}

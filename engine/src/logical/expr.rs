//! Bound, typed expressions. Columns are positions in the input's schema; the binder has already
//! inserted every cast, so evaluation never has to coerce.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{DataType, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::functions::ScalarFunc;

/// A constant: a one-element array, so it carries its type and may be NULL.
#[derive(Clone)]
pub struct Scalar(pub ArrayRef);

impl Scalar {
    pub fn data_type(&self) -> &DataType {
        self.0.data_type()
    }

    pub fn is_null(&self) -> bool {
        self.0.is_null(0)
    }

    pub fn null(data_type: &DataType) -> Scalar {
        Scalar(arrow::array::new_null_array(data_type, 1))
    }

    pub fn boolean(v: bool) -> Scalar {
        Scalar(Arc::new(arrow::array::BooleanArray::from(vec![v])))
    }

    pub fn as_bool(&self) -> Option<bool> {
        self.0
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .filter(|a| a.is_valid(0))
            .map(|a| a.value(0))
    }
}

impl PartialEq for Scalar {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_data() == other.0.to_data()
    }
}

impl fmt::Debug for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_null() {
            return write!(f, "NULL");
        }
        let opts = FormatOptions::default();
        match ArrayFormatter::try_new(self.0.as_ref(), &opts) {
            Ok(fmt) => match self.data_type() {
                DataType::Utf8 | DataType::Date32 | DataType::Timestamp(..) => write!(f, "'{}'", fmt.value(0)),
                _ => write!(f, "{}", fmt.value(0)),
            },
            Err(_) => write!(f, "?"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    IntDiv,
    Mod,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
    /// `||`: string concatenation, NULL if either side is.
    Concat,
    IsDistinctFrom,
    IsNotDistinctFrom,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        use BinaryOp::*;
        matches!(self, Eq | NotEq | Lt | LtEq | Gt | GtEq | IsDistinctFrom | IsNotDistinctFrom)
    }

    pub fn is_arithmetic(self) -> bool {
        use BinaryOp::*;
        matches!(self, Add | Sub | Mul | Div | IntDiv | Mod)
    }

    /// The comparison that holds when the operands are swapped (`a < b` is `b > a`).
    pub fn swap(self) -> BinaryOp {
        use BinaryOp::*;
        match self {
            Lt => Gt,
            LtEq => GtEq,
            Gt => Lt,
            GtEq => LtEq,
            other => other,
        }
    }

    pub fn symbol(self) -> &'static str {
        use BinaryOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            IntDiv => "//",
            Mod => "%",
            Eq => "=",
            NotEq => "<>",
            Lt => "<",
            LtEq => "<=",
            Gt => ">",
            GtEq => ">=",
            And => "AND",
            Or => "OR",
            Concat => "||",
            IsDistinctFrom => "IS DISTINCT FROM",
            IsNotDistinctFrom => "IS NOT DISTINCT FROM",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The input's column at this position.
    Column(usize),
    Literal(Scalar),
    Binary { op: BinaryOp, left: Box<Expr>, right: Box<Expr> },
    Not(Box<Expr>),
    Negate(Box<Expr>),
    IsNull(Box<Expr>),
    IsNotNull(Box<Expr>),
    /// `safe`: TRY_CAST, NULL where the value does not convert.
    Cast { expr: Box<Expr>, to: DataType, safe: bool },
    /// Searched CASE: the first branch whose condition is true wins.
    Case { branches: Vec<(Expr, Expr)>, otherwise: Option<Box<Expr>> },
    Function { func: ScalarFunc, args: Vec<Expr>, ty: DataType },
    InList { expr: Box<Expr>, list: Vec<Expr>, negated: bool },
    Like { expr: Box<Expr>, pattern: Box<Expr>, negated: bool, case_insensitive: bool },
}

impl Expr {
    pub fn lit(s: Scalar) -> Expr {
        Expr::Literal(s)
    }

    pub fn binary(op: BinaryOp, left: Expr, right: Expr) -> Expr {
        Expr::Binary { op, left: Box::new(left), right: Box::new(right) }
    }

    pub fn and(self, other: Expr) -> Expr {
        Expr::binary(BinaryOp::And, self, other)
    }

    /// The type this expression evaluates to over rows of `input`.
    pub fn data_type(&self, input: &Schema) -> DataType {
        match self {
            Expr::Column(i) => input.field(*i).data_type().clone(),
            Expr::Literal(s) => s.data_type().clone(),
            Expr::Binary { op, left, right } => {
                if op.is_comparison() || matches!(op, BinaryOp::And | BinaryOp::Or) {
                    return DataType::Boolean;
                }
                crate::types::arithmetic_result(*op, &left.data_type(input), &right.data_type(input))
                    .unwrap_or(DataType::Null)
            }
            Expr::Not(_) | Expr::IsNull(_) | Expr::IsNotNull(_) | Expr::InList { .. } | Expr::Like { .. } => {
                DataType::Boolean
            }
            Expr::Negate(e) => e.data_type(input),
            Expr::Cast { to, .. } => to.clone(),
            Expr::Case { branches, otherwise } => branches
                .first()
                .map(|(_, v)| v.data_type(input))
                .or_else(|| otherwise.as_ref().map(|e| e.data_type(input)))
                .unwrap_or(DataType::Null),
            Expr::Function { ty, .. } => ty.clone(),
        }
    }

    pub fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Column(_) | Expr::Literal(_) => vec![],
            Expr::Binary { left, right, .. } => vec![left, right],
            Expr::Not(e) | Expr::Negate(e) | Expr::IsNull(e) | Expr::IsNotNull(e) => vec![e],
            Expr::Cast { expr, .. } => vec![expr],
            Expr::Case { branches, otherwise } => {
                let mut v: Vec<&Expr> = branches.iter().flat_map(|(c, r)| [c, r]).collect();
                v.extend(otherwise.as_deref());
                v
            }
            Expr::Function { args, .. } => args.iter().collect(),
            Expr::InList { expr, list, .. } => std::iter::once(expr.as_ref()).chain(list).collect(),
            Expr::Like { expr, pattern, .. } => vec![expr, pattern],
        }
    }

    /// Rebuilds this node with `f` applied to each direct child.
    pub fn map_children<E>(self, f: &mut dyn FnMut(Expr) -> Result<Expr, E>) -> Result<Expr, E> {
        let b = |e: Box<Expr>, f: &mut dyn FnMut(Expr) -> Result<Expr, E>| f(*e).map(Box::new);
        Ok(match self {
            Expr::Binary { op, left, right } => Expr::Binary { op, left: b(left, f)?, right: b(right, f)? },
            Expr::Not(e) => Expr::Not(b(e, f)?),
            Expr::Negate(e) => Expr::Negate(b(e, f)?),
            Expr::IsNull(e) => Expr::IsNull(b(e, f)?),
            Expr::IsNotNull(e) => Expr::IsNotNull(b(e, f)?),
            Expr::Cast { expr, to, safe } => Expr::Cast { expr: b(expr, f)?, to, safe },
            Expr::Case { branches, otherwise } => Expr::Case {
                branches: branches.into_iter().map(|(c, r)| Ok((f(c)?, f(r)?))).collect::<Result<_, E>>()?,
                otherwise: otherwise.map(|e| b(e, f)).transpose()?,
            },
            Expr::Function { func, args, ty } => {
                Expr::Function { func, args: args.into_iter().map(&mut *f).collect::<Result<_, E>>()?, ty }
            }
            Expr::InList { expr, list, negated } => Expr::InList {
                expr: b(expr, f)?,
                list: list.into_iter().map(&mut *f).collect::<Result<_, E>>()?,
                negated,
            },
            Expr::Like { expr, pattern, negated, case_insensitive } => {
                Expr::Like { expr: b(expr, f)?, pattern: b(pattern, f)?, negated, case_insensitive }
            }
            leaf @ (Expr::Column(_) | Expr::Literal(_)) => leaf,
        })
    }

    /// Rebuilds the tree bottom-up, applying `f` to every node after its children.
    pub fn transform(self, f: &mut dyn FnMut(Expr) -> Expr) -> Expr {
        fn go(e: Expr, f: &mut dyn FnMut(Expr) -> Expr) -> Expr {
            let node = match e.map_children::<std::convert::Infallible>(&mut |c| Ok(go(c, f))) {
                Ok(n) => n,
                Err(never) => match never {},
            };
            f(node)
        }
        go(self, f)
    }

    /// Every column position this expression reads.
    pub fn columns(&self, out: &mut Vec<usize>) {
        if let Expr::Column(i) = self {
            out.push(*i);
        }
        for c in self.children() {
            c.columns(out);
        }
    }

    pub fn column_set(&self) -> Vec<usize> {
        let mut v = Vec::new();
        self.columns(&mut v);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Renumbers columns through `map` (old position → new position).
    pub fn remap(self, map: &dyn Fn(usize) -> usize) -> Expr {
        self.transform(&mut |e| match e {
            Expr::Column(i) => Expr::Column(map(i)),
            other => other,
        })
    }

    /// Splits a conjunction into its parts.
    pub fn conjuncts(self) -> Vec<Expr> {
        match self {
            Expr::Binary { op: BinaryOp::And, left, right } => {
                let mut v = left.conjuncts();
                v.extend(right.conjuncts());
                v
            }
            other => vec![other],
        }
    }

    pub fn conjunction(parts: Vec<Expr>) -> Option<Expr> {
        parts.into_iter().reduce(|a, b| a.and(b))
    }

    pub fn is_volatile(&self) -> bool {
        matches!(self, Expr::Function { func, .. } if func.is_volatile())
            || self.children().iter().any(|c| c.is_volatile())
    }

    /// Formats with column names taken from `schema`.
    pub fn display<'a>(&'a self, schema: &'a Schema) -> ExprDisplay<'a> {
        ExprDisplay { expr: self, schema }
    }
}

pub struct ExprDisplay<'a> {
    expr: &'a Expr,
    schema: &'a Schema,
}

impl fmt::Display for ExprDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |e: &Expr| e.display(self.schema).to_string();
        match self.expr {
            Expr::Column(i) => match self.schema.fields().get(*i) {
                Some(field) => write!(f, "{}", field.name()),
                None => write!(f, "#{i}"),
            },
            Expr::Literal(s) => write!(f, "{s}"),
            Expr::Binary { op, left, right } => write!(f, "({} {} {})", d(left), op.symbol(), d(right)),
            Expr::Not(e) => write!(f, "NOT {}", d(e)),
            Expr::Negate(e) => write!(f, "-{}", d(e)),
            Expr::IsNull(e) => write!(f, "{} IS NULL", d(e)),
            Expr::IsNotNull(e) => write!(f, "{} IS NOT NULL", d(e)),
            Expr::Cast { expr, to, safe } => {
                write!(f, "{}({} AS {})", if *safe { "TRY_CAST" } else { "CAST" }, d(expr), crate::types::sql_name(to))
            }
            Expr::Case { branches, otherwise } => {
                write!(f, "CASE")?;
                for (c, r) in branches {
                    write!(f, " WHEN {} THEN {}", d(c), d(r))?;
                }
                if let Some(o) = otherwise {
                    write!(f, " ELSE {}", d(o))?;
                }
                write!(f, " END")
            }
            Expr::Function { func, args, .. } => {
                write!(f, "{}(", func.name())?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}", d(a))?;
                }
                write!(f, ")")
            }
            Expr::InList { expr, list, negated } => {
                write!(f, "{} {}IN (", d(expr), if *negated { "NOT " } else { "" })?;
                for (i, a) in list.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}", d(a))?;
                }
                write!(f, ")")
            }
            Expr::Like { expr, pattern, negated, case_insensitive } => write!(
                f,
                "{} {}{} {}",
                d(expr),
                if *negated { "NOT " } else { "" },
                if *case_insensitive { "ILIKE" } else { "LIKE" },
                d(pattern)
            ),
        }
    }
}

//! Parsing, refusing what is not per record, and planning once per input schema.

use std::ops::ControlFlow;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};

use arrow_schema::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{self, Spanned};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::Span;
use futures::executor::block_on;

use crate::error::SqlError;
use crate::feed::Feed;

/// The text in front of a routing predicate.
const FILTER_HEAD: &str = "SELECT * FROM input WHERE ";

/// A parsed query: one `SELECT` over the table `input`.
#[derive(Clone, Debug)]
pub struct Query {
    /// The planned text (the user's, or a predicate inside [`FILTER_HEAD`]).
    text: String,
    query: Box<ast::Query>,
    /// Columns of the planned text's first line in front of the user's text (a
    /// routing predicate is planned inside [`FILTER_HEAD`]).
    shift: u64,
}

impl Query {
    /// Parses `text`, which must be one `SELECT` (syntax only: columns and functions
    /// are known at [`Query::prepare`]).
    pub fn parse(text: &str) -> Result<Query, SqlError> {
        Self::parse_at(text, 0)
    }

    /// The query that keeps the rows for which `predicate` (an SQL boolean
    /// expression over `input`'s columns) is true; errors are located in `predicate`.
    pub fn filter(predicate: &str) -> Result<Query, SqlError> {
        Self::parse_at(
            &format!("{FILTER_HEAD}{predicate}"),
            FILTER_HEAD.len() as u64,
        )
    }

    fn parse_at(text: &str, shift: u64) -> Result<Query, SqlError> {
        guarded(|| Self::parse_unguarded(text, shift))
    }

    fn parse_unguarded(text: &str, shift: u64) -> Result<Query, SqlError> {
        let located = |e| SqlError::from_df(e).shifted(shift);
        let mut statements = DFParserBuilder::new(text)
            .with_dialect(&GenericDialect {})
            .build()
            .and_then(|mut p| p.parse_statements())
            .map_err(located)?;
        let statement = match (statements.pop_front(), statements.is_empty()) {
            (Some(s), true) => s,
            (None, _) => return Err(SqlError::at("the query is empty", None)),
            (Some(_), false) => {
                return Err(SqlError::at(
                    "one SELECT only: the text holds several statements",
                    None,
                ))
            }
        };
        match statement {
            DfStatement::Statement(s) => match *s {
                ast::Statement::Query(query) => Ok(Query {
                    text: text.to_string(),
                    query,
                    shift,
                }),
                other => Err(SqlError::at(
                    "a sql transform is one SELECT ... FROM input; this is another statement",
                    Some(other.span()),
                )
                .shifted(shift)),
            },
            _ => Err(SqlError::at(
                "a sql transform is one SELECT ... FROM input; this is another statement",
                None,
            )),
        }
    }

    /// Plans the query against batches of schema `input`: unknown columns and
    /// functions, type errors and what is not per record are refused here, located in
    /// the text. Outputs come in batches of at most `batch_size` rows before they are
    /// put back together.
    pub fn prepare(&self, input: SchemaRef, batch_size: usize) -> Result<Prepared, SqlError> {
        guarded(|| self.prepare_unguarded(input, batch_size))
    }

    fn prepare_unguarded(&self, input: SchemaRef, batch_size: usize) -> Result<Prepared, SqlError> {
        let located = |e| SqlError::from_df(e).shifted(self.shift);
        let feed = Feed::new(input.clone());
        let ctx = session(batch_size).map_err(located)?;
        let leaf: Arc<dyn PartitionStream> = feed.clone();
        let table = StreamingTable::try_new(input.clone(), vec![leaf]).map_err(located)?;
        ctx.register_table("input", Arc::new(table))
            .map_err(located)?;
        let state = ctx.state();
        let statement = DfStatement::Statement(Box::new(ast::Statement::Query(self.query.clone())));
        // no I/O: the one table is the feed, so planning completes at its first poll
        let logical = block_on(state.statement_to_plan(statement)).map_err(located)?;
        if let Some(what) = refused(&logical) {
            let aggregates: Vec<String> = state.aggregate_functions().keys().cloned().collect();
            let span = locate(&self.query, &self.text, what, &aggregates);
            return Err(SqlError::at(what.message(), span).shifted(self.shift));
        }
        let plan = block_on(state.create_physical_plan(&logical)).map_err(located)?;
        Ok(Prepared {
            output: plan.schema(),
            reads: columns_read(&plan, input.fields().len()),
            plan: Mutex::new(plan),
            runs: AtomicUsize::new(0),
            feed,
            task: ctx.task_ctx(),
            input,
            query: self.clone(),
            batch_size,
            probes: OnceLock::new(),
        })
    }

    /// Whether the query's output may have a column `name`: it selects `*`, or an item
    /// named so (an alias, or the column itself).
    pub fn may_output(&self, name: &str) -> bool {
        let ast::SetExpr::Select(select) = self.query.body.as_ref() else {
            return true;
        };
        select.projection.iter().any(|item| match item {
            ast::SelectItem::Wildcard(_) | ast::SelectItem::QualifiedWildcard(..) => true,
            ast::SelectItem::ExprWithAlias { alias, .. } => alias.value == name,
            ast::SelectItem::UnnamedExpr(ast::Expr::Identifier(i)) => i.value == name,
            ast::SelectItem::UnnamedExpr(ast::Expr::CompoundIdentifier(parts)) => {
                parts.last().is_some_and(|i| i.value == name)
            }
            // an expression is named by its text, never a plain column name
            ast::SelectItem::UnnamedExpr(_) => false,
        })
    }

    /// One query per output expression, with the same FROM and WHERE, and one for the
    /// WHERE alone (labelled `WHERE`): run on a row the whole query fails on, the first
    /// that fails names the culprit.
    pub(crate) fn probes(&self) -> Vec<(String, Query)> {
        let ast::SetExpr::Select(select) = self.query.body.as_ref() else {
            return Vec::new();
        };
        let mut items = Vec::new();
        if select.selection.is_some() {
            let all = ast::SelectItem::Wildcard(ast::WildcardAdditionalOptions::default());
            items.push(("WHERE".to_string(), all));
        }
        for item in &select.projection {
            let label = match item {
                ast::SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
                ast::SelectItem::UnnamedExpr(e) => e.to_string(),
                other => other.to_string(),
            };
            items.push((label, item.clone()));
        }
        items
            .into_iter()
            .map(|(label, item)| {
                let mut query = self.query.clone();
                if let ast::SetExpr::Select(s) = query.body.as_mut() {
                    s.projection = vec![item];
                }
                let text = query.to_string();
                (
                    label,
                    Query {
                        text,
                        query,
                        shift: self.shift,
                    },
                )
            })
            .collect()
    }
}

/// A query planned for one input schema, ready to run on batches of it.
pub struct Prepared {
    /// The plan, renewed now and then: every run adds metrics to its nodes (`run`).
    pub(crate) plan: Mutex<Arc<dyn ExecutionPlan>>,
    pub(crate) runs: AtomicUsize,
    pub(crate) feed: Arc<Feed>,
    pub(crate) task: Arc<TaskContext>,
    pub(crate) input: SchemaRef,
    pub(crate) output: SchemaRef,
    /// The input columns the plan reads, when it reads some and not all.
    pub(crate) reads: Option<Vec<usize>>,
    pub(crate) query: Query,
    pub(crate) batch_size: usize,
    /// The probes, planned the first time a row fails.
    pub(crate) probes: OnceLock<Vec<(String, Prepared)>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("input", &self.input)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// The schema of the batches it takes.
    pub fn input_schema(&self) -> &SchemaRef {
        &self.input
    }

    /// The schema of the batches it gives.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output
    }

    /// The columns of the input schema the query reads (indices, ascending), when it
    /// reads some but not all: batches holding only these give the same output. None
    /// when it reads every column, or none (its rows still count).
    pub fn columns_read(&self) -> Option<&[usize]> {
        self.reads.as_deref()
    }
}

/// The input columns `plan` reads: the projection of its leaf, when that is some of
/// the `width` columns and not all or none.
fn columns_read(plan: &Arc<dyn ExecutionPlan>, width: usize) -> Option<Vec<usize>> {
    let mut reads = None;
    let _ = plan.apply(|node| {
        if let Some(leaf) = node.as_any().downcast_ref::<StreamingTableExec>() {
            reads = leaf.projection().as_ref().map(|p| p.to_vec());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let mut reads = reads?;
    reads.sort_unstable();
    reads.dedup();
    (!reads.is_empty() && reads.len() < width).then_some(reads)
}

/// `f`, with a panic in DataFusion's parser or planner (a query it does not expect,
/// such as `x[1] 9`) turned into an error about the query instead of ending the process.
fn guarded<T>(f: impl FnOnce() -> Result<T, SqlError>) -> Result<T, SqlError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(SqlError::at(
            format!("DataFusion cannot plan this query (it failed inside: {why})"),
            None,
        ))
    })
}

/// A session that plans for one partition, with DataFusion's functions (a few
/// replaced, `functions`) and the JSON functions; decimal literals stay decimal, and
/// string casts give `Utf8` as the rest of the pipeline has it.
fn session(batch_size: usize) -> datafusion::error::Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(batch_size.max(1));
    let parser = &mut config.options_mut().sql_parser;
    parser.parse_float_as_decimal = true;
    parser.map_string_types_to_utf8view = false;
    parser.collect_spans = true;
    let mut ctx = SessionContext::new_with_config(config);
    datafusion_functions_json::register_all(&mut ctx)?;
    for f in crate::functions::replacements() {
        ctx.register_udf(f);
    }
    Ok(ctx)
}

/// What a query does that needs more than one batch to be right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    Aggregate,
    Window,
    Join,
    Sort,
    Limit,
    Distinct,
    SetOperation,
    Subquery,
    NoInput,
    Other,
}

impl Refused {
    fn message(self) -> String {
        let what = match self {
            Refused::Aggregate => "an aggregate (GROUP BY, or a function such as count or sum)",
            Refused::Window => "a window function (OVER)",
            Refused::Join => "a join",
            Refused::Sort => "ORDER BY",
            Refused::Limit => "LIMIT, OFFSET or FETCH",
            Refused::Distinct => "DISTINCT",
            Refused::SetOperation => "UNION, INTERSECT or EXCEPT",
            Refused::Subquery => "a subquery",
            Refused::NoInput => {
                return "a sql transform reads its records FROM input".to_string();
            }
            Refused::Other => "this kind of query",
        };
        format!(
            "{what} needs more than one batch to be correct, and a sql transform runs batch by batch: \
             use projections, WHERE, scalar functions, CASE, casts and unnest"
        )
    }
}

/// The first construct of `plan` (before optimisation, which could hide a DISTINCT in
/// an aggregate or a subquery in a join) that is not per record.
fn refused(plan: &LogicalPlan) -> Option<Refused> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        let what = match node {
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::TableScan(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Unnest(_) => None,
            LogicalPlan::Aggregate(_) => Some(Refused::Aggregate),
            LogicalPlan::Window(_) => Some(Refused::Window),
            LogicalPlan::Join(_) => Some(Refused::Join),
            LogicalPlan::Sort(_) => Some(Refused::Sort),
            LogicalPlan::Limit(_) => Some(Refused::Limit),
            LogicalPlan::Distinct(_) => Some(Refused::Distinct),
            LogicalPlan::Union(_) => Some(Refused::SetOperation),
            LogicalPlan::Subquery(_) => Some(Refused::Subquery),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Some(Refused::NoInput),
            _ => Some(Refused::Other),
        };
        let what = what.or_else(|| has_subquery(node).then_some(Refused::Subquery));
        match what {
            Some(w) => {
                found = Some(w);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    });
    found
}

fn has_subquery(node: &LogicalPlan) -> bool {
    node.expressions().iter().any(|e| {
        e.exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })
        .unwrap_or(false)
    })
}

/// Where in the query (of text `text`) `what` is written, as far as the syntax tree
/// tells: at its keyword where the tree has only the clause's expressions.
fn locate(query: &ast::Query, text: &str, what: Refused, aggregates: &[String]) -> Option<Span> {
    let keyword = |k: &'static str| move |s: Span| keyword_before(text, s, k);
    let select = match query.body.as_ref() {
        ast::SetExpr::Select(s) => Some(s.as_ref()),
        _ => None,
    };
    let function = |pick: &dyn Fn(&ast::Function) -> bool| {
        ast::visit_expressions(query, |e| match e {
            ast::Expr::Function(f) if pick(f) => ControlFlow::Break(f.span()),
            _ => ControlFlow::Continue(()),
        })
        .break_value()
    };
    match what {
        Refused::Sort => query
            .order_by
            .as_ref()
            .map(Spanned::span)
            .map(keyword("ORDER")),
        Refused::Limit => query
            .limit_clause
            .as_ref()
            .map(Spanned::span)
            .map(keyword("LIMIT"))
            .or_else(|| query.fetch.as_ref().map(Spanned::span)),
        Refused::SetOperation => Some(query.body.span()),
        Refused::Join => select.and_then(|s| {
            s.from.get(1).map(|t| t.relation.span()).or_else(|| {
                s.from
                    .first()
                    .and_then(|t| t.joins.first())
                    .map(|j| j.relation.span())
            })
        }),
        Refused::Aggregate => select
            .filter(|s| match &s.group_by {
                ast::GroupByExpr::Expressions(e, _) => !e.is_empty(),
                ast::GroupByExpr::All(_) => true,
            })
            .map(|s| keyword("GROUP")(s.group_by.span()))
            .or_else(|| {
                function(&|f| {
                    f.over.is_none() && aggregates.contains(&f.name.to_string().to_lowercase())
                })
            }),
        Refused::Window => function(&|f| f.over.is_some()),
        Refused::Distinct => select.map(|s| s.select_token.0.span),
        Refused::Subquery => ast::visit_expressions(query, |e| match e {
            ast::Expr::Subquery(_) | ast::Expr::InSubquery { .. } | ast::Expr::Exists { .. } => {
                ControlFlow::Break(e.span())
            }
            _ => ControlFlow::Continue(()),
        })
        .break_value(),
        Refused::NoInput | Refused::Other => None,
    }
}

/// The place of the last `keyword` (ASCII, any case) before `span` in `text`, where
/// the syntax tree gives the place of a clause's first expression; `span` itself when
/// the keyword is not found (a function, say, for an aggregate without GROUP BY).
fn keyword_before(text: &str, span: Span, keyword: &str) -> Span {
    let mut at = None;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if n as u64 + 1 == span.start.line {
            let chars = (span.start.column as usize).saturating_sub(1);
            at = Some(
                offset
                    + line
                        .char_indices()
                        .nth(chars)
                        .map_or(line.len(), |(i, _)| i),
            );
            break;
        }
        offset += line.len();
    }
    let Some(at) = at else {
        return span;
    };
    let upper = text[..at].to_ascii_uppercase();
    let word = |i: usize| {
        let before = upper[..i].chars().next_back();
        let after = upper[i + keyword.len()..].chars().next();
        let part = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !part(before) && !part(after)
    };
    let Some(found) = upper
        .rmatch_indices(keyword)
        .map(|(i, _)| i)
        .find(|&i| word(i))
    else {
        return span;
    };
    let before = &text[..found];
    let line = before.matches('\n').count() as u64 + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[start..].chars().count() as u64 + 1;
    let mut out = span;
    out.start.line = line;
    out.start.column = column;
    out
}

//! Statement texts with many values: placeholders in bind order, and sizes that keep the
//! number of distinct texts small.
//!
//! sqlx prepares each distinct text once per connection and keeps it in its statement cache.
//! A text per batch size (`in ($1 … $n)` for every n up to 128, multi-row inserts of every row
//! count) filled those caches with hundreds of large prepared statements: 8–10 MB more
//! resident after a burst of decisions. `in` lists are therefore padded to a power of two
//! (repeating their last value, which changes no result), and multi-row inserts go in chunks
//! of [`MAX_ROWS`] rows and then powers of two: a handful of texts per table. On SQLite only
//! those for one row or value, which every lone request uses, stay prepared ([`keep`]); a
//! statement for a batch is prepared when it runs and dropped after it: a large prepared
//! insert costs tens of KiB per connection to keep in this process, and a few microseconds
//! to prepare again. On PostgreSQL every size stays prepared: the plan lives in the server,
//! this process keeps only its description, and preparing again costs a round trip (a burst
//! of 16 signed-in clients, whose session lookups come in batches of 2 to 16, paid it on
//! every lookup).

use super::Backend;

/// Rows per multi-row insert at most.
pub(super) const MAX_ROWS: usize = 32;

/// Whether a statement for `n` rows or values is kept prepared (sqlx's `persistent`): see
/// the module's doc.
pub(super) fn keep(backend: Backend, n: usize) -> bool {
    match backend {
        Backend::Postgres => true,
        Backend::Sqlite => n == 1,
    }
}

/// Placeholders numbered in bind order: `$1, $2, …` on PostgreSQL. On SQLite plain `?`: a
/// `$n` there is a named parameter, and binding the k-th one looks its name up in a list of
/// all of them, so a 2,000-value insert spent most of its milliseconds finding names.
pub(super) struct Params {
    sqlite: bool,
    n: usize,
}

impl Params {
    pub(super) fn new(backend: Backend) -> Self {
        Self {
            sqlite: backend == Backend::Sqlite,
            n: 0,
        }
    }

    /// The next placeholder.
    pub(super) fn next(&mut self) -> String {
        self.n += 1;
        if self.sqlite {
            "?".to_string()
        } else {
            format!("${}", self.n)
        }
    }

    /// `k` placeholders, comma-separated.
    pub(super) fn list(&mut self, k: usize) -> String {
        (0..k).map(|_| self.next()).collect::<Vec<_>>().join(", ")
    }

    /// The `values` of a multi-row insert: `n` rows, each `row(self)`, comma-separated.
    pub(super) fn rows(&mut self, n: usize, row: impl Fn(&mut Self) -> String) -> String {
        (0..n).map(|_| row(self)).collect::<Vec<_>>().join(", ")
    }
}

/// `rows` cut as [`row_chunks`] says: one multi-row insert per chunk.
pub(super) fn chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    row_chunks(rows.len()).into_iter().map(move |n| {
        let (chunk, next) = rest.split_at(n);
        rest = next;
        chunk
    })
}

/// `values` padded to a power-of-two length by repeating the last one (an `in` list means
/// the same with repeats). Empty stays empty.
pub(super) fn padded<'a>(values: &'a [&'a str]) -> impl Iterator<Item = &'a str> + 'a {
    let pad = values.len().next_power_of_two() - values.len();
    let last = values.last().copied().unwrap_or_default();
    values.iter().copied().chain(std::iter::repeat_n(
        last,
        if values.is_empty() { 0 } else { pad },
    ))
}

/// How many values [`padded`] yields for `n`.
pub(super) fn padded_len(n: usize) -> usize {
    if n == 0 { 0 } else { n.next_power_of_two() }
}

/// The row counts of the statements that insert `n` rows: [`MAX_ROWS`] while they last,
/// then powers of two.
fn row_chunks(n: usize) -> Vec<usize> {
    let mut out = vec![MAX_ROWS; n / MAX_ROWS];
    let mut left = n % MAX_ROWS;
    let mut p = MAX_ROWS;
    while left > 0 {
        while p > left {
            p /= 2;
        }
        out.push(p);
        left -= p;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_chunks_cover_every_row_with_few_distinct_sizes() {
        for n in 0..=300 {
            let chunks = row_chunks(n);
            assert_eq!(chunks.iter().sum::<usize>(), n, "{n}");
            assert!(chunks.iter().all(|c| c.is_power_of_two() && *c <= MAX_ROWS));
        }
        assert_eq!(row_chunks(198), [32, 32, 32, 32, 32, 32, 4, 2]);
        assert_eq!(row_chunks(1), [1]);
        let rows: Vec<usize> = (0..37).collect();
        let cut: Vec<&[usize]> = chunks(&rows).collect();
        assert_eq!(cut.iter().map(|c| c.len()).collect::<Vec<_>>(), [32, 4, 1]);
        assert_eq!(cut.concat(), rows);
    }

    #[test]
    fn padding_repeats_the_last_value_up_to_a_power_of_two() {
        let v = ["a", "b", "c"];
        assert_eq!(padded(&v).collect::<Vec<_>>(), ["a", "b", "c", "c"]);
        assert_eq!(padded_len(3), 4);
        assert_eq!(padded(&[]).count(), 0);
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded(&["x"]).collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn placeholders_are_numbered_in_bind_order_on_postgres_only() {
        let mut pg = Params::new(Backend::Postgres);
        assert_eq!(pg.next(), "$1");
        assert_eq!(pg.list(3), "$2, $3, $4");
        let mut lite = Params::new(Backend::Sqlite);
        assert_eq!(lite.next(), "?");
        assert_eq!(lite.list(2), "?, ?");
        let mut pg = Params::new(Backend::Postgres);
        assert_eq!(
            pg.rows(2, |p| format!("({}, 'x')", p.list(2))),
            "($1, $2, 'x'), ($3, $4, 'x')"
        );
    }
}

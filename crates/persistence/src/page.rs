//! Offset pagination shared by every list query.

/// A validated window into a list (the API layer enforces 1..=200 and offset >= 0).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

/// One page of rows and the total number of rows matching the filter.
#[derive(Debug)]
pub struct Paged<T> {
    pub rows: Vec<T>,
    pub total: i64,
}

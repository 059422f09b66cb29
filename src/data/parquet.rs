//! Parquet input files: the string column `text`, row by row (the layout of Hugging Face
//! datasets' Parquet exports), read with the `parquet` crate's row reader.

use crate::error::{Error, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use std::path::Path;

/// The `text` column of the Parquet file `path`, one string per row, in row order.
///
/// # Errors
/// [`Error::Data`] naming the file for a file that is not Parquet, has no column `text` (the
/// message lists its columns), or a row whose `text` is not a string (naming the row, 1-based);
/// [`Error::Io`] when the file cannot be opened.
pub fn text_column(path: &Path) -> Result<Vec<String>> {
    let bad = |e: parquet::errors::ParquetError| {
        Error::Data(format!("{} is not a readable Parquet file: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let columns: Vec<String> = schema.root_schema().get_fields().iter().map(|f| f.name().to_string()).collect();
    if !columns.iter().any(|c| c == "text") {
        return Err(Error::Data(format!(
            "{} has no column \"text\" (its columns: {})",
            path.display(),
            columns.join(", ")
        )));
    }
    let mut texts = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        let row = row.map_err(bad)?;
        let value = row.get_column_iter().find(|(name, _)| name.as_str() == "text").map(|(_, v)| v);
        match value {
            Some(Field::Str(s)) => texts.push(s.clone()),
            Some(Field::Null) => {
                return Err(Error::Data(format!("{} row {}: \"text\" is null", path.display(), i + 1)))
            }
            other => {
                return Err(Error::Data(format!(
                    "{} row {}: \"text\" is {other:?}, expected a string",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(texts)
}

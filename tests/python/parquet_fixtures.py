"""Writes the Parquet fixtures of tests/text_inputs.rs with pyarrow (an independent writer, as
Hugging Face datasets uses). The files are committed; rerun only to change them.

Usage: python tests/python/parquet_fixtures.py tests/fixtures/text   (needs `pip install pyarrow`)
"""

import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = {
    "id": [1, 2, 3, 4],
    "text": ["\ufefffirst row\r\nwith a Windows line end", "second row: naïve café 東京", "   ", "fourth row\rold Mac line end"],
    "source": ["a", "b", "c", "d"],
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/text"
    os.makedirs(out, exist_ok=True)
    table = pa.table(ROWS)
    pq.write_table(table, os.path.join(out, "rows.snappy.parquet"), compression="snappy", row_group_size=2)
    pq.write_table(table, os.path.join(out, "rows.zstd.parquet"), compression="zstd")
    pq.write_table(pa.table({"content": ["no text column"]}), os.path.join(out, "no_text.parquet"))
    pq.write_table(pa.table({"text": ["ok", None]}), os.path.join(out, "null_text.parquet"))
    print(f"wrote Parquet fixtures to {out}")


if __name__ == "__main__":
    main()

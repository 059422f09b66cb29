//! A run's settings outside its model and training configs — where its data is, how often it
//! checkpoints, how many libtorch threads it runs on — recorded as `run.json` in the run folder so
//! that a resumed run continues as it started, with every deliberate change named.

use crate::error::{Error, Result};
use crate::fs::save_json;
use crate::parallel::ProcessGroup;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The settings of a run that are neither model nor training config, as `run.json` records them.
///
/// A fresh run records the settings it ran with ([`RunSettings::resolve`] on the library's
/// defaults); a resumed run restores them and applies only the ones given again, each change
/// described ("save-every 500 (from the run) → 50 (given)").
///
/// ```
/// use altup_moe::train::{GivenSettings, RunSettings};
///
/// let recorded = RunSettings { save_every: 500, threads: Some(2), ..RunSettings::default() };
/// let given = GivenSettings { save_every: Some(50), ..GivenSettings::default() };
/// let resolved = RunSettings::resolve(Some(&recorded), &given)?;
/// assert_eq!((resolved.settings.save_every, resolved.settings.threads), (50, Some(2)));
/// assert_eq!(resolved.changes, vec!["save-every 500 (from the run) → 50 (given)".to_string()]);
/// # Ok::<(), altup_moe::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSettings {
    /// The data the run reads: a file or folder (absolute), or `None` for the default corpus.
    pub data: Option<PathBuf>,
    /// Globs of the data folder's files that are read (empty: every file but metadata files).
    pub include: Vec<String>,
    /// Globs of the data folder's files that are left out.
    pub exclude: Vec<String>,
    /// A checkpoint every this many steps (0: only after the last step).
    pub save_every: u64,
    /// The newest checkpoints kept (at least 1).
    pub keep_checkpoints: u64,
    /// libtorch's intra-op threads (`None`: libtorch's choice, not recorded). On the CPU the
    /// thread count decides the order of floating-point sums, so a resumed run equals an
    /// uninterrupted one bitwise only with the same count.
    pub threads: Option<i32>,
    /// Only deterministic libtorch kernels ([`crate::runtime::set_deterministic`]).
    pub deterministic: bool,
}

impl Default for RunSettings {
    /// The default corpus, every file; a checkpoint every 500 steps, 2 kept; libtorch's thread
    /// count; nondeterministic kernels allowed.
    fn default() -> Self {
        Self {
            data: None,
            include: Vec::new(),
            exclude: Vec::new(),
            save_every: 500,
            keep_checkpoints: 2,
            threads: None,
            deterministic: false,
        }
    }
}

/// The run settings a command line gave (`None` / `false`: not given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GivenSettings {
    /// `--data`.
    pub data: Option<PathBuf>,
    /// `--include` (only with `--data`, or to change a resumed run's).
    pub include: Option<Vec<String>>,
    /// `--exclude`.
    pub exclude: Option<Vec<String>>,
    /// `--save-every`.
    pub save_every: Option<u64>,
    /// `--keep-checkpoints`.
    pub keep_checkpoints: Option<u64>,
    /// `--threads`.
    pub threads: Option<i32>,
    /// `--deterministic` (a switch: it can turn the setting on, not off).
    pub deterministic: bool,
}

/// The settings a run goes on with, and how they differ from the recorded ones.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSettings {
    /// The settings to run with (and to record).
    pub settings: RunSettings,
    /// One line per recorded setting that was given again with another value, or restored when
    /// it differs from the process's own state ("threads 2 (from the run) → 4 (given)").
    pub changes: Vec<String>,
    /// Warnings about what the changes cost (a changed thread count ends bitwise resume).
    pub warnings: Vec<String>,
}

impl ResolvedSettings {
    /// The settings to run with, put into effect: each change and warning passed to `say`, the
    /// process-wide settings applied ([`RunSettings::apply_to_process`]) and the thread count
    /// the process then runs on recorded (so that a resume can restore it).
    pub fn into_effect(self, say: &dyn Fn(String)) -> RunSettings {
        for line in self.changes.into_iter().chain(self.warnings) {
            say(line);
        }
        let mut settings = self.settings;
        settings.apply_to_process();
        settings.threads = Some(tch::get_num_threads());
        settings
    }
}

impl RunSettings {
    /// The file in a run folder.
    pub const FILE: &'static str = "run.json";

    /// The settings of a run: the recorded ones (`None`: a fresh run, on the defaults) with the
    /// given ones applied on top. A data path is made absolute, so that the record still finds
    /// it from another working directory.
    ///
    /// # Errors
    /// [`Error::Config`] for `keep_checkpoints` 0 or `threads` below 1; [`Error::Io`] naming a
    /// data path that does not exist.
    pub fn resolve(recorded: Option<&RunSettings>, given: &GivenSettings) -> Result<ResolvedSettings> {
        let base = recorded.cloned().unwrap_or_default();
        let mut settings = base.clone();
        let mut changes = Vec::new();
        let mut warnings = Vec::new();
        let mut change = |name: &str, from: String, to: String| {
            if recorded.is_some() && from != to {
                changes.push(format!("{name} {from} (from the run) → {to} (given)"));
            }
        };
        if let Some(data) = &given.data {
            let data = std::fs::canonicalize(data).map_err(|e| Error::io(data, e))?;
            change("data", show_data(&base.data), data.display().to_string());
            settings.data = Some(data);
            // New data comes with its own file selection (none given: every file).
            settings.include = given.include.clone().unwrap_or_default();
            settings.exclude = given.exclude.clone().unwrap_or_default();
        } else {
            settings.include = given.include.clone().unwrap_or(settings.include);
            settings.exclude = given.exclude.clone().unwrap_or(settings.exclude);
        }
        change("include", base.include.join(","), settings.include.join(","));
        change("exclude", base.exclude.join(","), settings.exclude.join(","));
        if let Some(n) = given.save_every {
            change("save-every", base.save_every.to_string(), n.to_string());
            settings.save_every = n;
        }
        if let Some(n) = given.keep_checkpoints {
            if n == 0 {
                return Err(Error::Config("keep-checkpoints (0) must be at least 1".into()));
            }
            change("keep-checkpoints", base.keep_checkpoints.to_string(), n.to_string());
            settings.keep_checkpoints = n;
        }
        if let Some(n) = given.threads {
            if n < 1 {
                return Err(Error::Config(format!("threads ({n}) must be at least 1")));
            }
            if let Some(before) = base.threads.filter(|&b| recorded.is_some() && b != n) {
                warnings.push(format!(
                    "the run trained on {before} threads and goes on with {n}: the order of floating-point sums \
                     changes, so the resumed run is no longer bitwise equal to an uninterrupted one (resume with \
                     --threads {before} to keep it)"
                ));
            }
            change("threads", base.threads.map_or("libtorch's choice".into(), |b| b.to_string()), n.to_string());
            settings.threads = Some(n);
        }
        if given.deterministic {
            change("deterministic", base.deterministic.to_string(), "true".into());
            settings.deterministic = true;
        }
        Ok(ResolvedSettings { settings, changes, warnings })
    }

    /// The settings recorded in the run folder `dir` (`None` when it has no `run.json`: a new
    /// folder, or a run written before the settings were recorded).
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Json`] naming the file when it cannot be read or parsed.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(Self::FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Json { context: path.display().to_string(), source })
    }

    /// The settings recorded for the run a model belongs to: the `run.json` beside its weights
    /// file, or in the run folder of a `step-*` checkpoint (`None` when there is none: a Hugging
    /// Face folder, or a run written before settings were recorded).
    ///
    /// # Errors
    /// As [`RunSettings::read`].
    pub fn of_model(weights: &Path) -> Result<Option<Self>> {
        let dir = weights.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Self::read(&crate::io::run_folder_of(dir))
    }

    /// Writes `run.json` into `dir` (created if needed; written atomically); the group's main
    /// rank only.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn write(&self, dir: &Path, group: &ProcessGroup) -> Result<()> {
        if !group.is_main() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        save_json(&dir.join(Self::FILE), self)
    }

    /// Applies the process-wide settings: the thread count (when recorded or given) and the
    /// deterministic-kernels switch.
    pub fn apply_to_process(&self) {
        if let Some(threads) = self.threads {
            tch::set_num_threads(threads);
        }
        if self.deterministic {
            crate::runtime::set_deterministic(true);
        }
    }
}

fn show_data(data: &Option<PathBuf>) -> String {
    data.as_ref().map_or_else(|| "the default corpus".to_string(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_run_takes_the_given_settings_on_the_defaults_without_changes() {
        let given = GivenSettings { save_every: Some(10), threads: Some(3), ..GivenSettings::default() };
        let r = RunSettings::resolve(None, &given).unwrap();
        assert_eq!(r.settings, RunSettings { save_every: 10, threads: Some(3), ..RunSettings::default() });
        assert!(r.changes.is_empty() && r.warnings.is_empty());
    }

    #[test]
    fn a_resumed_run_keeps_what_is_not_given_and_names_what_is() {
        let dir = std::env::temp_dir();
        let recorded = RunSettings {
            data: Some(dir.clone()),
            include: vec!["*.txt".into()],
            exclude: vec![],
            save_every: 10,
            keep_checkpoints: 3,
            threads: Some(2),
            deterministic: true,
        };
        // Nothing given: everything restored, nothing to say.
        let same = RunSettings::resolve(Some(&recorded), &GivenSettings::default()).unwrap();
        assert_eq!(same.settings, recorded);
        assert!(same.changes.is_empty() && same.warnings.is_empty());
        // Given again with the same values: no change either.
        let again = GivenSettings { save_every: Some(10), threads: Some(2), ..GivenSettings::default() };
        assert!(RunSettings::resolve(Some(&recorded), &again).unwrap().changes.is_empty());
        let given = GivenSettings {
            save_every: Some(50),
            keep_checkpoints: Some(1),
            threads: Some(4),
            ..GivenSettings::default()
        };
        let r = RunSettings::resolve(Some(&recorded), &given).unwrap();
        assert_eq!((r.settings.save_every, r.settings.keep_checkpoints, r.settings.threads), (50, 1, Some(4)));
        assert_eq!((r.settings.data.as_deref(), r.settings.include.clone()), (Some(dir.as_path()), recorded.include));
        assert_eq!(
            r.changes,
            vec![
                "save-every 10 (from the run) → 50 (given)",
                "keep-checkpoints 3 (from the run) → 1 (given)",
                "threads 2 (from the run) → 4 (given)",
            ]
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains("trained on 2 threads and goes on with 4") && r.warnings[0].contains("--threads 2")
        );
    }

    #[test]
    fn new_data_brings_its_own_file_selection_and_bad_values_are_named() {
        let recorded = RunSettings { include: vec!["*.md".into()], ..RunSettings::default() };
        let here = std::env::current_dir().unwrap();
        let given = GivenSettings { data: Some(".".into()), ..GivenSettings::default() };
        let r = RunSettings::resolve(Some(&recorded), &given).unwrap();
        assert_eq!(r.settings.data, Some(std::fs::canonicalize(&here).unwrap()));
        assert!(r.settings.include.is_empty());
        assert_eq!(
            r.changes[0],
            format!("data the default corpus (from the run) → {} (given)", here.canonicalize().unwrap().display())
        );
        assert_eq!(r.changes[1], "include *.md (from the run) →  (given)");
        let missing = GivenSettings { data: Some("no/such/corpus".into()), ..GivenSettings::default() };
        let err = RunSettings::resolve(None, &missing).unwrap_err().to_string();
        assert!(err.contains("no/such/corpus"), "{err}");
        let zero = GivenSettings { keep_checkpoints: Some(0), ..GivenSettings::default() };
        assert!(RunSettings::resolve(None, &zero).unwrap_err().to_string().contains("keep-checkpoints (0)"));
    }

    #[test]
    fn settings_round_trip_through_run_json() {
        let dir = std::env::temp_dir().join(format!("altup-moe-run-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(RunSettings::read(&dir).unwrap(), None);
        let s =
            RunSettings { save_every: 7, threads: Some(1), include: vec!["a/*.txt".into()], ..RunSettings::default() };
        s.write(&dir, &ProcessGroup::single()).unwrap();
        assert_eq!(RunSettings::read(&dir).unwrap(), Some(s));
        std::fs::write(dir.join(RunSettings::FILE), "{\"save_evry\": 3}").unwrap();
        let err = RunSettings::read(&dir).unwrap_err().to_string();
        assert!(err.contains("run.json") && err.contains("save_evry"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The library's named settings ([`SETTINGS`]) as command-line flags, with `--config FILE` and
//! `--set KEY=VALUE`: a flag shows the library's default and applies only when given, on top of
//! the file (or the defaults), before the assignments.

use altup_moe::train::{RunConfig, Section, SETTINGS};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::path::PathBuf;

/// The flags given on a command line (`#[command(flatten)]` into a parser).
#[derive(Debug, Clone, Default)]
pub struct ConfigFlags {
    /// The settings given, with their values, in [`SETTINGS`] order.
    pub given: Vec<(&'static str, String)>,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--set KEY=VALUE`, in order.
    pub set: Vec<String>,
}

impl ConfigFlags {
    /// The run configuration: `--config` (or the library's defaults), the given flags, the
    /// assignments; validated.
    pub fn run_config(&self) -> altup_moe::Result<RunConfig> {
        let mut run = self.config.as_deref().map_or_else(|| Ok(RunConfig::default()), RunConfig::from_file)?;
        for (name, value) in &self.given {
            run.apply(name, value)?;
        }
        for assignment in &self.set {
            run.set(assignment)?;
        }
        run.model.validate()?;
        run.train.validate()?;
        Ok(run)
    }

    /// The given flags of `sections`, spelled as flags (`--top-k`), and any `--config`/`--set`
    /// when `Section::Model` is asked for.
    pub fn given_in(&self, sections: &[Section]) -> Vec<String> {
        let section = |name: &str| SETTINGS.iter().find(|s| s.name == name).map(|s| s.section);
        let mut flags: Vec<String> = self
            .given
            .iter()
            .filter(|(n, _)| section(n).is_some_and(|s| sections.contains(&s)))
            .map(|(n, _)| format!("--{n}"))
            .collect();
        if sections.contains(&Section::Model) {
            flags.extend(self.config.iter().map(|_| "--config".to_string()));
            flags.extend(self.set.iter().map(|a| format!("--set {a}")));
        }
        flags
    }
}

impl clap::FromArgMatches for ConfigFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let given = SETTINGS
            .iter()
            .filter(|s| m.value_source(s.name) == Some(ValueSource::CommandLine))
            .map(|s| {
                (
                    s.name,
                    if s.value.is_some() {
                        m.get_one::<String>(s.name).cloned().unwrap_or_default()
                    } else {
                        "true".into()
                    },
                )
            })
            .collect();
        let set = m.get_many::<String>("set").map(|v| v.cloned().collect()).unwrap_or_default();
        Ok(Self { given, config: m.get_one::<PathBuf>("config").cloned(), set })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ConfigFlags {
    fn augment_args(cmd: Command) -> Command {
        let defaults = RunConfig::default();
        let mut cmd = cmd
            .arg(Arg::new("config").long("config").value_name("FILE").value_parser(clap::value_parser!(PathBuf)).help(
                "A run configuration ({\"model\": …, \"train\": …}, JSON; missing fields keep the defaults); the flags \
                 apply on top.",
            ))
            .arg(Arg::new("set").long("set").value_name("KEY=VALUE").action(ArgAction::Append).help(
                "Set any field of the run configuration, after the flags (--set model.moe.min_capacity=2).",
            ));
        for setting in SETTINGS {
            let heading = match setting.section {
                Section::Model | Section::Training => "Model and training",
                Section::Moe => "Mixture of experts",
                Section::AltUp => "AltUp",
            };
            let shown = (setting.show)(&defaults);
            let help = match shown.as_str() {
                "" => setting.help.to_string(),
                _ => format!("{} [default: {shown}]", setting.help),
            };
            let arg = Arg::new(setting.name).long(setting.name).help(help).help_heading(heading);
            cmd = cmd.arg(match setting.value {
                None => arg.action(ArgAction::SetTrue),
                // A value is checked by applying it to the defaults: a bad one fails while parsing.
                Some(value) => arg.value_name(value).allow_negative_numbers(true).value_parser(move |s: &str| {
                    let checked = (setting.set)(&mut RunConfig::default(), s);
                    checked.map(|()| s.to_string()).map_err(|e| e.to_string().replace("invalid config: ", ""))
                }),
            });
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

//! `mhr eval`: Rouge-L and exact match of greedy generations on the test set of each adaptation run's
//! SNI task (the instances `mhr adapt` held out), or the rank-classification accuracy on a T0 dataset's
//! evaluation rows not drawn for training (`mhr adapt --t0`), written as `results.json` rows
//! `{method, task, k, seed, metric, value}` (DESIGN.md's schema): a pair of rows per SNI run, one per T0 run.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use mhr_data::{EncodedChoices, Encoder, Example};
use mhr_models::Precision;
use mhr_train::eval::{RankClassification, rank_classification};
use mhr_train::results::{ResultRow, Results};
use mhr_train::sni::{GenerationScores, greedy_texts};
use mhr_train::t0::encode_choices;
use mhr_train::trainer::write_json;
use serde_json::json;

use crate::commands::common::catch_panics;
use crate::commands::run_dir::{AdaptSettings, Run, RunKind, check_model_dir};
use crate::device::{BackendTask, DeviceSpec, ensure_compiled, ensure_precision, with_backend};

/// `preset` of the results written by `mhr eval`.
pub const PRESET: &str = "mhr-eval";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Adaptation runs (folders of `mhr adapt`); repeat for several methods, tasks or seeds.
    #[arg(long, value_name = "DIR", required = true)]
    pub run: Vec<PathBuf>,
    /// Evaluate the first N test instances only (default: all of them).
    #[arg(long, value_name = "N")]
    pub n_test: Option<usize>,
    /// Longest generation (default: the run's max_target_len); unused for T0 runs.
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Examples generated (or, for T0, ranked with all their choices) at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// results.json to write.
    #[arg(long, value_name = "FILE.json")]
    pub out: PathBuf,
    /// Also write one JSON line per test example: run, id, prediction, references (T0: the chosen and the
    /// gold answer choice).
    #[arg(long, value_name = "FILE.jsonl")]
    pub predictions: Option<PathBuf>,
    /// The base weights' precision, f32 or bf16 (default: each run's own): a bf16 run evaluates in f32 on a
    /// backend without bf16 (ndarray, wgpu), for instance.
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Backend and device: cpu, ndarray, flex, wgpu[:N] or cuda[:N] (as compiled in).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
}

/// One run to evaluate, prepared on the host.
struct Job {
    run: Run,
    adapt: AdaptSettings,
    /// The base's precision in this evaluation.
    precision: Precision,
    test: Vec<Example>,
    task_id: usize,
    scoring: Scoring,
}

/// How a run's test set is scored, by the kind of its task.
enum Scoring {
    /// SNI: greedy generations, Rouge-L and exact match against the references.
    Generation { encoder: Encoder, max_new_tokens: usize },
    /// T0: rank classification of the test examples' encoded answer choices, accuracy.
    RankClassification(Vec<EncodedChoices>),
}

/// What a run's model produced on its test set.
enum Predictions {
    Texts(Vec<String>),
    Ranked(RankClassification),
}

struct EvalTask<'a> {
    jobs: &'a [Job],
    batch_size: usize,
}

impl BackendTask for EvalTask<'_> {
    /// The predictions of each job.
    type Output = Vec<Predictions>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Result<Self::Output> {
        let mut all = Vec::new();
        for job in self.jobs {
            let model = job.run.load_model::<B>(&device)?.valid();
            all.push(match &job.scoring {
                Scoring::Generation {
                    encoder,
                    max_new_tokens,
                } => Predictions::Texts(greedy_texts(
                    &model,
                    encoder,
                    &job.test,
                    job.task_id,
                    *max_new_tokens,
                    self.batch_size,
                )?),
                Scoring::RankClassification(choices) => {
                    Predictions::Ranked(rank_classification(&model, choices, self.batch_size)?)
                }
            });
        }
        Ok(all)
    }
}

fn job(dir: &Path, args: &Args) -> Result<Job> {
    let run = Run::open(dir)?;
    let run = match args.precision {
        Some(precision) => run.in_precision(precision),
        None => run,
    };
    let RunKind::Adapt(adapt, pretrained) = &run.kind else {
        bail!(
            "--run {}: a pre-training run; evaluate the runs of `mhr adapt`",
            dir.display()
        );
    };
    let precision = adapt.precision_over(&pretrained.settings);
    let adapt = (**adapt).clone();
    let model_config = check_model_dir(&run.settings.model)?;
    let encoder = adapt.encoder(&run.settings, &model_config)?;
    let mut test = adapt.split(&run.settings)?.test;
    if let Some(n) = args.n_test {
        test.truncate(n);
    }
    let task_id = adapt.task_id(pretrained, run.method)?;
    let scoring = match adapt.t0 {
        Some(_) => Scoring::RankClassification(encode_choices(&encoder, &test, task_id)?),
        None => Scoring::Generation {
            encoder,
            max_new_tokens: args.max_new_tokens.unwrap_or(run.settings.max_target_len),
        },
    };
    Ok(Job {
        run,
        adapt,
        precision,
        test,
        task_id,
        scoring,
    })
}

pub fn run(args: Args) -> Result<()> {
    ensure_compiled(args.device)?;
    for out in std::iter::once(&args.out).chain(&args.predictions) {
        crate::commands::common::check_out_path(out)?;
    }
    let jobs: Vec<Job> = args
        .run
        .iter()
        .map(|dir| job(dir, &args))
        .collect::<Result<_>>()?;
    let spec = args.device;
    // Refused before any run is loaded: a bf16 run on a backend without bf16 names the flag that helps.
    for job in &jobs {
        ensure_precision(spec, job.precision).map_err(|e| {
            anyhow::anyhow!(
                "--run {}: {e} (or evaluate it with --precision f32)",
                job.run.dir.display()
            )
        })?;
    }
    let task = EvalTask {
        jobs: &jobs,
        batch_size: args.batch_size as usize,
    };
    let predictions = catch_panics(&format!("evaluating on `{spec}`"), || with_backend(spec, task))?;
    let mut rows = Vec::new();
    let mut lines = String::new();
    for (predicted, job) in predictions.into_iter().zip(&jobs) {
        let (adapt, test) = (&job.adapt, &job.test);
        let (metrics, texts) = match predicted {
            Predictions::Texts(texts) => {
                let scores = GenerationScores::of(&texts, test);
                let metrics = vec![("rouge_l", scores.rouge_l), ("exact_match", scores.exact_match)];
                (metrics, texts)
            }
            Predictions::Ranked(ranked) => {
                let chosen = ranked.predictions.iter().zip(test).map(|(&p, example)| {
                    let choices = example.answer.as_ref().map(|a| a.choices.as_slice());
                    choices.and_then(|c| c.get(p)).cloned().unwrap_or_default()
                });
                (vec![("accuracy", ranked.accuracy)], chosen.collect())
            }
        };
        for (metric, value) in metrics {
            rows.push(ResultRow {
                method: job.run.method.to_string(),
                task: adapt.task.clone(),
                k: adapt.k,
                seed: adapt.seed,
                metric: metric.into(),
                value,
            });
        }
        for (text, example) in texts.iter().zip(test) {
            let line = json!({"run": job.run.dir, "id": example.id, "prediction": text, "references": example.targets});
            lines.push_str(&format!("{line}\n"));
        }
    }
    let results = Results {
        preset: PRESET.into(),
        rows,
        diagnostics: None,
    };
    if let Some(path) = &args.predictions {
        mhr_core::io::write_atomic(path, lines.as_bytes())
            .with_context(|| format!("cannot write --predictions {}", path.display()))?;
    }
    write_json(&args.out, &results).with_context(|| format!("cannot write --out {}", args.out.display()))?;
    let mut stdout = std::io::stdout().lock();
    for row in &results.rows {
        writeln!(stdout, "{}", serde_json::to_string(row)?).context("cannot write to stdout")?;
    }
    Ok(())
}

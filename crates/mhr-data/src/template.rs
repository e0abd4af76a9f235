//! promptsource templates (`templates.yaml`) rendered with a real Jinja engine (minijinja).
//!
//! A template is Jinja with `|||` between the prompt and the target, plus an optional `answer_choices`
//! Jinja string whose `|||`-separated parts are the choices. Rendering follows promptsource's
//! `Template.apply`: `|||` inside field values is protected, `answer_choices` is rendered first and
//! exposed to the template, and every part is stripped. promptsource's cut of every printed value to
//! 2,048 characters is not applied (no field of the held-out datasets comes near it). Python string methods (`.lower()`, `.split()`)
//! come from minijinja-contrib's pycompat layer, and promptsource's `choice` filter is provided with a
//! seed instead of Python's global `random` (stable, but not the same draw as Python).
//!
//! A template the engine cannot compile is kept and reported by [`TemplateSet::issues`]; rendering it
//! is an error, so nothing is silently dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error as JinjaError, ErrorKind, State};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;

use crate::error::{DataError, Result};

/// promptsource's stand-in for `|||` inside field values, so that data cannot split a prompt.
const PIPE_PROTECTOR: &str = "3ed2dface8203c4c9dfb1a5dc58e41e0||";
/// Context variable carrying the seed of the `choice` filter.
const SEED_VAR: &str = "__mhr_choice_seed";
/// Suffix of the environment key under which a template's `answer_choices` is compiled.
const CHOICES_KEY: &str = "#answer_choices";

/// One promptsource template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The template's id (a UUID in promptsource).
    pub id: String,
    /// Its human-readable name, the key users refer to it by.
    pub name: String,
    /// Jinja source: prompt `|||` target.
    pub jinja: String,
    /// Jinja source of the answer choices (`|||`-separated), if the template has fixed choices.
    pub answer_choices: Option<String>,
    /// `metadata.original_task`: the template poses the dataset's own task (T0 evaluates these).
    pub original_task: bool,
    /// `metadata.choices_in_prompt`.
    pub choices_in_prompt: bool,
    /// `metadata.metrics`.
    pub metrics: Vec<String>,
}

/// A template applied to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The prompt.
    pub source: String,
    /// The target text (may be empty for rows without a label).
    pub target: String,
    /// The rendered answer choices, if the template has them.
    pub choices: Option<Vec<String>>,
}

/// A template the engine could not compile, reported instead of dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateIssue {
    /// Template name.
    pub template: String,
    /// The engine's message.
    pub message: String,
}

/// The templates of one dataset (`templates.yaml`), sorted by name as promptsource lists them.
pub struct TemplateSet {
    path: PathBuf,
    dataset: String,
    subset: Option<String>,
    templates: Vec<Template>,
    issues: Vec<TemplateIssue>,
    env: Environment<'static>,
}

impl std::fmt::Debug for TemplateSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateSet")
            .field("path", &self.path)
            .field("dataset", &self.dataset)
            .field("subset", &self.subset)
            .field("templates", &self.templates.len())
            .field("issues", &self.issues)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawFile {
    dataset: String,
    #[serde(default)]
    subset: Option<String>,
    templates: serde_yaml::Mapping,
}

#[derive(Deserialize)]
struct RawTemplate {
    id: String,
    name: String,
    jinja: String,
    #[serde(default)]
    answer_choices: Option<String>,
    #[serde(default)]
    metadata: Option<RawMetadata>,
}

#[derive(Deserialize, Default)]
struct RawMetadata {
    #[serde(default)]
    original_task: Option<bool>,
    #[serde(default)]
    choices_in_prompt: Option<bool>,
    #[serde(default)]
    metrics: Option<Vec<String>>,
}

/// Drops YAML tags (`!Template`, `!TemplateMetadata`): they name Python classes, the data is a mapping.
fn untag(value: serde_yaml::Value) -> serde_yaml::Value {
    use serde_yaml::Value as Y;
    match value {
        Y::Tagged(tagged) => untag(tagged.value),
        Y::Mapping(map) => Y::Mapping(map.into_iter().map(|(k, v)| (k, untag(v))).collect()),
        Y::Sequence(seq) => Y::Sequence(seq.into_iter().map(untag).collect()),
        other => other,
    }
}

/// promptsource's `choice` filter: one element of a sequence, drawn with the render's seed.
fn choice(state: &State, seq: Value) -> std::result::Result<Value, JinjaError> {
    let seed = state
        .lookup(SEED_VAR)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or_default();
    let len = seq
        .len()
        .filter(|&n| n > 0)
        .ok_or_else(|| JinjaError::new(ErrorKind::InvalidOperation, "choice needs a non-empty sequence"))?;
    seq.get_item_by_index(StdRng::seed_from_u64(seed).random_range(0..len))
}

/// Splits on `|||` and strips each part, leaving protected pipes protected.
fn split_protected(rendered: &str) -> Vec<String> {
    rendered
        .split("|||")
        .map(|part| part.trim().to_string())
        .collect()
}

/// Restores the pipes of data values.
fn unprotect(parts: Vec<String>) -> Vec<String> {
    parts
        .into_iter()
        .map(|part| part.replace(PIPE_PROTECTOR, "|||"))
        .collect()
}

impl TemplateSet {
    /// Reads and compiles a promptsource `templates.yaml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let yaml_err = |e: serde_yaml::Error| DataError::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(yaml_err)?;
        let raw: RawFile = serde_yaml::from_value(untag(value)).map_err(yaml_err)?;
        let mut templates = Vec::with_capacity(raw.templates.len());
        for (_, value) in raw.templates {
            let t: RawTemplate = serde_yaml::from_value(value).map_err(yaml_err)?;
            let meta = t.metadata.unwrap_or_default();
            templates.push(Template {
                id: t.id,
                name: t.name,
                jinja: t.jinja,
                answer_choices: t.answer_choices,
                original_task: meta.original_task.unwrap_or(false),
                choices_in_prompt: meta.choices_in_prompt.unwrap_or(false),
                metrics: meta.metrics.unwrap_or_default(),
            });
        }
        templates.sort_by(|a, b| a.name.cmp(&b.name));

        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("choice", choice);
        let mut issues = Vec::new();
        for t in &templates {
            let mut compile = |key: String, source: &str| {
                if let Err(e) = env.add_template_owned(key, source.to_string()) {
                    issues.push(TemplateIssue {
                        template: t.name.clone(),
                        message: e.to_string(),
                    });
                }
            };
            compile(t.id.clone(), &t.jinja);
            if let Some(choices) = &t.answer_choices {
                compile(format!("{}{CHOICES_KEY}", t.id), choices);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            dataset: raw.dataset,
            subset: raw.subset,
            templates,
            issues,
            env,
        })
    }

    /// The file the templates came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// promptsource's `dataset` (e.g. `super_glue`).
    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// promptsource's `subset` (e.g. `copa`), if any.
    pub fn subset(&self) -> Option<&str> {
        self.subset.as_deref()
    }

    /// All templates, sorted by name.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// Templates the engine could not compile.
    pub fn issues(&self) -> &[TemplateIssue] {
        &self.issues
    }

    /// The template called `name`.
    pub fn get(&self, name: &str) -> Result<&Template> {
        self.templates
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| DataError::UnknownTemplate {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// The templates marked `original_task`, in name order (T0's evaluation templates).
    pub fn original_task(&self) -> Vec<&Template> {
        self.templates.iter().filter(|t| t.original_task).collect()
    }

    /// Applies `template` to `row` (a JSON object of the dataset's fields). `seed` drives the `choice`
    /// filter. Fails if the template has a compile issue, the engine fails on this row, or the result is
    /// not exactly one prompt and one target with a non-empty prompt (e.g. a template whose `{% if %}`
    /// does not apply to this row).
    pub fn render(&self, template: &Template, row: &serde_json::Value, seed: u64) -> Result<Rendered> {
        let err = |message: String| DataError::Template {
            path: self.path.clone(),
            template: template.name.clone(),
            message,
        };
        if let Some(issue) = self.issues.iter().find(|i| i.template == template.name) {
            return Err(err(issue.message.clone()));
        }
        let fields = row
            .as_object()
            .ok_or_else(|| err("the row is not a JSON object".into()))?;
        let mut ctx: BTreeMap<String, Value> = fields
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    serde_json::Value::String(s) => Value::from(s.replace("|||", PIPE_PROTECTOR)),
                    other => Value::from_serialize(other),
                };
                (key.clone(), value)
            })
            .collect();
        ctx.insert(SEED_VAR.to_string(), Value::from(seed));
        let render = |key: &str, ctx: &BTreeMap<String, Value>| {
            self.env
                .get_template(key)
                .and_then(|t| t.render(ctx))
                .map_err(|e| err(format!("cannot render: {e}")))
        };
        // Choices stay protected inside the prompt (promptsource passes them unprotected, so a choice
        // containing `|||` would split the prompt), and are unprotected when returned.
        let choices = match &template.answer_choices {
            Some(_) => Some(split_protected(&render(
                &format!("{}{CHOICES_KEY}", template.id),
                &ctx,
            )?)),
            None => None,
        };
        ctx.insert(
            "answer_choices".to_string(),
            choices.as_ref().map_or(Value::from(()), Value::from_serialize),
        );
        let choices = choices.map(unprotect);
        let mut parts = unprotect(split_protected(&render(&template.id, &ctx)?)).into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(source), Some(target), None) if !source.is_empty() => Ok(Rendered {
                source,
                target,
                choices,
            }),
            _ => Err(err(
                "did not render one non-empty prompt and one target for this row".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, yaml: &str) -> PathBuf {
        let path = dir.join("templates.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    const YAML: &str = r#"dataset: demo
templates:
  b-id: !Template
    answer_choices: '{{ a }} ||| {{ b }}'
    id: b-id
    jinja: 'Pick: {{ text.lower() }} {{ text.split(" ")[1:] | join("-") }} ||| {{ answer_choices[label] }}'
    metadata: !TemplateMetadata
      choices_in_prompt: true
      metrics:
      - Accuracy
      original_task: true
    name: pick
    reference: ''
  a-id: !Template
    answer_choices: null
    id: a-id
    jinja: '{{ ["x", "y", "z"] | choice }} ||| {{ text }}'
    metadata: !TemplateMetadata
      original_task: false
    name: chooser
    reference: ''
  c-id: !Template
    id: c-id
    jinja: '{{ text | no_such_filter }} ||| x'
    metadata: !TemplateMetadata
      original_task: true
    name: broken
  d-id: !Template
    id: d-id
    jinja: '{% if label == 0 %}{{ text }} ||| yes{% endif %}'
    name: conditional
"#;

    #[test]
    fn renders_pycompat_methods_choices_and_protected_pipes() {
        let dir = tempfile::tempdir().unwrap();
        let set = TemplateSet::load(&write(dir.path(), YAML)).unwrap();
        let names: Vec<&str> = set.templates().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["broken", "chooser", "conditional", "pick"]);
        let row = serde_json::json!({"text": "Hello Big World", "a": "A|||1", "b": "B", "label": 0});
        let r = set.render(set.get("pick").unwrap(), &row, 0).unwrap();
        assert_eq!(r.source, "Pick: hello big world Big-World");
        assert_eq!(r.target, "A|||1");
        assert_eq!(r.choices, Some(vec!["A|||1".to_string(), "B".to_string()]));
        assert_eq!(set.original_task().len(), 2);
        assert!(set.get("pick").unwrap().choices_in_prompt);
    }

    #[test]
    fn choice_filter_is_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let set = TemplateSet::load(&write(dir.path(), YAML)).unwrap();
        let t = set.get("chooser").unwrap();
        let row = serde_json::json!({"text": "t"});
        let draws: Vec<String> = (0..32)
            .map(|seed| set.render(t, &row, seed).unwrap().source)
            .collect();
        assert!(draws.iter().all(|d| ["x", "y", "z"].contains(&d.as_str())));
        assert!(
            draws.iter().any(|d| d != &draws[0]),
            "different seeds should draw differently"
        );
        assert_eq!(set.render(t, &row, 7).unwrap(), set.render(t, &row, 7).unwrap());
        assert_eq!(set.render(t, &row, 7).unwrap().choices, None);
    }

    #[test]
    fn unrenderable_templates_are_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let set = TemplateSet::load(&write(dir.path(), YAML)).unwrap();
        let row = serde_json::json!({"text": "t", "label": 1});
        let broken = set.get("broken").unwrap();
        assert!(
            matches!(set.render(broken, &row, 0), Err(DataError::Template { template, .. }) if template == "broken")
        );
        // The `{% if %}` does not apply to label 1: no prompt, which is an error, not an empty example.
        let conditional = set.get("conditional").unwrap();
        assert!(matches!(
            set.render(conditional, &row, 0),
            Err(DataError::Template { .. })
        ));
        assert!(matches!(set.get("nope"), Err(DataError::UnknownTemplate { name, .. }) if name == "nope"));
    }

    #[test]
    fn bad_yaml_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "dataset: [unclosed\n");
        assert!(matches!(TemplateSet::load(&path), Err(DataError::Yaml { .. })));
        let path = write(dir.path(), "dataset: x\ntemplates:\n  a: !Template\n    id: a\n");
        assert!(
            matches!(TemplateSet::load(&path), Err(DataError::Yaml { message, .. }) if message.contains("name"))
        );
    }
}

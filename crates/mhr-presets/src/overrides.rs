//! `--settings FILE.json` over a preset: the file's fields replace the preset's one by one, nested ones too, so
//! `{"pretraining": {"steps": 10}}` changes only the pre-training steps.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `preset` with the fields of the JSON object `overrides` set over it; an unknown field or a wrong type is an
/// error naming it.
pub fn with_overrides<T: Serialize + DeserializeOwned>(
    preset: T,
    overrides: &str,
) -> Result<T, serde_json::Error> {
    let overrides: Value = serde_json::from_str(overrides)?;
    let mut merged = serde_json::to_value(preset)?;
    merge(&mut merged, overrides);
    serde_json::from_value(merged)
}

/// Sets `overrides` over `base`, recursing into objects. An object whose `kind` tag changes (a schedule, say)
/// replaces the old one whole, as the other variant's fields would not fit it.
fn merge(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (Value::Object(base), Value::Object(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(&key) {
                    Some(old) if !changes_kind(old, &value) => merge(old, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overrides) => *base = overrides,
    }
}

fn changes_kind(old: &Value, new: &Value) -> bool {
    matches!((old.get("kind"), new.get("kind")), (Some(a), Some(b)) if a != b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mhr_train::TrainConfig;
    use mhr_train::schedule::Schedule;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Preset {
        seeds: Vec<u64>,
        stage: TrainConfig,
    }

    fn preset() -> Preset {
        Preset {
            seeds: vec![1, 2],
            stage: TrainConfig {
                steps: 7,
                batch_size: 3,
                ..TrainConfig::default()
            },
        }
    }

    #[test]
    fn nested_fields_are_replaced_one_by_one() {
        let merged = with_overrides(
            preset(),
            r#"{"seeds": [5], "stage": {"steps": 10, "optim": {"lr": 0.5}}}"#,
        )
        .unwrap();
        let mut expected = preset();
        expected.seeds = vec![5];
        expected.stage.steps = 10;
        expected.stage.optim.lr = 0.5;
        assert_eq!(merged, expected);
    }

    #[test]
    fn another_variant_replaces_the_whole_object() {
        let merged = with_overrides(preset(), r#"{"stage": {"schedule": {"kind": "constant"}}}"#).unwrap();
        assert_eq!(merged.stage.schedule, Schedule::Constant);
        let linear = r#"{"stage": {"schedule": {"kind": "linear", "warmup_fraction": 0.5, "floor": 0.0}}}"#;
        let back = with_overrides(merged, linear).unwrap();
        assert_eq!(
            back.stage.schedule,
            Schedule::Linear {
                warmup_fraction: 0.5,
                floor: 0.0
            }
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let error = with_overrides(preset(), r#"{"stage": {"stpes": 10}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("stpes"), "{error}");
        let error = with_overrides(preset(), r#"{"pre_steps": 10}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("pre_steps"), "{error}");
    }
}

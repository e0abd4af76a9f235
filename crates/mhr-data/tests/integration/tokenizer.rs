//! The `tokenizer.json` path against the fixture's reference ids, and the whole text → batch pipeline.

use std::sync::Arc;

use burn::backend::NdArray;
use burn::data::dataloader::batcher::Batcher;
use mhr_data::{
    Encoder, EncoderConfig, HfTokenizer, Seq2SeqBatch, Seq2SeqBatcher, SniDir, SniOptions, SniPromptFormat,
    SniTask, TextTokenizer,
};

fn tokenizer() -> HfTokenizer {
    HfTokenizer::from_file(&crate::common::shared().join("fixtures/t5/tokenizer.json")).unwrap()
}

#[derive(serde::Deserialize)]
struct Reference {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

#[test]
fn encodings_equal_the_reference_ids() {
    let tok = tokenizer();
    let path = crate::common::shared().join("fixtures/t5/tokenizer_reference.json");
    let references: Vec<Reference> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(references.len(), 7);
    for r in &references {
        assert_eq!(tok.encode(&r.text, true).unwrap(), r.ids, "{:?}", r.text);
        assert_eq!(tok.decode(&r.ids).unwrap(), r.decoded, "{:?}", r.text);
        let plain = tok.encode(&r.text, false).unwrap();
        assert_eq!(plain[..], r.ids[..r.ids.len() - 1], "without eos");
    }
    assert_eq!((tok.vocab_size(), tok.pad_id(), tok.eos_id()), (200, 0, 1));
}

#[test]
fn a_missing_tokenizer_file_is_an_error() {
    let missing = crate::common::shared().join("fixtures/t5/no-such-tokenizer.json");
    assert!(matches!(
        HfTokenizer::from_file(&missing),
        Err(mhr_data::DataError::Tokenizer { .. })
    ));
}

#[test]
fn mttl_truncation_keeps_output_at_the_end_with_the_real_tokenizer() {
    let tok: Arc<dyn TextTokenizer> = Arc::new(tokenizer());
    let config = EncoderConfig {
        max_source_len: 48,
        max_target_len: 8,
        source_suffix: SniPromptFormat::Mttl.source_suffix().map(String::from),
    };
    let encoder = Encoder::new(tok.clone(), config).unwrap();
    let sni = SniDir::open(crate::common::sni_root()).unwrap();
    let task = SniTask::read(&sni.task_path("task1393_superglue_copa_text_completion"), Some(3)).unwrap();
    for example in task.to_task(&SniPromptFormat::Mttl).examples {
        let ids = encoder.encode_source(&example.source).unwrap();
        assert!(
            tok.encode(&example.source, true).unwrap().len() > 48,
            "the prompt must be over-long here"
        );
        assert_eq!(ids.len(), 48);
        assert_eq!(ids.last(), Some(&tok.eos_id()));
        let text = tok.decode(&ids).unwrap();
        assert!(text.starts_with("Task definition: In this task"), "{text}");
        assert!(text.ends_with("Output:"), "{text}");
    }
}

#[test]
fn sni_examples_to_padded_tensors() {
    let tok: Arc<dyn TextTokenizer> = Arc::new(tokenizer());
    let encoder = Encoder::new(tok.clone(), EncoderConfig::default()).unwrap();
    let sni = SniDir::open(crate::common::sni_root()).unwrap();
    let options = SniOptions {
        max_instances: Some(4),
        ..SniOptions::default()
    };
    let list = mhr_data::TaskList::read(&crate::common::sni_root().join("subset/eval_tasks.txt")).unwrap();
    let mut encoded = Vec::new();
    for (task_id, task) in sni.load(&list, options).unwrap().take(2).enumerate() {
        for example in task.unwrap().examples {
            encoded.push(encoder.encode(&example, task_id).unwrap());
        }
    }
    let batch: Seq2SeqBatch<NdArray> =
        Seq2SeqBatcher { pad_id: tok.pad_id() }.batch(encoded.clone(), &Default::default());
    let s = encoded.iter().map(|e| e.input_ids.len()).max().unwrap();
    let t = encoded.iter().map(|e| e.labels.len()).max().unwrap();
    assert_eq!(batch.input_ids.dims(), [8, s]);
    assert_eq!(batch.labels.dims(), [8, t]);
    let ids = batch.input_ids.to_data().to_vec::<i64>().unwrap();
    let mask = batch.attention_mask.to_data().to_vec::<i64>().unwrap();
    let labels = batch.labels.to_data().to_vec::<i64>().unwrap();
    for (row, e) in encoded.iter().enumerate() {
        let (n, m) = (e.input_ids.len(), e.labels.len());
        assert!(
            ids[row * s..row * s + n]
                .iter()
                .zip(&e.input_ids)
                .all(|(&a, &b)| a == i64::from(b))
        );
        assert!(ids[row * s + n..(row + 1) * s].iter().all(|&p| p == 0));
        assert!(mask[row * s..row * s + n].iter().all(|&x| x == 1));
        assert!(mask[row * s + n..(row + 1) * s].iter().all(|&x| x == 0));
        assert!(
            labels[row * t..row * t + m]
                .iter()
                .zip(&e.labels)
                .all(|(&a, &b)| a == i64::from(b))
        );
        assert!(
            labels[row * t + m..(row + 1) * t]
                .iter()
                .all(|&x| x == mhr_core::IGNORE_INDEX)
        );
    }
    assert_eq!(
        batch.task_ids.to_data().to_vec::<i64>().unwrap(),
        [0, 0, 0, 0, 1, 1, 1, 1]
    );
}

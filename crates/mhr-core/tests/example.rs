//! The library example runs as a test: MHR adapters on a model that is not T5 train, and their peft folder
//! reloads to the same outputs.

#[path = "../examples/mhr_on_mlp.rs"]
mod mhr_on_mlp;

#[test]
fn mhr_adapters_on_a_model_that_is_not_t5() {
    mhr_on_mlp::main().unwrap();
}

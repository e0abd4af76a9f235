//! Unit tests of the library's device selection and command helpers (the library itself is built without a test
//! harness: compiling it as one would monomorphise every command for every backend a second time).

use anyhow::Result;
use mhr_cli::commands::common::{catch_panics, check_sizes};
use mhr_cli::device::{DeviceSpec, Devices, ensure_compiled, start_device};

#[test]
fn parses_devices() {
    assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
    assert_eq!("wgpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Wgpu(None)));
    assert_eq!("wgpu:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Wgpu(Some(1))));
    assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
    assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
    assert!(
        "tpu"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .contains("unknown device `tpu`")
    );
    assert!(
        "cuda:x"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .contains("invalid device index")
    );
}

#[test]
fn cpu_is_the_default_backend() {
    assert!(ensure_compiled(DeviceSpec::Cpu).is_ok());
}

/// As a GPU runtime fails without its driver: the device thread panics with the cause, the caller's channel closes.
#[test]
fn device_start_failure_names_the_cause() {
    let err = start_device(DeviceSpec::Cuda(1), || {
        let worker = std::thread::spawn(|| panic!("Unable to dynamically load the \"cuda\" shared library"));
        worker.join().expect("RecvError");
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "device `cuda:1` could not be started: Unable to dynamically load the \"cuda\" shared library"
    );
    assert!(start_device(DeviceSpec::Cpu, || ()).is_ok());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn missing_backend_is_a_clear_error() {
    let err = ensure_compiled(DeviceSpec::Cuda(0)).unwrap_err().to_string();
    assert!(err.contains("built without the `cuda` feature"), "{err}");
}

#[test]
fn panics_become_errors() {
    let err = catch_panics("testing", || -> Result<()> { panic!("boom {}", 42) }).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("internal error while testing: boom 42"),
        "{text}"
    );
    // The hook is restored and a second call still works.
    let ok = catch_panics("testing", || Ok(7)).unwrap();
    assert_eq!(ok, 7);
    let err = catch_panics("again", || -> Result<()> { std::panic::panic_any(3u8) }).unwrap_err();
    assert!(err.to_string().contains("again"), "{err}");
}

#[test]
fn size_guard_refuses_overflow_and_large_tensors() {
    assert!(check_sizes(&[("logits", &[3, 6, 200])], 1 << 30).is_ok());
    let err = check_sizes(&[("logits", &[usize::MAX, usize::MAX, 9])], 1 << 30).unwrap_err();
    assert!(err.to_string().contains("the logits would take"), "{err}");
    assert!(check_sizes(&[("x", &[1 << 20, 1 << 10])], 1 << 30).is_err());
}

#[test]
fn devices_parse_and_print_as_given() {
    for (given, spec, printed) in [
        ("cpu:3", DeviceSpec::Cpu, "cpu:3"),
        ("flex:2", DeviceSpec::Flex, "flex:2"),
        ("cuda:0,cuda:2", DeviceSpec::Cuda(0), "cuda:0,cuda:2"),
        ("wgpu:1,wgpu:0", DeviceSpec::Wgpu(Some(1)), "wgpu:1,wgpu:0"),
        ("wgpu", DeviceSpec::Wgpu(None), "wgpu"),
        ("cuda:1", DeviceSpec::Cuda(1), "cuda:1"),
    ] {
        let devices: Devices = given.parse().unwrap();
        assert_eq!(devices.spec, spec, "{given}");
        assert_eq!(devices.to_string(), printed);
        assert_eq!(printed.parse::<Devices>().unwrap(), devices);
    }
    for (given, named) in [
        ("cpu:0", "positive integer"),
        ("cuda:0,wgpu:1", "`wgpu:1`"),
        ("cuda:0,cuda:0", "`cuda:0` is named twice"),
        ("cpu,cpu", "`cpu`"),
        ("tpu:2", "unknown device"),
    ] {
        let error = given.parse::<Devices>().unwrap_err();
        assert!(error.contains(named), "{given}: {error}");
    }
}

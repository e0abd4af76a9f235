//! Ctrl-C as a request to stop training cleanly: the first SIGINT raises a flag that the trainer checks
//! between optimiser steps (it then checkpoints and returns, see [`crate::trainer::RunOptions::interrupt`]);
//! a second SIGINT, for a run stuck elsewhere, exits at once with status 130 as an unhandled one would.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use signal_hook::consts::SIGINT;
use signal_hook::flag;

use crate::error::TrainError;

/// Exit status of a process killed by SIGINT in a shell (128 + 2).
const SECOND_SIGINT_STATUS: i32 = 130;

/// Installs the SIGINT handlers and returns the flag they raise. Call once per process; each call adds
/// another pair of handlers.
pub fn sigint_flag() -> Result<Arc<AtomicBool>, TrainError> {
    let raised = Arc::new(AtomicBool::new(false));
    let install = TrainError::Signal;
    // Registered first, so it sees the flag as the previous SIGINT left it.
    flag::register_conditional_shutdown(SIGINT, SECOND_SIGINT_STATUS, Arc::clone(&raised))
        .map_err(install)?;
    flag::register(SIGINT, Arc::clone(&raised)).map_err(install)?;
    Ok(raised)
}

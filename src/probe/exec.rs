//! The exec probe (pkg/probe/exec): the command runs in the container through
//! containerd; exit 0 is success, any other exit a failure with the command's
//! output, a timeout a failure with `command "…" timed out`.

use std::time::Duration;

use super::{Outcome, Result, Target};
use crate::runtime::exec::{exec, ExecError};

/// Runs `cmd` in the target container within `timeout`.
pub async fn probe(t: &Target<'_>, cmd: &[String], timeout: Duration) -> Result<Outcome> {
    match exec(t.containers, t.container_id, cmd, timeout, t.scratch).await {
        Ok(o) if o.exit_code == 0 => Ok(Outcome::success(o.output)),
        Ok(o) => Ok(Outcome::failure(o.output)),
        Err(e @ ExecError::Timeout { .. }) => Ok(Outcome::failure(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

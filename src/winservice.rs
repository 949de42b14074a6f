//! The Windows service: `rainmaker service install` registers `rainmaker --config FILE
//! service run` with the service control manager, which starts it at boot. That command
//! hands its main thread to the service control dispatcher; the agent (`rainmaker run`) runs
//! on the service's thread until the manager sends Stop or Shutdown, which stops it as
//! cleanly as SIGTERM does (the block in flight finishes, the index is flushed).
//!
//! Written for Windows only and never built on the Linux machines RainMaker is developed on.
#![allow(
    unsafe_code,
    reason = "define_windows_service! generates the FFI entry point"
)]

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::{define_windows_service, service_dispatcher};

const NAME: &str = "RainMaker";

/// The configuration file the service runs, set before the dispatcher starts.
static CONFIG: OnceLock<Option<PathBuf>> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Runs the service until the service manager stops it.
pub fn dispatch(config: Option<PathBuf>) -> Result<()> {
    let _ = CONFIG.set(config);
    service_dispatcher::start(NAME, ffi_service_main).context(
        "cannot reach the Windows service manager; `service run` is started by it (use `rainmaker run` from a shell)",
    )
}

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = run_service() {
        tracing::error!("the RainMaker service failed: {e:#}");
    }
}

fn run_service() -> Result<()> {
    let stop = crate::stop_token();
    let on_control = stop.clone();
    let status = service_control_handler::register(NAME, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            on_control.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })?;
    let report = |state: ServiceState, exit: u32| {
        status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: match state {
                ServiceState::Running => {
                    ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
                }
                _ => ServiceControlAccept::empty(),
            },
            exit_code: ServiceExitCode::Win32(exit),
            checkpoint: 0,
            wait_hint: Duration::from_secs(10),
            process_id: None,
        })
    };
    report(ServiceState::Running, 0)?;
    let config = CONFIG.get().cloned().flatten();
    let ran = crate::run_blocking(config);
    if let Err(e) = &ran {
        tracing::error!("{e:#}");
    }
    // A failure is reported as one, so the service manager's restart policy applies.
    let failed = !matches!(ran, Ok(code) if code == std::process::ExitCode::SUCCESS);
    report(ServiceState::Stopped, if failed { 1 } else { 0 })?;
    Ok(())
}

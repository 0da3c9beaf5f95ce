//! What every command file uses from the layers below.

pub(super) use std::io::{IsTerminal, Write};
pub(super) use std::path::{Path, PathBuf};
pub(super) use std::sync::Arc;

pub(super) use crate::checks::preflight;
pub(super) use crate::checks::status;
pub(super) use crate::checks::traffic;
pub(super) use crate::checks::verify;
pub(super) use crate::components::reader;
pub(super) use crate::engine::exec::{self, Summary};
pub(super) use crate::engine::lock;
pub(super) use crate::engine::lock::LockError;
pub(super) use crate::engine::run::Run;
pub(super) use crate::engine::topology::{Choices, Topology};
pub(super) use crate::error::Error;
pub(super) use crate::flows::leave;
pub(super) use crate::flows::rotate;
pub(super) use crate::model::cli::{
    Cli, Command, DEFAULT_JOBS, DEFAULT_READ_JOBS, DiffArgs, GlobalArgs, InstallArgs, Jobs,
    LinkArgs, MeshArgs, Operation, OutputFormat, PlanArgs, UninstallArgs, VerifyArgs,
};
pub(super) use crate::model::input::InputError;
pub(super) use crate::model::kubeconfig::Kubeconfig;
pub(super) use crate::model::mesh::{self, Mesh};
pub(super) use crate::model::values;
pub(super) use crate::observe::finding::{Finding, Level};
pub(super) use crate::tools::live::Live;
pub(super) use crate::tools::pull;
pub(super) use crate::tools::remote_secret;
pub(super) use crate::tools::reporter::{Mode, Reporter};
pub(super) use crate::tools::runner::ProcessRunner;
pub(super) use crate::tools::step::{Target, Tool};
pub(super) use crate::trust::files::{self, Existing};
pub(super) use crate::trust::{self, KeyType, Trust, TrustMode};

pub(super) use crate::engine::plan;

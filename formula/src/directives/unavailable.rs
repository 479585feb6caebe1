//! Directives that need outside services (Koji, Bodhi, dist-git, …): validated at load time, and a
//! clear error if a formula actually runs one where the service is not available.

use super::StepError;

pub(super) fn run(directive: &str) -> Result<serde_json::Value, StepError> {
    let needs = match directive {
        "koji" | "yumrepoinfo" => "a Koji build system",
        "bodhi" => "a Bodhi update service",
        "distgit" => "a dist-git server",
        "createrepo" => "the createrepo_c tool and downloaded packages",
        "mash" => "the mash tool and downloaded packages",
        _ => "support that this runner does not have yet",
    };
    Err(StepError::msg(format!(
        "directive `{directive}` is not available here: it needs {needs}, and this runner has no network services configured"
    )))
}
